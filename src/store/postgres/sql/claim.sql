SELECT granted, ended FROM {schema}.session_trail_claim($1, $2, $3, $4, $5, $6)
