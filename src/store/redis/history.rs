//! History: one list per session, compare-and-append by script.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use ::redis::{Cmd, Value};
use bytes::Bytes;
use futures_util::future::join_all;

use super::RedisStore;
use super::conn::is_noscript;
use crate::SessionId;
use crate::error::{Error, ErrorKind};
use crate::store::{Append, AppendOutcome};
use crate::util::now_ms;

/// How many sessions' refresh times are remembered before old ones are
/// forgotten (a forgotten session costs one extra `PEXPIRE`).
const MEMO_CAP: usize = 100_000;

/// When this process last refreshed each session's history TTL, so that an
/// append refreshes it only when a part of the TTL has passed instead of
/// every time.
#[derive(Debug, Default)]
pub(super) struct RefreshMemo {
    at: HashMap<SessionId, i64, BuildHasherDefault<IdHasher>>,
}

/// Session ids are random (made by the layer, and MAC-checked before they
/// reach the writer), so their first bytes are a good hash already: no need
/// for SipHash on every entry of every batch.
#[derive(Debug, Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(word);
    }
}

impl RefreshMemo {
    fn due(&self, id: &SessionId, now: i64, every: i64) -> bool {
        self.at
            .get(id)
            .is_none_or(|t| now.saturating_sub(*t) >= every)
    }

    fn done(&mut self, id: SessionId, now: i64, every: i64) {
        if self.at.len() >= MEMO_CAP {
            self.at.retain(|_, t| now.saturating_sub(*t) < every);
            if self.at.len() >= MEMO_CAP / 2 {
                self.at.clear();
            }
        }
        self.at.insert(id, now);
    }
}

/// How often the TTL is refreshed, and the slack it is set with: a 64th of
/// the TTL, at most an hour, at least a millisecond.
fn refresh_every(ttl: Duration) -> i64 {
    let ms = ttl.as_millis().min(i64::MAX as u128) as i64;
    (ms / 64).clamp(1, 3_600_000)
}

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

/// Sessions per script call on a single node: enough to spread the cost
/// of a call, few enough that one call holds Redis for well under a
/// millisecond.
const SESSIONS_PER_CALL: usize = 64;

/// The `EVALSHA` of the compare-and-append over some sessions.
fn append_cmd(
    store: &RedisStore,
    appends: &[(&Append, bool)],
    ttl_with_slack: i64,
    now: i64,
) -> Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(store.inner.scripts.append.get_hash())
        .arg(appends.len() * 3);
    for (a, _) in appends {
        for key in session_keys(store, &a.session) {
            cmd.arg(key);
        }
    }
    cmd.arg(store.inner.keep).arg(ttl_with_slack).arg(now);
    for (a, refresh) in appends {
        session_args(&mut cmd, a, *refresh);
    }
    cmd
}

/// The three keys the script declares for a session.
fn session_keys(store: &RedisStore, id: &SessionId) -> [String; 3] {
    [
        store.history_key(id),
        store.record_key(id),
        store.erased_key(id),
    ]
}

/// The token hash an append names, as the record stores it (hex), or ""
/// for none.
fn token_arg(a: &Append) -> String {
    a.token
        .map(|t| crate::util::hex(t.as_bytes()))
        .unwrap_or_default()
}

/// The script's arguments for one session.
fn session_args(cmd: &mut Cmd, a: &Append, refresh: bool) {
    let token = token_arg(a);
    cmd.arg(a.expected_head.as_ref().map_or(&[][..], |h| &h[..]))
        .arg(if refresh { "1" } else { "0" })
        .arg(token)
        .arg(a.entries.len());
    for e in &a.entries {
        cmd.arg(&e[..]);
    }
}

fn last_entry(v: Option<&Value>) -> Option<Bytes> {
    match v {
        Some(Value::BulkString(b)) => Some(Bytes::copy_from_slice(b)),
        _ => None,
    }
}

