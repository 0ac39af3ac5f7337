//! Session records: one hash per session, and the per-user index.

use std::collections::HashMap;

use ::redis::Value;
use futures_util::future::join_all;

use super::RedisStore;
use super::cache::{Lookup, Ticket, Unsettled};
use super::conn::{Conn, evalsha, invoke};
use crate::SessionId;
use crate::error::{Error, ErrorKind};
use crate::store::{Record, Replaced, TokenHash, Update, UpdateOutcome};
use crate::util::{hex, now_ms, unhex};

const TOKEN: &str = "tok";
const REPLACED: &str = "rtok";
const REPLACED_AT: &str = "rat";
const USER: &str = "user";
const PRIVILEGE: &str = "priv";
const CREATED: &str = "created";
const LAST_SEEN: &str = "seen";
const IDLE: &str = "idle";
const ABSOLUTE: &str = "abs";
const DEVICE: &str = "dev";
const NETWORK: &str = "net";
/// Incremented by every update (the local cache's version check).
const VERSION: &str = "ver";
/// Data keys are stored as fields `d:<key>`, apart from the metadata.
const DATA: &str = "d:";

/// Latest time Redis is asked to expire anything at (about the year 6400):
/// far beyond any session, well inside what `PEXPIREAT` and a sorted-set
/// score (a double) represent exactly.
const MAX_MS: i64 = 1 << 47;

fn clamp_ms(ms: i64) -> i64 {
    ms.clamp(0, MAX_MS)
}

fn corrupt(id: &SessionId, what: &str) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("session {id}: stored field {what} is invalid"),
    )
}

fn encode(record: &Record) -> Result<Vec<(String, String)>, Error> {
    let mut f = vec![
        (TOKEN.to_owned(), hex(record.token_hash.as_bytes())),
        (CREATED.to_owned(), record.created.to_string()),
        (LAST_SEEN.to_owned(), record.last_seen.to_string()),
        (IDLE.to_owned(), record.idle_deadline.to_string()),
        (ABSOLUTE.to_owned(), record.absolute_deadline.to_string()),
        (VERSION.to_owned(), "0".to_owned()),
    ];
    if let Some(r) = &record.replaced {
        f.push((REPLACED.to_owned(), hex(r.token_hash.as_bytes())));
        f.push((REPLACED_AT.to_owned(), r.at.to_string()));
    }
    let optional = [
        (USER, &record.user),
        (PRIVILEGE, &record.privilege),
        (DEVICE, &record.device),
        (NETWORK, &record.network),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            f.push((name.to_owned(), v.clone()));
        }
    }
    for (k, v) in &record.data {
        f.push((format!("{DATA}{k}"), serde_json::to_string(v)?));
    }
    Ok(f)
}

/// A record's hash as `HGETALL` answers it: field/value pairs, read in one
/// pass (no map is built).
type Fields = Vec<(String, String)>;

/// Decodes a record and its version (`ver`, 0 when absent).
fn decode(id: &SessionId, fields: Fields) -> Result<Option<(Record, i64)>, Error> {
    if fields.is_empty() {
        return Ok(None);
    }
    let int = |v: Option<String>, name: &str| -> Result<i64, Error> {
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(id, name))
    };
    let token = |v: Option<String>, what: &str| -> Result<TokenHash, Error> {
        v.as_deref()
            .and_then(unhex::<32>)
            .map(TokenHash::from_bytes)
            .ok_or_else(|| corrupt(id, what))
    };
    let (mut tok, mut rtok, mut rat, mut created, mut seen, mut idle, mut abs) =
        (None, None, None, None, None, None, None);
    let (mut user, mut privilege, mut device, mut network) = (None, None, None, None);
    let mut version = 0;
    let mut data = HashMap::new();
    for (k, v) in fields {
        match k.as_str() {
            TOKEN => tok = Some(v),
            REPLACED => rtok = Some(v),
            REPLACED_AT => rat = Some(v),
            CREATED => created = Some(v),
            LAST_SEEN => seen = Some(v),
            IDLE => idle = Some(v),
            ABSOLUTE => abs = Some(v),
            USER => user = Some(v),
            PRIVILEGE => privilege = Some(v),
            DEVICE => device = Some(v),
            NETWORK => network = Some(v),
            VERSION => version = v.parse().unwrap_or(0),
            _ => {
                if let Some(key) = k.strip_prefix(DATA) {
                    let value = serde_json::from_str(&v).map_err(|_| corrupt(id, &k))?;
                    data.insert(key.to_owned(), value);
                }
            }
        }
    }
    let replaced = match rtok {
        Some(v) => Some(Replaced {
            token_hash: token(Some(v), REPLACED)?,
            at: int(rat, REPLACED_AT)?,
        }),
        None => None,
    };
    let record = Record {
        id: *id,
        token_hash: token(tok, TOKEN)?,
        replaced,
        user,
        privilege,
        data,
        created: int(created, CREATED)?,
        last_seen: int(seen, LAST_SEEN)?,
        idle_deadline: int(idle, IDLE)?,
        absolute_deadline: int(abs, ABSOLUTE)?,
        device,
        network,
    };
    Ok(Some((record, version)))
}

