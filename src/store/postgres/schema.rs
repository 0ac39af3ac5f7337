//! Creating, upgrading and checking the store's schema.

use std::collections::HashMap;
use std::time::Duration;

use super::sql::{MIGRATIONS, quote_ident, with_schema};
use super::{InUse, PostgresStore};
use crate::error::{Error, ErrorKind};

/// The schema version this build creates and needs.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// How long [`PostgresStore::migrate`] may take (it may wait for another
/// server's).
pub(super) const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Every table with the columns (and their `information_schema` types)
/// the store uses.
const TABLES: &[(&str, &[(&str, &str)])] = &[
    ("session_trail_schema", &[("version", "integer")]),
    (
        "session_trail_sessions",
        &[
            ("sid", "bytea"),
            ("token_hash", "bytea"),
            ("replaced_hash", "bytea"),
            ("replaced_at", "bigint"),
            ("user_id", "text"),
            ("privilege", "text"),
            ("data", "jsonb"),
            ("created", "bigint"),
            ("last_seen", "bigint"),
            ("idle_deadline", "bigint"),
            ("absolute_deadline", "bigint"),
            ("expires_at", "bigint"),
            ("device", "text"),
            ("network", "text"),
        ],
    ),
    (
        "session_trail_claims",
        &[
            ("sid", "bytea"),
            ("kind", "smallint"),
            ("user_id", "text"),
            ("until", "bigint"),
        ],
    ),
    (
        "session_trail_history",
        &[
            ("sid", "bytea"),
            ("session", "text"),
            ("seq", "bigint"),
            ("ts", "timestamp with time zone"),
            ("kind", "text"),
            ("name", "text"),
            ("method", "text"),
            ("status", "smallint"),
            ("user_pseudonym", "text"),
            ("attrs", "jsonb"),
            ("entry", "bytea"),
        ],
    ),
    (
        "session_trail_history_heads",
        &[
            ("sid", "bytea"),
            ("head", "bytea"),
            ("last_seq", "bigint"),
            ("low_seq", "bigint"),
            ("expires_at", "bigint"),
            ("erased_until", "bigint"),
        ],
    ),
    (
        "session_trail_user_history",
        &[
            ("user_pseudonym", "text"),
            ("sid", "bytea"),
            ("linked", "bigint"),
            ("until", "bigint"),
        ],
    ),
    (
        "session_trail_checkpoints",
        &[
            ("writer", "bytea"),
            ("counter", "bigint"),
            ("at", "bigint"),
            ("body", "bytea"),
        ],
    ),
];

/// The functions the store calls.
const FUNCTIONS: &[&str] = &[
    "session_trail_append",
    "session_trail_erase",
    "session_trail_claim",
    "session_trail_expire_history",
    "session_trail_trim_history",
];

/// Migrates within `timeout`. A migration that runs out of time is
/// cancelled on the server and its connection closed (see [`InUse`]), so
/// its transaction rolls back at once instead of holding its locks (an
/// index build holds off every append to the history) until it ends.
pub(super) async fn migrate(store: &PostgresStore, timeout: Duration) -> Result<(), Error> {
    let what = "migrate";
    let client = store
        .inner
        .pool
        .get()
        .await
        .map_err(|e| store.pool_error(e, what))?;
    let mut in_use = InUse::new(client, store.inner.statement_timeout);
    let outcome = tokio::time::timeout(timeout, migrate_now(store, in_use.client_mut())).await;
    match outcome {
        Ok(result) => {
            in_use.release();
            result
        }
        Err(_) => {
            in_use.cancel();
            Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "PostgreSQL at {}: migrate: not done within {timeout:?}; cancelled (what it had \
                 not committed rolled back: migrate again to finish; \
                 PostgresStore::migrate_within gives it more time)",
                    store.inner.target
                ),
            ))
        }
    }
}