fn outcome(v: Value) -> Result<AppendOutcome, Error> {
    match v {
        Value::Int(1) => Ok(AppendOutcome::Appended),
        Value::Int(2) => Ok(AppendOutcome::AlreadyApplied),
        Value::Int(0) | Value::Nil => Ok(AppendOutcome::Conflict { last: None }),
        Value::BulkString(b) => Ok(AppendOutcome::Conflict {
            last: Some(Bytes::from(b)),
        }),
        Value::Array(items) => match items.first() {
            Some(Value::Int(3)) => Ok(AppendOutcome::TokenMismatch {
                replaced_at: match items.get(1) {
                    Some(Value::Int(at)) if *at > 0 => Some(*at),
                    _ => None,
                },
            }),
            Some(Value::Int(4)) => Ok(AppendOutcome::Erased {
                last: last_entry(items.get(1)),
            }),
            _ => Err(unexpected(&Value::Array(items))),
        },
        // An error for this session alone (a key of the wrong type, a
        // corrupt element): the others' outcomes stand.
        Value::ServerError(e) if !is_noscript(&Value::ServerError(e.clone())) => {
            Ok(AppendOutcome::Failed {
                reason: format!("{}: {}", e.code(), e.details().unwrap_or_default()),
            })
        }
        other => Err(unexpected(&other)),
    }
}

fn unexpected(v: &Value) -> Error {
    match v {
        Value::ServerError(e) => Error::unavailable(::redis::RedisError::from(e.clone()))
            .context("redis append script failed"),
        other => Error::new(
            ErrorKind::Unavailable,
            format!("redis append script answered {other:?}"),
        ),
    }
}

/// The replies of one script call, one per session.
fn replies(v: Value, sessions: usize) -> Result<Vec<Value>, Error> {
    match v {
        Value::Array(items) if items.len() == sessions => Ok(items),
        other => Err(unexpected(&other)),
    }
}

pub(super) async fn append(
    store: &RedisStore,
    batch: &[Append],
) -> Result<Vec<AppendOutcome>, Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let every = refresh_every(store.inner.ttl);
    let ttl_with_slack = ttl_ms(store.inner.ttl).saturating_add(every);
    let refresh: Vec<bool> = {
        let memo = store.inner.memo.lock().unwrap_or_else(|e| e.into_inner());
        batch
            .iter()
            .map(|a| memo.due(&a.session, now, every))
            .collect()
    };
    let outcomes = if store.inner.conn.is_cluster() {
        append_cluster(store, batch, &refresh, ttl_with_slack, now).await?
    } else {
        append_single(store, batch, &refresh, ttl_with_slack, now)
            .await?
            .into_iter()
            .map(outcome)
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut memo = store.inner.memo.lock().unwrap_or_else(|e| e.into_inner());
    for ((a, o), r) in batch.iter().zip(&outcomes).zip(refresh) {
        if r && *o == AppendOutcome::Appended {
            memo.done(a.session, now, every);
        }
    }
    Ok(outcomes)
}

/// A single node: the batch in calls of up to [`SESSIONS_PER_CALL`]
/// sessions, all in one pipeline: one round trip. Calls the server answers
/// with `NOSCRIPT` (it restarted or failed over, and forgot the script) did
/// not run: the script is loaded and only those calls are sent again.
async fn append_single(
    store: &RedisStore,
    batch: &[Append],
    refresh: &[bool],
    ttl_with_slack: i64,
    now: i64,
) -> Result<Vec<Value>, Error> {
    let chunks: Vec<Vec<(&Append, bool)>> = batch
        .iter()
        .zip(refresh.iter().copied())
        .collect::<Vec<_>>()
        .chunks(SESSIONS_PER_CALL)
        .map(<[_]>::to_vec)
        .collect();
    let mut c = store.inner.conn.clone();
    let mut done: Vec<Option<Vec<Value>>> = vec![None; chunks.len()];
    let mut todo: Vec<usize> = (0..chunks.len()).collect();
    for _ in 0..3 {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for &i in &todo {
            pipe.add_command(append_cmd(store, &chunks[i], ttl_with_slack, now));
        }
        let answers: Vec<Value> = pipe
            .query_async(&mut c)
            .await
            .map_err(|e| store.unavailable(e, "append history"))?;
        if answers.len() != todo.len() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "redis answered {} replies to {} calls",
                    answers.len(),
                    todo.len()
                ),
            ));
        }
        let mut again = Vec::new();
        for (i, v) in todo.into_iter().zip(answers) {
            if is_noscript(&v) {
                again.push(i);
            } else {
                done[i] = Some(replies(v, chunks[i].len())?);
            }
        }
        if again.is_empty() {
            return Ok(done.into_iter().flatten().flatten().collect());
        }
        store
            .inner
            .scripts
            .append
            .prepare_invoke()
            .load_async(&mut c)
            .await
            .map_err(|e| store.unavailable(e, "SCRIPT LOAD"))?;
        todo = again;
    }
    Err(Error::new(
        ErrorKind::Unavailable,
        "redis kept forgetting the history script (NOSCRIPT)",
    ))
}

