SELECT {schema}.session_trail_expire_history($1, $2)
