-- The functions of schema version 1: an operation that takes more than one
-- statement runs as one function call, so it costs one round trip and is
-- atomic. Each statement in a function reads a fresh snapshot (READ
-- COMMITTED), taken after the row locks its earlier statements hold.

-- Compare-and-append for many sessions (see `HistoryStore::append`); the
-- sessions of one call are distinct.
--
-- Per session i (arrays indexed from 1): s_sid; s_expected, the head the
-- entries were chained to (NULL: an empty list); s_token, the token hash
-- the session's live record must hold (NULL: none); s_last, the batch's
-- last tag; s_first_seq and s_last_seq, its first and last entries' seq.
-- Per entry: e_i, the session's index, then the history row's columns.
-- p_expires: the earliest the lists appended to may expire (now plus the
-- TTL); p_slack: how much later than that an expiry that moves is set.
--
-- Answers one row per session: outcome 1 appended, 2 already applied
-- (the head is the batch's last tag), 0 conflict, 4 conflict after an
-- erasure (both with the last stored entry, if any), 3 token mismatch
-- (with when the record replaced that token, if it did), 5 failed (the
-- head names an entry that is missing or shorter than a tag, or the
-- batch's first seq does not follow the head's).
--
-- Every decision is made under row locks: first every session gets a
-- heads row (an empty list where it had none; inserted in sid order, so
-- two calls creating the same lists wait for each other instead of
-- deadlocking), then the heads rows are locked FOR UPDATE and the records
-- FOR SHARE, each in sid order, so concurrent calls never deadlock, never
-- both append after one head, and no rotation slips between the token
-- check and the append. Each statement reads a fresh snapshot (READ
-- COMMITTED), taken after the locks before it are held.
CREATE FUNCTION {schema}.session_trail_append(
    p_now bigint, p_expires bigint, p_slack bigint,
    s_sid bytea[], s_expected bytea[], s_token bytea[], s_last bytea[], s_first_seq bigint[], s_last_seq bigint[],
    e_i int[], e_seq bigint[], e_ts bigint[], e_kind text[], e_name text[], e_method text[],
    e_status smallint[], e_user text[], e_attrs text[], e_entry bytea[])
RETURNS TABLE (i int, outcome smallint, replaced_at bigint, last bytea)
LANGUAGE plpgsql
-- Plans are cached per connection: one made while the tables were tiny
-- must not scan them whole once they are not.
SET enable_seqscan = off
AS $fn$
#variable_conflict use_column
DECLARE
    -- ok[n]: session n appends (an array lookup, not a search per row).
    ok bool[];
BEGIN
    INSERT INTO {schema}.session_trail_history_heads (sid, head, last_seq, low_seq, expires_at)
    SELECT t.sid, NULL, 0, 1, 0 FROM unnest(s_sid) AS t(sid)
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.session_trail_history_heads h WHERE h.sid = t.sid)
    ORDER BY t.sid
    ON CONFLICT (sid) DO NOTHING;
    PERFORM 1 FROM {schema}.session_trail_history_heads h
        WHERE h.sid = ANY(s_sid) ORDER BY h.sid FOR UPDATE;
    PERFORM 1 FROM {schema}.session_trail_sessions s
        WHERE s.sid IN (SELECT t.sid FROM unnest(s_sid, s_token) AS t(sid, token)
                        WHERE t.token IS NOT NULL)
        ORDER BY s.sid FOR SHARE;

    -- Who may append: a live record with the token where one is named,
    -- the head expected (an expired list counts as empty), a seq after
    -- the head's.
    SELECT array_agg(
        h.sid IS NOT NULL
        AND (t.token IS NULL OR coalesce(s.token_hash = t.token AND s.expires_at > p_now, false))
        AND (CASE WHEN h.expires_at > p_now THEN h.head END) IS NOT DISTINCT FROM t.expected
        AND (h.head IS NULL OR h.expires_at <= p_now OR t.first_seq > h.last_seq)
        ORDER BY t.n)
    INTO ok
    FROM unnest(s_sid, s_expected, s_token, s_first_seq) WITH ORDINALITY
        AS t(sid, expected, token, first_seq, n)
    -- LEFT: one flag per session, in order, even for a heads row that
    -- maintenance dropped meanwhile (that session then conflicts).
    LEFT JOIN {schema}.session_trail_history_heads h ON h.sid = t.sid
    LEFT JOIN {schema}.session_trail_sessions s ON s.sid = t.sid AND t.token IS NOT NULL;

    -- What an expired list left behind goes first (an erasure deletes its
    -- rows itself, maintenance an expired list's with its head).
    DELETE FROM {schema}.session_trail_history x
    USING {schema}.session_trail_history_heads h
    WHERE h.sid = ANY(ARRAY(SELECT s_sid[n] FROM generate_subscripts(s_sid, 1) AS n WHERE ok[n]))
      AND h.head IS NOT NULL AND h.expires_at <= p_now
      AND x.sid = h.sid;

    -- The heads move. The expiry moves only when it would come before
    -- p_expires, and then p_slack beyond it, so most appends leave every
    -- indexed column alone (an update in place, without index entries).
    UPDATE {schema}.session_trail_history_heads h
    SET head = w.last,
        last_seq = w.last_seq,
        low_seq = CASE WHEN h.head IS NULL OR h.expires_at <= p_now THEN 1 ELSE h.low_seq END,
        expires_at = CASE WHEN h.expires_at < p_expires THEN p_expires + p_slack
                          ELSE h.expires_at END
    FROM (SELECT s_sid[n] AS sid, s_last[n] AS last, s_last_seq[n] AS last_seq
          FROM generate_subscripts(s_sid, 1) AS n WHERE ok[n]) AS w
    WHERE h.sid = w.sid;

    -- The rows. No (sid, seq) can clash: a list's rows are written only
    -- with its head, under its lock; a restarted list's old rows are gone;
    -- each batch's seqs increase and follow the head's.
    INSERT INTO {schema}.session_trail_history
        (sid, seq, ts, kind, name, method, status, user_pseudonym, attrs, entry)
    SELECT s_sid[e.n], e.seq, to_timestamp(e.ts / 1000.0), e.kind, e.name, e.method,
           e.status, e.usr, e.attrs::jsonb, e.entry
    FROM unnest(e_i, e_seq, e_ts, e_kind, e_name, e_method, e_status, e_user, e_attrs, e_entry)
        AS e(n, seq, ts, kind, name, method, status, usr, attrs, entry)
    WHERE ok[e.n];

    RETURN QUERY
    SELECT n::int, 1::smallint, NULL::bigint, NULL::bytea
    FROM generate_subscripts(s_sid, 1) AS n WHERE ok[n];
    RETURN QUERY
    SELECT t.n::int,
        (CASE
            WHEN t.token IS NOT NULL
                 AND NOT coalesce(s.token_hash = t.token AND s.expires_at > p_now, false) THEN 3
            WHEN h.expires_at > p_now AND h.head = t.last THEN 2
            WHEN h.expires_at > p_now AND h.head IS NOT NULL
                 AND (x.entry IS NULL OR length(x.entry) < 16 OR h.head = t.expected) THEN 5
            WHEN h.erased_until > p_now THEN 4
            ELSE 0
        END)::smallint,
        CASE WHEN s.replaced_hash = t.token THEN s.replaced_at END,
        x.entry
    FROM unnest(s_sid, s_token, s_last, s_expected) WITH ORDINALITY AS t(sid, token, last, expected, n)
    LEFT JOIN {schema}.session_trail_history_heads h ON h.sid = t.sid
    LEFT JOIN {schema}.session_trail_sessions s ON s.sid = t.sid AND t.token IS NOT NULL
    LEFT JOIN {schema}.session_trail_history x
        ON x.sid = t.sid AND x.seq = h.last_seq AND h.head IS NOT NULL AND h.expires_at > p_now
    WHERE NOT ok[t.n];
END
$fn$;

-- Erases a session's history (see `HistoryStore::delete`): deletes its
-- rows and remembers the erasure until p_until. Answers how many entries
-- were readable (the newest p_keep of a live list).
CREATE FUNCTION {schema}.session_trail_erase(p_sid bytea, p_now bigint, p_keep bigint, p_until bigint)
RETURNS bigint
LANGUAGE plpgsql
-- Plans are cached per connection: one made while the tables were tiny
-- must not scan them whole once they are not.
SET enable_seqscan = off
AS $fn$
#variable_conflict use_column
DECLARE
    h {schema}.session_trail_history_heads;
    n bigint;
BEGIN
    -- A heads row first (this waits for an append that is creating one),
    -- then its lock, then the rows: an append in flight either committed
    -- before (its rows are deleted here) or waits and finds the erasure.
    INSERT INTO {schema}.session_trail_history_heads
        (sid, head, last_seq, low_seq, expires_at)
    VALUES (p_sid, NULL, 0, 1, 0)
    ON CONFLICT (sid) DO NOTHING;
    SELECT * INTO h FROM {schema}.session_trail_history_heads WHERE sid = p_sid FOR UPDATE;
    WITH gone AS (DELETE FROM {schema}.session_trail_history WHERE sid = p_sid RETURNING seq)
    SELECT count(*) INTO n FROM gone
    WHERE h.head IS NOT NULL AND h.expires_at > p_now
      AND gone.seq > h.last_seq - p_keep AND gone.seq <= h.last_seq;
    UPDATE {schema}.session_trail_history_heads
    SET head = NULL, last_seq = 0, low_seq = 1, expires_at = 0, erased_until = p_until
    WHERE sid = p_sid;
    RETURN n;
END
$fn$;

-- Decides and reserves a place among a user's sessions under a session
-- limit (see `SessionStore::claim_user_slot`), serialized per user by a
-- transaction-scoped advisory lock. Answers whether the place is granted
-- and which sessions must end for it (oldest first).
CREATE FUNCTION {schema}.session_trail_claim(
    p_user text, p_sid bytea, p_now bigint, p_until bigint, p_max int, p_end_oldest bool)
RETURNS TABLE (granted bool, ended bytea[])
LANGUAGE plpgsql
-- Plans are cached per connection: one made while the tables were tiny
-- must not scan them whole once they are not.
SET enable_seqscan = off
AS $fn$
#variable_conflict use_column
DECLARE
    others bytea[];
    claimed int;
    total int;
    n int;
    ends bytea[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('session_trail_claim ' || p_user, 0));
    -- In one statement, so one snapshot: a login saved meanwhile (its
    -- claim gone and its session there, in one commit) counts once.
    WITH ending AS (
        SELECT c.sid FROM {schema}.session_trail_claims c
        WHERE c.user_id = p_user AND c.kind = 1 AND c.until > p_now
    ), live AS (
        -- The user's live sessions not being ended for another login.
        SELECT s.sid, s.created FROM {schema}.session_trail_sessions s
        WHERE s.user_id = p_user AND s.sid <> p_sid AND s.expires_at > p_now
          AND s.sid NOT IN (SELECT sid FROM ending)
    )
    SELECT coalesce((SELECT array_agg(sid ORDER BY created, sid) FROM live), '{}'),
           -- Logins in progress whose session does not count yet.
           (SELECT count(*) FROM {schema}.session_trail_claims c
            WHERE c.user_id = p_user AND c.kind = 0 AND c.sid <> p_sid AND c.until > p_now
              AND c.sid NOT IN (SELECT sid FROM live)
              AND c.sid NOT IN (SELECT sid FROM ending))
    INTO others, claimed;
    total := cardinality(others) + claimed;
    IF total >= p_max THEN
        n := total + 1 - p_max;
        IF NOT p_end_oldest OR cardinality(others) < n THEN
            RETURN QUERY SELECT false, '{}'::bytea[];
            RETURN;
        END IF;
        ends := others[1:n];
    END IF;
    INSERT INTO {schema}.session_trail_claims (sid, kind, user_id, until)
    SELECT e, 1, p_user, p_until FROM unnest(ends) AS e
    ON CONFLICT (sid, kind) DO UPDATE SET user_id = excluded.user_id, until = excluded.until;
    INSERT INTO {schema}.session_trail_claims (sid, kind, user_id, until)
    VALUES (p_sid, 0, p_user, p_until)
    ON CONFLICT (sid, kind) DO UPDATE SET user_id = excluded.user_id, until = excluded.until;
    RETURN QUERY SELECT true, ends;
END
$fn$;

-- Maintenance, in bounded batches; rows another call holds are skipped,
-- never waited for.

-- Drops up to p_limit expired histories (their rows, then their heads,
-- or only the rows while an erasure is remembered). Answers how many.
CREATE FUNCTION {schema}.session_trail_expire_history(p_now bigint, p_limit int)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    sids bytea[];
BEGIN
    SELECT coalesce(array_agg(sid), '{}') INTO sids FROM (
        SELECT sid FROM {schema}.session_trail_history_heads
        WHERE expires_at <= p_now AND (head IS NOT NULL OR coalesce(erased_until, 0) <= p_now)
        ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED) AS e;
    DELETE FROM {schema}.session_trail_history WHERE sid = ANY(sids);
    DELETE FROM {schema}.session_trail_history_heads
    WHERE sid = ANY(sids) AND coalesce(erased_until, 0) <= p_now;
    UPDATE {schema}.session_trail_history_heads SET head = NULL, last_seq = 0, low_seq = 1
    WHERE sid = ANY(sids);
    RETURN cardinality(sids);
END
$fn$;

-- Deletes the entries beyond the newest p_keep of up to p_limit sessions.
-- Answers how many sessions it trimmed.
CREATE FUNCTION {schema}.session_trail_trim_history(p_keep bigint, p_limit int)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    sids bytea[];
BEGIN
    SELECT coalesce(array_agg(sid), '{}') INTO sids FROM (
        SELECT sid FROM {schema}.session_trail_history_heads
        WHERE head IS NOT NULL AND last_seq - p_keep >= low_seq
        LIMIT p_limit FOR UPDATE SKIP LOCKED) AS t;
    DELETE FROM {schema}.session_trail_history x
    USING {schema}.session_trail_history_heads h
    WHERE h.sid = ANY(sids) AND x.sid = h.sid AND x.seq <= h.last_seq - p_keep;
    UPDATE {schema}.session_trail_history_heads SET low_seq = last_seq - p_keep + 1
    WHERE sid = ANY(sids);
    RETURN cardinality(sids);
END
$fn$;
