//! Where the store connects: URL parsing, the single-node or cluster
//! connection, and the scripts.

use std::time::Duration;

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script, Value,
};

use crate::error::ConfigError;

const URL_FORMS: &str = "expected redis://host:port, rediss://host:port, \
     redis-cluster://host1:port1,host2:port2, or a comma-separated list of redis:// URLs";

/// A parsed connection target.
#[derive(Debug)]
pub(super) enum Target {
    Single(ConnectionInfo),
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(ConfigError::new("url", format!("is empty; {URL_FORMS}")));
        }
        let cluster_scheme = [
            ("redis-cluster://", "redis://"),
            ("rediss-cluster://", "rediss://"),
        ]
        .into_iter()
        .find_map(|(from, to)| url.strip_prefix(from).map(|rest| (rest, to)));
        if let Some((rest, scheme)) = cluster_scheme {
            // Credentials written once, on the first node, apply to all.
            let (userinfo, rest) = match rest.rsplit_once('@') {
                Some((u, r)) => (format!("{u}@"), r),
                None => (String::new(), rest),
            };
            let nodes = rest
                .split(',')
                .map(|node| parse_one(&format!("{scheme}{userinfo}{}", node.trim())))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Self::Cluster(nodes));
        }
        if url.contains(',') {
            let nodes = url
                .split(',')
                .map(|node| parse_one(node.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Self::Cluster(nodes));
        }
        parse_one(url).map(Self::Single)
    }

    /// The target without credentials.
    pub(super) fn describe(&self) -> String {
        fn one(info: &ConnectionInfo) -> String {
            let tls = matches!(info.addr(), ::redis::ConnectionAddr::TcpTls { .. });
            format!("{}://{}", if tls { "rediss" } else { "redis" }, info.addr())
        }
        match self {
            Self::Single(info) => one(info),
            Self::Cluster(nodes) => {
                let list: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
                format!("redis-cluster://{}", list.join(","))
            }
        }
    }
}

fn parse_one(url: &str) -> Result<ConnectionInfo, ConfigError> {
    if url.is_empty() {
        return Err(ConfigError::new(
            "url",
            format!("names an empty node; {URL_FORMS}"),
        ));
    }
    url.into_connection_info().map_err(|e| {
        let reason = if e.to_string().contains("TLS") {
            "rediss:// needs TLS support: enable a TLS feature of the `redis` crate \
             (for example `tokio-rustls-comp`) in your Cargo.toml"
                .to_owned()
        } else {
            // The error never echoes the URL, which may hold a password.
            format!("not a valid Redis URL ({e}); {URL_FORMS}")
        };
        ConfigError::new("url", reason)
    })
}

/// A connection to a single node (reconnecting) or to a cluster, or the
/// local cache's tracking connection.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Tracked(MultiplexedConnection),
}

impl Conn {
    /// Opens the connection lazily: no I/O happens here.
    pub(super) fn open(
        target: Target,
        response_timeout: Duration,
        connection_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        match target {
            Target::Single(info) => {
                let client = ::redis::Client::open(info).map_err(refused)?;
                // A reconnection is tried on the first use after a failure,
                // for as long as the store lives; each one gives up quickly
                // so that callers fail fast (503, writer backoff) while
                // Redis is down instead of queueing behind it.
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(connection_timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(200))
                    .set_pipeline_buffer_size(1024);
                let manager =
                    ConnectionManager::new_lazy_with_config(client, config).map_err(refused)?;
                Ok(Self::Single(manager))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes)
                    .response_timeout(response_timeout)
                    // Redirections (MOVED, ASK) and reconnections within one
                    // request may take a few attempts.
                    .overall_response_timeout(Some(response_timeout.saturating_mul(3)))
                    .connection_timeout(connection_timeout)
                    .retries(6)
                    .min_retry_wait(10)
                    .max_retry_wait(500)
                    .build()
                    .map_err(refused)?;
                let config = ::redis::cluster::ClusterConfig::new()
                    .set_response_timeout(response_timeout)
                    .set_connection_timeout(connection_timeout);
                Ok(Self::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

fn refused(e: RedisError) -> ConfigError {
    ConfigError::new("url", format!("refused by the Redis client: {e}"))
}

/// A client for the local cache's tracking connection to a single node:
/// the same node and credentials, speaking RESP3 (which carries the
/// invalidation pushes on the connection itself).
pub(super) fn tracking_client(target: &Target) -> Result<Option<::redis::Client>, ConfigError> {
    match target {
        Target::Single(info) => {
            let redis = info
                .redis_settings()
                .clone()
                .set_protocol(::redis::ProtocolVersion::RESP3);
            let info = info.clone().set_redis_settings(redis);
            ::redis::Client::open(info).map(Some).map_err(refused)
        }
        Target::Cluster(_) => Ok(None),
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Tracked(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Tracked(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
            Self::Tracked(c) => c.get_db(),
        }
    }
}

/// The store's Lua scripts (run by SHA1; loaded again after `NOSCRIPT`).
pub(super) struct Scripts {
    pub(super) append: Script,
    pub(super) create: Script,
    pub(super) update: Script,
    pub(super) delete: Script,
    pub(super) index: Script,
    pub(super) claim: Script,
    pub(super) erase: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            append: Script::new(include_str!("append.lua")),
            create: Script::new(include_str!("create.lua")),
            update: Script::new(include_str!("update.lua")),
            delete: Script::new(include_str!("delete.lua")),
            index: Script::new(include_str!("index.lua")),
            claim: Script::new(include_str!("claim.lua")),
            erase: Script::new(include_str!("erase.lua")),
        }
    }
}

/// An `EVALSHA` of `script` over `keys`, as one command the caller adds
/// the arguments to: each argument is written once, where a
/// `ScriptInvocation` keeps its own copy of each and copies them again into
/// the command.
pub(super) fn evalsha<K: ::redis::ToRedisArgs>(script: &Script, keys: &[K]) -> Cmd {
    let mut cmd = ::redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// Sends a command built by [`evalsha`]; after `NOSCRIPT` (a restart, a
/// failover, `SCRIPT FLUSH`) loads the script and sends it once more.
pub(super) async fn invoke<T: ::redis::FromRedisValue>(
    script: &Script,
    cmd: &Cmd,
    c: &mut Conn,
) -> Result<T, RedisError> {
    match cmd.query_async(c).await {
        Err(e) if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) => {
            script.load_async(c).await?;
            cmd.query_async(c).await
        }
        other => other,
    }
}

/// Whether a reply is a `NOSCRIPT` error.
pub(super) fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(::redis::ServerErrorKind::NoScript))
}