/// A cluster: one script call per session, all at once. Sessions live in
/// different slots, so redis-rs routes each call to its node (following
/// MOVED and ASK); calls to the same node share its multiplexed connection
/// and are written together. Each session's outcome is its own: a shard
/// that is down or failing over fails only its own sessions' appends
/// ([`AppendOutcome::Failed`]); only when every call fails is the whole
/// batch an error.
async fn append_cluster(
    store: &RedisStore,
    batch: &[Append],
    refresh: &[bool],
    ttl_with_slack: i64,
    now: i64,
) -> Result<Vec<AppendOutcome>, Error> {
    let calls = batch.iter().zip(refresh).map(|(a, r)| {
        let mut c = store.inner.conn.clone();
        // `invoke_async` sends EVALSHA and, after NOSCRIPT, loads the
        // script and sends it again.
        let mut inv = store.inner.scripts.append.prepare_invoke();
        for key in session_keys(store, &a.session) {
            inv.key(key);
        }
        let token = token_arg(a);
        inv.arg(store.inner.keep)
            .arg(ttl_with_slack)
            .arg(now)
            .arg(a.expected_head.as_ref().map_or(&[][..], |h| &h[..]))
            .arg(if *r { "1" } else { "0" })
            .arg(token)
            .arg(a.entries.len());
        for e in &a.entries {
            inv.arg(&e[..]);
        }
        async move { inv.invoke_async::<Value>(&mut c).await }
    });
    let mut out = Vec::with_capacity(batch.len());
    let mut failures = 0;
    let mut last_error = None;
    for v in join_all(calls).await {
        let o = match v {
            Ok(v) => replies(v, 1).and_then(|mut r| outcome(r.remove(0))),
            Err(e) => Err(store.unavailable(e, "append history")),
        };
        match o {
            Ok(o) => out.push(o),
            Err(e) => {
                failures += 1;
                out.push(AppendOutcome::Failed {
                    reason: e.report().to_string(),
                });
                last_error = Some(e);
            }
        }
    }
    if failures == batch.len()
        && let Some(e) = last_error
    {
        return Err(e);
    }
    Ok(out)
}

pub(super) async fn read_newest(
    store: &RedisStore,
    session: &SessionId,
    n: usize,
) -> Result<Vec<Bytes>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let start: i64 = i64::try_from(n).map_or(0, |n| -n);
    let mut c = store.inner.conn.clone();
    let items: Vec<Vec<u8>> = ::redis::cmd("LRANGE")
        .arg(store.history_key(session))
        .arg(start)
        .arg(-1)
        .query_async(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "LRANGE"))?;
    Ok(items.into_iter().map(Bytes::from).collect())
}

pub(super) async fn delete(store: &RedisStore, session: &SessionId) -> Result<u64, Error> {
    // The erasure marker lives as long as a history could: a writer that
    // still knows the old head learns of the erasure, not of a loss.
    let ttl = ttl_ms(store.inner.ttl).saturating_add(refresh_every(store.inner.ttl));
    let mut c = store.inner.conn.clone();
    let n: u64 = store
        .inner
        .scripts
        .erase
        .key(store.history_key(session))
        .key(store.erased_key(session))
        .arg(now_ms())
        .arg(ttl)
        .invoke_async(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "delete history"))?;
    store
        .inner
        .memo
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .at
        .remove(session);
    Ok(n)
}

