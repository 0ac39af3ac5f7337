DELETE FROM session_trail_user_history WHERE user_pseudonym = ?1 AND sid = ?2
