//! Analytics on Redis: every history list is streamed through the query
//! (see [`crate::analytics`]). The lists are found with `SCAN` (on every
//! primary of a cluster) and read with `LRANGE`, many at a time.

use ::redis::Value;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use super::RedisStore;
use super::conn::Conn;
use crate::analytics::Stream;
use crate::error::Error;

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

    /// Streams every stored history through `s`.
    async fn scan_history(&self, s: &mut Stream<'_>) -> Result<(), Error> {
        let pattern = self.history_pattern();
        let nodes = match &self.inner.conn {
            Conn::Cluster(_) => self.primaries().await?,
            _ => vec![None],
        };
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = ::redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let mut c = self.inner.conn.clone();
                let answer: Value = match (&mut c, &node) {
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
                let (next, keys): (u64, Vec<String>) = ::redis::from_redis_value(answer)
                    .map_err(|e| self.unavailable(e.into(), "SCAN"))?;
                let lists: Vec<Result<Vec<Bytes>, Error>> = stream::iter(keys)
                    .map(|key| {
                        let mut c = self.inner.conn.clone();
                        async move {
                            let items: Vec<Vec<u8>> = ::redis::cmd("LRANGE")
                                .arg(key)
                                .arg(0)
                                .arg(-1)
                                .query_async(&mut c)
                                .await
                                .map_err(|e| self.unavailable(e, "LRANGE"))?;
                            Ok(items.into_iter().map(Bytes::from).collect())
                        }
                    })
                    .buffered(READS_IN_FLIGHT)
                    .collect()
                    .await;
                for list in lists {
                    s.session(&list?);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// The cluster's primaries that answer, as `(host, port)`.
    async fn primaries(&self) -> Result<Vec<Option<(String, u16)>>, Error> {
        let mut c = self.inner.conn.clone();
        let text: String = ::redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await
            .map_err(|e| self.unavailable(e, "CLUSTER NODES"))?;
        Ok(primaries_of(&text).into_iter().map(Some).collect())
    }
}

/// The primaries in a `CLUSTER NODES` answer that are neither failing nor
/// without an address.
fn primaries_of(text: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (f.get(1), f.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "fail?" | "noaddr" | "handshake"))
        {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = addr.rsplit_once(':')
            && let Ok(port) = port.parse()
            && !host.is_empty()
        {
            out.push((host.to_owned(), port));
        }
    }
    out
}

crate::analytics::streamed_analytics!(RedisStore);

#[cfg(test)]
mod tests {
    use super::primaries_of;

    #[test]
    fn cluster_nodes_primaries() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e ::1:7004@17004 master - 0 0 4 connected
";
        assert_eq!(
            primaries_of(text),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("::1".to_owned(), 7004)
            ]
        );
    }
}
