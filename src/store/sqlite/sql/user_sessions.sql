SELECT sid FROM session_trail_user_history
WHERE user_pseudonym = ?1 AND until > ?2
ORDER BY linked