async fn load_many(store: &RedisStore, ids: &[SessionId]) -> Result<Vec<Option<Record>>, Error> {
    let raw: Vec<Fields> = if store.inner.conn.is_cluster() {
        let futs = ids.iter().map(|id| {
            let mut c = store.inner.conn.clone();
            let key = store.record_key(id);
            async move { ::redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
        });
        join_all(futs)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| store.unavailable(e, "HGETALL"))?
    } else {
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(store.record_key(id));
        }
        let mut c = store.inner.conn.clone();
        pipe.query_async(&mut c)
            .await
            .map_err(|e| store.unavailable(e, "HGETALL"))?
    };
    let now = now_ms();
    ids.iter()
        .zip(raw)
        .map(|(id, fields)| {
            Ok(decode(id, fields)?
                .map(|(r, _)| r)
                .filter(|r| !r.is_expired(now)))
        })
        .collect()
}

pub(super) async fn load(store: &RedisStore, id: &SessionId) -> Result<Option<Record>, Error> {
    let lookup = match &store.inner.cache {
        Some(cache) => cache.lookup(id),
        None => Lookup::Off,
    };
    let (mut c, ticket) = match lookup {
        // Expired records are answered until Redis evicts them (see
        // `Record::evict_at`): the layer records why the session ended.
        Lookup::Hit(record) => return Ok(Some(record)),
        Lookup::Miss(conn, ticket) => (Conn::Tracked(conn), Some(ticket)),
        Lookup::Off => (store.inner.conn.clone(), None),
    };
    let reply = ::redis::cmd("HGETALL")
        .arg(store.record_key(id))
        .query_async::<Fields>(&mut c)
        .await;
    let fields = match reply {
        Ok(fields) => fields,
        Err(e) => {
            store.tracking_failed(ticket, &e);
            return Err(store.unavailable(e, "HGETALL"));
        }
    };
    let Some((record, version)) = decode(id, fields)? else {
        return Ok(None);
    };
    if let (Some(ticket), Some(cache)) = (ticket, &store.inner.cache) {
        cache.fill(ticket, &record, version);
    }
    Ok(Some(record))
}

/// Starts a write of `id`: the connection to send it on (the local cache's
/// tracking connection while it is up, so the write does not invalidate this
/// process's own copy; else the store's), the ticket its answer needs, and
/// the guard that evicts the cached copy unless the outcome reaches it.
fn begin_write<'a>(store: &'a RedisStore, id: &SessionId) -> (Conn, Option<Ticket>, Unsettled<'a>) {
    let unsettled = Unsettled::new(store.inner.cache.as_ref(), *id);
    match store.inner.cache.as_ref().and_then(|c| c.connection(id)) {
        Some((conn, ticket)) => (Conn::Tracked(conn), Some(ticket), unsettled),
        None => (store.inner.conn.clone(), None, unsettled),
    }
}

impl RedisStore {
    /// After a failed command on the tracking connection: stop trusting it
    /// if it may have lost replies.
    fn tracking_failed(&self, ticket: Option<Ticket>, e: &::redis::RedisError) {
        if let (Some(cache), Some(ticket)) = (&self.inner.cache, ticket) {
            cache.failed(ticket, e);
        }
    }

    fn cache_evict(&self, id: &SessionId) {
        if let Some(cache) = &self.inner.cache {
            cache.evict(id);
        }
    }
}

/// Adds a session to a user's index, which expires with its longest-lived
/// member.
async fn index_add(
    store: &RedisStore,
    user: &str,
    id: &SessionId,
    absolute: i64,
) -> Result<(), Error> {
    let mut c = store.inner.conn.clone();
    store
        .inner
        .scripts
        .index
        .key(store.user_key(user))
        .key(store.user_claims_key(user))
        .arg(clamp_ms(absolute))
        .arg(id.to_string())
        .invoke_async::<()>(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "index a user's session"))
}

