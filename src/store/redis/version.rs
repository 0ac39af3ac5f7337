//! The server version check of [`RedisStoreBuilder::connect`](super::RedisStoreBuilder::connect).

/// The oldest Redis the store works with, as (major, minor): the user
/// history index uses `PEXPIREAT … NX/GT`, new in Redis 7.0.
/// [`RedisStoreBuilder::connect`](super::RedisStoreBuilder::connect)
/// refuses older servers.
pub(super) const MIN_REDIS_VERSION: (u32, u32) = (7, 0);

/// Every text in a reply to `INFO` (one per node on a cluster, where the
/// reply maps each primary's address to its answer).
pub(super) fn info_texts(v: &::redis::Value, out: &mut Vec<String>) {
    use ::redis::Value;
    match v {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| info_texts(v, out)),
        Value::Array(items) => items.iter().for_each(|v| info_texts(v, out)),
        _ => {}
    }
}

/// The server's version from the text of `INFO server`: `redis_version`,
/// or for a server that names only its own (`valkey_version`; Valkey began
/// at 7.2) that one. Refused below [`MIN_REDIS_VERSION`], with a message
/// naming the version found.
pub(super) fn server_version(info: &str) -> Result<(u32, u32), String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let (name, text) = match (field("redis_version"), field("valkey_version")) {
        (Some(v), _) => ("Redis", v),
        (None, Some(v)) => ("Valkey", v),
        (None, None) => {
            return Err(
                "the server's answer to INFO server names no `redis_version`: cannot tell \
                 whether it is Redis 7.0 or newer, which session-trail needs"
                    .to_owned(),
            );
        }
    };
    let mut parts = text.split('.').map(|p| p.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Err(format!(
            "the server reports {name} version {text:?}, which is not a version number: \
             session-trail needs Redis 7.0 or newer"
        ));
    };
    if (major, minor) < MIN_REDIS_VERSION {
        return Err(format!(
            "the server is {name} {text}: session-trail needs Redis {}.{} or newer \
             (its user history index uses PEXPIREAT NX/GT)",
            MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1
        ));
    }
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::server_version;

    fn info(version_line: &str) -> String {
        format!("# Server\r\n{version_line}\r\nredis_mode:standalone\r\nos:Linux\r\n")
    }

    #[test]
    fn redis_older_than_7_is_refused() {
        let err = server_version(&info("redis_version:6.2.14")).unwrap_err();
        assert!(err.contains("6.2.14"), "{err}");
        assert!(err.contains("7.0 or newer"), "{err}");
        assert!(server_version(&info("redis_version:5.0.7")).is_err());
        assert_eq!(server_version(&info("redis_version:7.0.15")), Ok((7, 0)));
        assert_eq!(server_version(&info("redis_version:7.2.4")), Ok((7, 2)));
        assert_eq!(server_version(&info("redis_version:8.0.0")), Ok((8, 0)));
        // Valkey reports a Redis-compatible version, and its own.
        let valkey =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.0\r\n";
        assert_eq!(server_version(valkey), Ok((7, 2)));
        assert_eq!(server_version("valkey_version:8.0.1\r\n"), Ok((8, 0)));
    }

    #[test]
    fn an_unreadable_version_is_a_clear_error() {
        let err = server_version("garbage").unwrap_err();
        assert!(err.contains("redis_version"), "{err}");
        let err = server_version(&info("redis_version:seven")).unwrap_err();
        assert!(err.contains("\"seven\""), "{err}");
        assert!(server_version(&info("redis_version:7")).is_err());
    }
}
