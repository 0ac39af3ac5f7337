//! The store's SQL, from the files beside this one, with the configured
//! schema put in.

/// Every statement, with the schema (quoted) in place of `{schema}`.
pub(super) struct Statements {
    pub(super) load: String,
    pub(super) create: String,
    pub(super) create_linked: String,
    pub(super) update: String,
    pub(super) update_user: String,
    pub(super) delete: String,
    pub(super) sessions_of_user: String,
    pub(super) claim: String,
    pub(super) release: String,
    pub(super) append: String,
    pub(super) read_newest: String,
    pub(super) erase: String,
    pub(super) link_user: String,
    pub(super) user_sessions: String,
    pub(super) unlink: String,
    pub(super) expire_sessions: String,
    pub(super) expire_claims: String,
    pub(super) expire_links: String,
    pub(super) expire_history: String,
    pub(super) trim_history: String,
    pub(super) put_checkpoint: String,
    pub(super) checkpoints: String,
    pub(super) erased_at: String,
}

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
pub(super) const MIGRATIONS: &[&[&str]] = &[
    &[
        include_str!("sql/v1.sql"),
        include_str!("sql/v1_functions.sql"),
    ],
    &[include_str!("sql/v2.sql")],
    &[include_str!("sql/v3.sql")],
];

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let s = |text: &str| with_schema(text, schema);
        Self {
            load: s(include_str!("sql/load.sql")),
            create: s(include_str!("sql/create.sql")),
            create_linked: s(include_str!("sql/create_linked.sql")),
            update: s(include_str!("sql/update.sql")),
            update_user: s(&include_str!("sql/update_user.sql")
                .replace("{update}", include_str!("sql/update.sql").trim_end())),
            delete: s(include_str!("sql/delete.sql")),
            sessions_of_user: s(include_str!("sql/sessions_of_user.sql")),
            claim: s(include_str!("sql/claim.sql")),
            release: s(include_str!("sql/release.sql")),
            append: s(include_str!("sql/append.sql")),
            read_newest: s(include_str!("sql/read_newest.sql")),
            erase: s(include_str!("sql/erase.sql")),
            link_user: s(include_str!("sql/link_user.sql")),
            user_sessions: s(include_str!("sql/user_sessions.sql")),
            unlink: s(include_str!("sql/unlink.sql")),
            expire_sessions: s(include_str!("sql/expire_sessions.sql")),
            expire_claims: s(include_str!("sql/expire_claims.sql")),
            expire_links: s(include_str!("sql/expire_links.sql")),
            expire_history: s(include_str!("sql/expire_history.sql")),
            trim_history: s(include_str!("sql/trim_history.sql")),
            put_checkpoint: s(include_str!("sql/put_checkpoint.sql")),
            checkpoints: s(include_str!("sql/checkpoints.sql")),
            erased_at: s(include_str!("sql/erased_at.sql")),
        }
    }
}

/// `text` with `{schema}` replaced by the quoted schema name.
pub(super) fn with_schema(text: &str, schema: &str) -> String {
    text.replace("{schema}", &quote_ident(schema))
}

/// A double-quoted SQL identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