/// Removes a session from a user's index (after the record stopped naming
/// the user). Best effort: a leftover member is filtered out on read and
/// expires with the session.
async fn index_remove(store: &RedisStore, user: &str, id: &SessionId) {
    let mut c = store.inner.conn.clone();
    let member = id.to_string();
    let mut pipe = ::redis::pipe();
    pipe.cmd("ZREM")
        .arg(store.user_key(user))
        .arg(&member)
        .ignore()
        .cmd("ZREM")
        .arg(store.user_ending_key(user))
        .arg(&member)
        .ignore();
    let res = pipe.query_async::<()>(&mut c).await;
    if let Err(e) = res {
        tracing::debug!(session = %id, error = %e, "could not remove a session from its user's index");
    }
}

/// Creates a session. On a single node one script writes the user's
/// session index, the user's history index (when `link` names the user's
/// pseudonym and the session's absolute deadline) and the record,
/// atomically, in one round trip; it answers whether it linked the history.
///
/// On a cluster the user's indexes live in other slots: the record is
/// written first, then the session index, and the history is not linked
/// here (the layer links it). The record comes first there so that a reader
/// of the index never drops the member of a session still being created
/// (members whose record is gone are dropped); no one holds the new
/// session's token until both writes succeeded, so a failure in between
/// leaves nothing usable behind.
pub(super) async fn create(
    store: &RedisStore,
    record: &Record,
    link: Option<(&str, i64)>,
) -> Result<bool, Error> {
    let fields = encode(record)?;
    let key = store.record_key(&record.id);
    let cluster = store.inner.conn.is_cluster();
    let link = link.filter(|_| record.user.is_some() && !cluster);
    let mut keys = vec![key.clone()];
    if let (Some(user), false) = (&record.user, cluster) {
        keys.push(store.user_key(user));
        keys.push(store.user_claims_key(user));
        if let Some((pseudonym, _)) = link {
            keys.push(store.user_history_key(pseudonym));
        }
    }
    let (mut c, ticket, unsettled) = begin_write(store, &record.id);
    let script = &store.inner.scripts.create;
    let mut inv = evalsha(script, &keys);
    let until = link.map_or(0, |(_, ends)| super::history::link_until(store, ends));
    inv.arg(clamp_ms(record.evict_at()))
        .arg(clamp_ms(record.absolute_deadline))
        .arg(record.id.to_string())
        .arg(now_ms())
        .arg(until)
        .arg(if ticket.is_some() { "1" } else { "0" });
    for (f, v) in &fields {
        inv.arg(f).arg(v);
    }
    if let Err(e) = invoke::<()>(script, &inv, &mut c).await {
        store.tracking_failed(ticket, &e);
        if e.code() == Some("SESSIONEXISTS") {
            return Err(Error::new(
                crate::ErrorKind::Conflict,
                "create a session: a session with this id exists already (an id collision); \
                 it was not overwritten",
            ));
        }
        return Err(store.unavailable(e, "create a session"));
    }
    // On a cluster the user index lives in another slot: written beside
    // the record, which is taken back if that fails (nobody holds its
    // token yet).
    if let (Some(user), true) = (&record.user, cluster)
        && let Err(e) = index_add(store, user, &record.id, record.absolute_deadline).await
    {
        let _ = ::redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut c)
            .await;
        return Err(e);
    }
    if let (Some(ticket), Some(cache)) = (ticket, &store.inner.cache) {
        cache.fill(ticket, record, 0);
    }
    unsettled.settle();
    Ok(link.is_some())
}

