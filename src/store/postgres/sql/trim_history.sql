SELECT {schema}.session_trail_trim_history($1, $2)