async fn migrate_now(
    store: &PostgresStore,
    client: &mut deadpool_postgres::Object,
) -> Result<(), Error> {
    let i = &store.inner;
    let what = "migrate";
    let err = |e| store.pg_error(e, what);
    let tx = client.transaction().await.map_err(err)?;
    // One migration at a time per schema, across servers; released at
    // commit or rollback.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("session_trail migrate {}", i.schema)],
    )
    .await
    .map_err(err)?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&i.schema],
        )
        .await
        .map_err(err)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {}", quote_ident(&i.schema)))
            .await
            .map_err(err)?;
    }
    tx.batch_execute(&with_schema(
        "CREATE TABLE IF NOT EXISTS {schema}.session_trail_schema (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
        &i.schema,
    ))
    .await
    .map_err(err)?;
    let current: i32 = tx
        .query_one(
            &with_schema(
                "SELECT coalesce(max(version), 0) FROM {schema}.session_trail_schema",
                &i.schema,
            ),
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(newer(store, current));
    }
    for version in current + 1..=SCHEMA_VERSION {
        for file in MIGRATIONS[(version - 1) as usize] {
            tx.batch_execute(&with_schema(file, &i.schema))
                .await
                .map_err(|e| store.pg_error(e, "migrate: applying a schema version"))?;
        }
        tx.execute(
            &with_schema(
                "INSERT INTO {schema}.session_trail_schema (version) VALUES ($1)",
                &i.schema,
            ),
            &[&version],
        )
        .await
        .map_err(err)?;
        tracing::info!(schema = %i.schema, version, "session store schema migrated");
    }
    tx.commit().await.map_err(err)
}

fn newer(store: &PostgresStore, found: i32) -> Error {
    Error::new(
        ErrorKind::Misconfigured,
        format!(
            "table {}.session_trail_schema: the schema is at version {found}, newer than \
             this build of session-trail knows ({SCHEMA_VERSION}); upgrade session-trail",
            quote_ident(&store.inner.schema)
        ),
    )
}

pub(super) async fn check(store: &PostgresStore) -> Result<(), Error> {
    let schema = &store.inner.schema;
    let table = |t: &str| format!("{}.{t}", quote_ident(schema));
    let version = store
        .query(
            &with_schema(
                "SELECT coalesce(max(version), 0)::int FROM {schema}.session_trail_schema",
                schema,
            ),
            "check the schema",
            &[],
        )
        .await;
    let version: i32 = match version {
        Ok(rows) => rows.first().map_or(0, |r| r.get(0)),
        Err(e) if e.kind() == ErrorKind::Misconfigured => {
            return Err(Error::new(
                ErrorKind::Misconfigured,
                format!(
                    "table {} does not exist: the schema was never created; call \
                     PostgresStore::migrate",
                    table("session_trail_schema")
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    if version > SCHEMA_VERSION {
        return Err(newer(store, version));
    }
    if version < SCHEMA_VERSION {
        return Err(Error::new(
            ErrorKind::Misconfigured,
            format!(
                "table {}: the schema is at version {version}, this build needs \
                 {SCHEMA_VERSION}; call PostgresStore::migrate",
                table("session_trail_schema")
            ),
        ));
    }
    let rows = store
        .query(
            "SELECT table_name::text, column_name::text, data_type::text
             FROM information_schema.columns
             WHERE table_schema = $1 AND table_name LIKE 'session\\_trail\\_%'",
            "check the schema",
            &[schema],
        )
        .await?;
    let mut found: HashMap<(String, String), String> = HashMap::new();
    for r in &rows {
        found.insert((r.get(0), r.get(1)), r.get(2));
    }
    for (t, columns) in TABLES {
        if !found.keys().any(|(ft, _)| ft == t) {
            return Err(Error::new(
                ErrorKind::Misconfigured,
                format!(
                    "table {} does not exist; call PostgresStore::migrate",
                    table(t)
                ),
            ));
        }
        for (c, ty) in *columns {
            match found.get(&((*t).to_owned(), (*c).to_owned())) {
                None => {
                    return Err(Error::new(
                        ErrorKind::Misconfigured,
                        format!("table {} has no column `{c}` ({ty})", table(t)),
                    ));
                }
                Some(actual) if actual != ty => {
                    return Err(Error::new(
                        ErrorKind::Misconfigured,
                        format!(
                            "table {}: column `{c}` is of type {actual}, the store needs {ty}",
                            table(t)
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    let rows = store
        .query(
            "SELECT p.proname::text FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = $1 AND p.proname LIKE 'session\\_trail\\_%'",
            "check the schema",
            &[schema],
        )
        .await?;
    let functions: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if let Some(missing) = FUNCTIONS
        .iter()
        .find(|f| !functions.iter().any(|g| g == *f))
    {
        return Err(Error::new(
            ErrorKind::Misconfigured,
            format!(
                "function {}.{missing} does not exist; call PostgresStore::migrate",
                quote_ident(schema)
            ),
        ));
    }
    Ok(())
}