pub(super) async fn update(
    store: &RedisStore,
    id: &SessionId,
    update: &Update,
) -> Result<UpdateOutcome, Error> {
    let key = store.record_key(id);
    let mut set: Vec<(String, String)> = Vec::new();
    let mut del: Vec<String> = Vec::new();
    for (k, v) in &update.set {
        set.push((format!("{DATA}{k}"), serde_json::to_string(v)?));
    }
    for k in &update.remove {
        del.push(format!("{DATA}{k}"));
    }
    let optional = [
        (USER, &update.user),
        (PRIVILEGE, &update.privilege),
        (DEVICE, &update.device),
        (NETWORK, &update.network),
    ];
    for (name, change) in optional {
        match change {
            Some(Some(v)) => set.push((name.to_owned(), v.clone())),
            Some(None) => del.push(name.to_owned()),
            None => {}
        }
    }
    let token = hex(update.token_hash.as_bytes());
    let mut new_token = String::new();
    if let Some(r) = &update.rotate {
        new_token = hex(r.new_token_hash.as_bytes());
        set.push((TOKEN.to_owned(), new_token.clone()));
        set.push((REPLACED.to_owned(), token.clone()));
        set.push((REPLACED_AT.to_owned(), r.at.to_string()));
    }
    let mut idle = String::new();
    if let Some((last_seen, idle_deadline)) = update.touch {
        idle = clamp_ms(idle_deadline).to_string();
        set.push((LAST_SEEN.to_owned(), last_seen.to_string()));
        set.push((IDLE.to_owned(), idle_deadline.to_string()));
    }

    // A new user is indexed before the record names it, so the index never
    // misses a session. The score is the absolute deadline, which never
    // changes after `create`.
    let (mut c, ticket, unsettled) = begin_write(store, id);
    if let Some(Some(user)) = &update.user {
        let cached = store
            .inner
            .cache
            .as_ref()
            .and_then(|cache| cache.absolute_deadline(id));
        let absolute = match cached {
            Some(absolute) => absolute,
            None => {
                let absolute: Option<String> = ::redis::cmd("HGET")
                    .arg(&key)
                    .arg(ABSOLUTE)
                    .query_async(&mut store.inner.conn.clone())
                    .await
                    .map_err(|e| store.unavailable(e, "HGET"))?;
                let Some(absolute) = absolute else {
                    return Ok(UpdateOutcome::Missing);
                };
                absolute.parse().map_err(|_| corrupt(id, ABSOLUTE))?
            }
        };
        index_add(store, user, id, absolute).await?;
    }

    let script = &store.inner.scripts.update;
    let mut inv = evalsha(script, &[&key]);
    inv.arg(&token)
        .arg(&new_token)
        .arg(&idle)
        .arg(now_ms())
        .arg(crate::store::EXPIRED_RECORD_LINGER.as_millis() as u64)
        .arg(set.len());
    for (f, v) in &set {
        inv.arg(f).arg(v);
    }
    inv.arg(del.len());
    for f in &del {
        inv.arg(f);
    }
    let reply: Vec<Value> = match invoke(script, &inv, &mut c).await {
        Ok(reply) => reply,
        Err(e) => {
            store.tracking_failed(ticket, &e);
            return Err(store.unavailable(e, "update a session"));
        }
    };
    match (reply.first(), reply.get(2), ticket, &store.inner.cache) {
        (Some(Value::Int(1)), Some(Value::Int(version)), Some(ticket), Some(cache)) => {
            cache.written(ticket, id, update, *version);
            unsettled.settle();
        }
        _ => drop(unsettled),
    }
    match reply.first() {
        Some(Value::Int(1)) => {
            let old_user = match reply.get(1) {
                Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            };
            if let (Some(new), Some(old)) = (&update.user, old_user)
                && new.as_deref() != Some(old.as_str())
            {
                index_remove(store, &old, id).await;
            }
            Ok(UpdateOutcome::Applied)
        }
        // An earlier attempt of this very call (same rotation) was applied
        // and its answer lost.
        Some(Value::Int(2)) => Ok(UpdateOutcome::Applied),
        Some(Value::Int(0)) => Ok(UpdateOutcome::Missing),
        other => Err(Error::new(
            ErrorKind::Unavailable,
            format!("redis update script answered {other:?}"),
        )),
    }
}

pub(super) async fn delete(store: &RedisStore, id: &SessionId) -> Result<bool, Error> {
    // Loads stop hitting at once; the guard evicts again when done.
    store.cache_evict(id);
    let (mut c, ticket, _unsettled) = begin_write(store, id);
    let reply = store
        .inner
        .scripts
        .delete
        .key(store.record_key(id))
        .invoke_async::<Vec<Value>>(&mut c)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            store.tracking_failed(ticket, &e);
            return Err(store.unavailable(e, "delete a session"));
        }
    };
    let existed = matches!(reply.first(), Some(Value::Int(n)) if *n > 0);
    if let Some(Value::BulkString(user)) = reply.get(1) {
        index_remove(store, &String::from_utf8_lossy(user), id).await;
    }
    Ok(existed)
}

