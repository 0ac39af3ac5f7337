-- Schema version 1 of the SQLite store, applied by `SqliteStore` when it
-- opens a database that does not have it, in one write transaction. Times
-- are Unix milliseconds (INTEGER), the history's `ts` included. Blobs:
-- `sid` the 16-byte session id, hashes 32 bytes, tags 16 bytes.

-- Sessions: one row per session. `data` is a JSON object of the
-- application's keys.
CREATE TABLE session_trail_sessions (
    sid               BLOB    PRIMARY KEY NOT NULL,
    token_hash        BLOB    NOT NULL,
    replaced_hash     BLOB,
    replaced_at       INTEGER,
    user_id           TEXT,
    privilege         TEXT,
    data              TEXT    NOT NULL DEFAULT '{}',
    created           INTEGER NOT NULL,
    last_seen         INTEGER NOT NULL,
    idle_deadline     INTEGER NOT NULL,
    absolute_deadline INTEGER NOT NULL,
    expires_at        INTEGER GENERATED ALWAYS AS (min(idle_deadline, absolute_deadline)) STORED,
    device            TEXT,
    network           TEXT
) WITHOUT ROWID;
CREATE INDEX session_trail_sessions_expires ON session_trail_sessions (expires_at);
CREATE INDEX session_trail_sessions_user ON session_trail_sessions (user_id, created)
    WHERE user_id IS NOT NULL;

-- Places claimed under a session limit: kind 0, a login in progress
-- (`sid` is the session that will carry the user); kind 1, a session being
-- ended to make room for one. Each lapses at `until`.
CREATE TABLE session_trail_claims (
    sid     BLOB    NOT NULL,
    kind    INTEGER NOT NULL,
    user_id TEXT    NOT NULL,
    until   INTEGER NOT NULL,
    PRIMARY KEY (sid, kind)
) WITHOUT ROWID;
CREATE INDEX session_trail_claims_user ON session_trail_claims (user_id);
CREATE INDEX session_trail_claims_until ON session_trail_claims (until);

-- History: one row per entry, in the order written (`id`; the index on
-- `(sid, seq)` finds a session's entries). `entry` is the exact signed
-- entry (the evidence `verify` checks); the other columns are decoded from
-- it for queries, as in the PostgreSQL store. `session` is the public session id
-- as the API shows it (lowercase hex); `ts` the entry's time in Unix
-- milliseconds; `attrs` JSON text.
CREATE TABLE session_trail_history (
    id             INTEGER PRIMARY KEY,
    sid            BLOB    NOT NULL,
    session        TEXT    GENERATED ALWAYS AS (lower(hex(sid))) VIRTUAL,
    seq            INTEGER NOT NULL,
    ts             INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    name           TEXT,
    method         TEXT,
    status         INTEGER,
    user_pseudonym TEXT,
    attrs          TEXT,
    entry          BLOB    NOT NULL
);
CREATE UNIQUE INDEX session_trail_history_sid_seq ON session_trail_history (sid, seq);

-- Per session: the lowest seq not yet trimmed, when the history expires
-- (its TTL slides with appends) and, after an erasure, until when the
-- erasure is remembered. A list is live while `expires_at` is ahead; its
-- head (the tag the compare-and-append compares) is the last 16 bytes of
-- its newest row, so an append writes this row only when the list starts
-- or its expiry moves, not every time. Only the newest `keep` entries are
-- read.
CREATE TABLE session_trail_history_heads (
    sid          BLOB    PRIMARY KEY NOT NULL,
    low_seq      INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    erased_until INTEGER
) WITHOUT ROWID;
CREATE INDEX session_trail_history_heads_expires ON session_trail_history_heads (expires_at);

-- The sessions whose history belongs to a user (by keyed pseudonym), in
-- the order they were linked (`linked`, the row id, only grows); each
-- link lives until `until`.
CREATE TABLE session_trail_user_history (
    linked         INTEGER PRIMARY KEY,
    user_pseudonym TEXT    NOT NULL,
    sid            BLOB    NOT NULL,
    until          INTEGER NOT NULL,
    UNIQUE (user_pseudonym, sid)
);
CREATE INDEX session_trail_user_history_until ON session_trail_user_history (until);
