//! Analytics on Redis: every history list is streamed through the query
//! (see [`crate::analytics`]). The lists are found with `SCAN` (on every
//! primary of a cluster) and read with `LRANGE`, many at a time.

use std::collections::HashSet;

use ::redis::Value;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use futures_util::stream::{self, StreamExt};

use super::RedisStore;
use super::conn::Conn;
use crate::analytics::Stream;
use crate::error::{Error, ErrorKind};

/// Keys asked of each `SCAN` call.
const SCAN_COUNT: usize = 1000;
/// Lists read at once.
const READS_IN_FLIGHT: usize = 64;

impl RedisStore {
    /// The pattern that matches exactly the history lists of this prefix.
    fn history_pattern(&self) -> String {
        let mut p = String::with_capacity(self.inner.prefix.len() + 40);
        for c in self.inner.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push_str(":{");
        p.push_str(&"?".repeat(32));
        p.push_str("}:h");
        p
    }

    /// Streams every stored history through `s`, each list once (`SCAN`
    /// may name a key twice), as it arrives. A key of the history pattern
    /// that holds no list is not this store's: it is skipped, with a
    /// warning.
    async fn scan_history(&self, s: &mut Stream<'_>) -> Result<(), Error> {
        let pattern = self.history_pattern();
        let nodes = match &self.inner.conn {
            Conn::Cluster(_) => self.primaries().await?.into_iter().map(Some).collect(),
            _ => vec![None],
        };
        let mut foreign = 0u64;
        for node in nodes {
            // The sessions of this node read so far, by id (the nodes'
            // keys are apart: a set per node).
            let mut seen: HashSet<[u8; 16]> = HashSet::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, keys) = self.scan_page(node.as_ref(), cursor, &pattern).await?;
                let mut fresh = Vec::with_capacity(keys.len());
                for key in keys {
                    match self.session_of_key(&key) {
                        Some(sid) if seen.insert(sid) => fresh.push(key),
                        Some(_) => {}
                        None => foreign += 1,
                    }
                }
                let mut lists = stream::iter(fresh)
                    .map(|key| {
                        let mut c = self.inner.conn.clone();
                        async move {
                            ::redis::cmd("LRANGE")
                                .arg(key)
                                .arg(0)
                                .arg(-1)
                                .query_async::<Vec<Vec<u8>>>(&mut c)
                                .await
                        }
                    })
                    .buffered(READS_IN_FLIGHT);
                while let Some(list) = lists.next().await {
                    match list {
                        Ok(items) => s.session(&items),
                        Err(e) if e.code() == Some("WRONGTYPE") => foreign += 1,
                        Err(e) => return Err(self.unavailable(e, "LRANGE")),
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        if foreign > 0 {
            tracing::warn!(
                prefix = %self.inner.prefix,
                keys = foreign,
                "analytics skipped keys named like history lists that hold no list"
            );
        }
        Ok(())
    }

    /// The session id in a history list's key (`<prefix>:{<32 hex>}:h`);
    /// `None` for a key the pattern matched that is not one (the
    /// pattern's `?` matches any byte).
    fn session_of_key(&self, key: &[u8]) -> Option<[u8; 16]> {
        let hex = key.get(self.inner.prefix.len() + 2..self.inner.prefix.len() + 34)?;
        crate::util::unhex(std::str::from_utf8(hex).ok()?)
    }

    /// One `SCAN` call: on `node` (a cluster's primary) or the server.
    async fn scan_page(
        &self,
        node: Option<&(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>), Error> {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let mut c = self.inner.conn.clone();
        let answer: Value = match (&mut c, node) {
            (Conn::Cluster(cc), Some((host, port))) => cc
                .route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                )
                .await
                .map_err(|e| self.unavailable(e, "SCAN"))?,
            _ => cmd
                .query_async(&mut c)
                .await
                .map_err(|e| self.unavailable(e, "SCAN"))?,
        };
        ::redis::from_redis_value(answer).map_err(|e| self.unavailable(e.into(), "SCAN"))
    }

    /// The cluster's primaries, as `(host, port)`; an error unless they
    /// serve every slot (a query that skipped a shard would answer too
    /// little, silently).
    async fn primaries(&self) -> Result<Vec<(String, u16)>, Error> {
        let mut c = self.inner.conn.clone();
        let text: String = ::redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await
            .map_err(|e| self.unavailable(e, "CLUSTER NODES"))?;
        let (nodes, served) = primaries_of(&text);
        if served < SLOTS {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "Redis Cluster at {}: analytics: the reachable primaries serve {served} of \
                     {SLOTS} slots; a query now would miss histories",
                    self.inner.target
                ),
            ));
        }
        Ok(nodes)
    }
}

/// The slots of a Redis Cluster.
const SLOTS: u32 = 16_384;

/// The primaries in a `CLUSTER NODES` answer that can be asked (not
/// failed, with an address, past the handshake; a primary only suspected
/// of failing, `fail?`, is asked), and how many slots they serve.
fn primaries_of(text: &str) -> (Vec<(String, u16)>, u32) {
    let mut out = Vec::new();
    let mut served = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (f.get(1), f.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
        {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let (Ok(port), false) = (port.parse(), host.is_empty()) else {
            continue;
        };
        out.push((host.to_owned(), port));
        // Slots from the ninth field on: `a-b` or `a`; `[…]` marks a slot
        // being imported or migrated, which its owner still serves.
        for range in f.iter().skip(8).filter(|r| !r.starts_with('[')) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>())
                && b >= a
            {
                served += b - a + 1;
            }
        }
    }
    (out, served)
}

crate::analytics::streamed_analytics!(RedisStore);

#[cfg(test)]
mod tests {
    use super::primaries_of;

    #[test]
    fn cluster_nodes_primaries_and_their_slots() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b]
b 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e ::1:7004@17004 master,fail? - 0 0 4 connected 10923-16382 16383
";
        let (nodes, served) = primaries_of(text);
        assert_eq!(
            nodes,
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("::1".to_owned(), 7004)
            ]
        );
        assert_eq!(served, 16_384);
        // Without the suspected node, a third of the slots is missing.
        let (_, served) = primaries_of(&text.replace("master,fail?", "master,fail"));
        assert_eq!(served, 16_384 - 5_461);
    }
}