/// Claims a place among a user's sessions (see
/// `SessionStore::claim_user_slot`): the index is cleaned of ended
/// sessions first, then one script decides and reserves atomically in the
/// index's slot.
pub(super) async fn claim_user_slot(
    store: &RedisStore,
    user: &str,
    session: &SessionId,
    absolute_deadline: i64,
    max: usize,
    policy: crate::SessionLimit,
) -> Result<crate::store::Claim, Error> {
    // Drops members whose record is gone, so they do not count (claims
    // are kept apart, so logins in progress do).
    sessions_of_user(store, user).await?;
    let mut c = store.inner.conn.clone();
    let now = now_ms();
    let lapses = clamp_ms(super::super::claim_lapses_at(absolute_deadline, now));
    let reply: Vec<Value> = store
        .inner
        .scripts
        .claim
        .key(store.user_key(user))
        .key(store.user_claims_key(user))
        .key(store.user_ending_key(user))
        .arg(now)
        .arg(session.to_string())
        .arg(lapses)
        .arg(max)
        .arg(match policy {
            crate::SessionLimit::RefuseNew => "refuse",
            crate::SessionLimit::EndOldest => "end_oldest",
        })
        .invoke_async(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "claim a place among a user's sessions"))?;
    match reply.first() {
        Some(Value::Int(1)) => Ok(crate::store::Claim::Granted {
            end: reply[1..]
                .iter()
                .filter_map(|v| match v {
                    Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                    _ => None,
                })
                .collect(),
        }),
        Some(Value::Int(0)) => Ok(crate::store::Claim::Refused),
        other => Err(Error::new(
            ErrorKind::Unavailable,
            format!("redis claim script answered {other:?}"),
        )),
    }
}

/// Gives back a claimed place whose login was not saved (unless the record
/// names the user after all: an answer lost after the save), and counts the
/// sessions it was to end again.
pub(super) async fn release_user_slot(
    store: &RedisStore,
    user: &str,
    session: &SessionId,
    ended: &[SessionId],
) -> Result<(), Error> {
    let mut c = store.inner.conn.clone();
    // A record that cannot be read because it is not a hash (a broken key)
    // names no one; any other failure is the store's, and nothing is
    // changed (a transient error must not unindex a live session).
    let named: Option<String> = match ::redis::cmd("HGET")
        .arg(store.record_key(session))
        .arg(USER)
        .query_async(&mut c)
        .await
    {
        Ok(named) => named,
        Err(e) if e.code() == Some("WRONGTYPE") => None,
        Err(e) => return Err(store.unavailable(e, "HGET")),
    };
    let mut pipe = ::redis::pipe();
    pipe.cmd("ZREM")
        .arg(store.user_claims_key(user))
        .arg(session.to_string())
        .ignore();
    if !ended.is_empty() {
        pipe.cmd("ZREM")
            .arg(store.user_ending_key(user))
            .arg(ended.iter().map(ToString::to_string).collect::<Vec<_>>())
            .ignore();
    }
    pipe.query_async::<()>(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "release a claimed place"))?;
    if named.as_deref() != Some(user) {
        index_remove(store, user, session).await;
    }
    Ok(())
}

pub(super) async fn sessions_of_user(store: &RedisStore, user: &str) -> Result<Vec<Record>, Error> {
    let key = store.user_key(user);
    let now = now_ms();
    let mut pipe = ::redis::pipe();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now)
        .ignore()
        .cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1);
    let mut c = store.inner.conn.clone();
    let (members,): (Vec<String>,) = pipe
        .query_async(&mut c)
        .await
        .map_err(|e| store.unavailable(e, "read a user's index"))?;
    let ids: Vec<SessionId> = members.iter().filter_map(|m| m.parse().ok()).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let records = load_many(store, &ids).await?;
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for (id, record) in ids.iter().zip(records) {
        match record {
            // A member whose record names another user is left alone: it
            // may be a login in progress (indexed first, then written).
            Some(r) if r.user.as_deref() == Some(user) => out.push(r),
            Some(_) => {}
            None => gone.push(id.to_string()),
        }
    }
    if !gone.is_empty() {
        let res = ::redis::cmd("ZREM")
            .arg(&key)
            .arg(&gone)
            .query_async::<()>(&mut c)
            .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "could not drop ended sessions from a user's index");
        }
    }
    out.sort_by_key(|r| (r.created, r.id));
    Ok(out)
}
