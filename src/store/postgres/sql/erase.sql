SELECT {schema}.session_trail_erase($1, $2, $3, $4)
