SELECT body FROM {schema}.session_trail_checkpoints