/// Until when a user's history index must live once it names a session
/// ending at `session_ends`: as long as the histories it names, the history
/// TTL (with the same slack) after the latest end of any linked session.
pub(super) fn link_until(store: &RedisStore, session_ends: i64) -> i64 {
    let ttl = ttl_ms(store.inner.ttl).saturating_add(refresh_every(store.inner.ttl));
    session_ends.max(now_ms()).saturating_add(ttl)
}

pub(super) async fn link_user(
    store: &RedisStore,
    user: &str,
    session: &SessionId,
    session_ends: i64,
) -> Result<(), Error> {
    let key = store.user_history_key(user);
    // NX sets an expiry on a new index; GT only ever lengthens it.
    let until = link_until(store, session_ends);
    let mut pipe = ::redis::pipe();
    pipe.atomic()
        .cmd("ZADD")
        .arg(&key)
        .arg("NX")
        .arg(now_ms())
        .arg(session.to_string())
        .ignore()
        .cmd("PEXPIREAT")
        .arg(&key)
        .arg(until)
        .arg("NX")
        .ignore()
        .cmd("PEXPIREAT")
        .arg(&key)
        .arg(until)
        .arg("GT")
        .ignore();
    let mut c = store.inner.conn.clone();
    pipe.query_async::<()>(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "link a user's history"))
}

pub(super) async fn user_sessions(store: &RedisStore, user: &str) -> Result<Vec<SessionId>, Error> {
    let mut c = store.inner.conn.clone();
    let members: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(store.user_history_key(user))
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "read a user's history index"))?;
    Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
}

pub(super) async fn unlink_sessions(
    store: &RedisStore,
    user: &str,
    sessions: &[SessionId],
) -> Result<(), Error> {
    if sessions.is_empty() {
        return Ok(());
    }
    let mut c = store.inner.conn.clone();
    ::redis::cmd("ZREM")
        .arg(store.user_history_key(user))
        .arg(sessions.iter().map(ToString::to_string).collect::<Vec<_>>())
        .query_async::<()>(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "unlink sessions from a user's history"))
}

/// Keeps a checkpoint in its writer's sorted set (scored by its time, so
/// those past the TTL are trimmed here), and the writer in the index of
/// writers (scored by its last checkpoint).
pub(super) async fn put_checkpoint(
    store: &RedisStore,
    cp: &crate::history::Checkpoint,
) -> Result<(), Error> {
    let ttl = ttl_ms(store.inner.ttl);
    let cutoff = now_ms().saturating_sub(ttl);
    // One key per pipeline: the two keys may live on two cluster nodes.
    let keep = |key: String, member: Vec<u8>| {
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(cp.at)
            .arg(member)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({cutoff}"))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl)
            .ignore();
        pipe
    };
    let mut c = store.inner.conn.clone();
    keep(store.checkpoints_key(&cp.writer), cp.encode())
        .query_async::<()>(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "keep a checkpoint"))?;
    keep(
        store.checkpoint_writers_key(),
        cp.writer.to_string().into_bytes(),
    )
    .query_async::<()>(&mut c)
    .await
    .map_err(|e| store.unavailable(e, "index a checkpoint's writer"))
}

pub(super) async fn checkpoints(store: &RedisStore) -> Result<Vec<Bytes>, Error> {
    let mut c = store.inner.conn.clone();
    let writers: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(store.checkpoint_writers_key())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "read the checkpoint writers"))?;
    let mut out = Vec::new();
    for w in writers {
        let Some(id) = crate::util::unhex::<16>(&w) else {
            continue;
        };
        let key = store.checkpoints_key(&crate::history::WriterId::from_bytes(id));
        let kept: Vec<Vec<u8>> = ::redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(|e| store.unavailable(e, "read checkpoints"))?;
        out.extend(kept.into_iter().map(Bytes::from));
    }
    Ok(out)
}
