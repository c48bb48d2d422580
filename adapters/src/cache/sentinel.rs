//! Which server is the primary, by the Sentinels' word: the choice that
//! [`RedisCache::sentinel`](super::RedisCache::sentinel) and its async
//! twin make at each connection, kept apart from their I/O.
//!
//! # Why every Sentinel is asked
//!
//! After a failover only the Sentinel that led it knows the new primary at
//! first; the others learn it from its hello messages, up to about two
//! seconds later. Meanwhile they still name the old primary. If that old
//! primary comes back in this window (restarted by its supervisor), it
//! answers `ROLE` as a primary, with an empty dataset, until the Sentinels
//! turn it into a replica, which they do only some 10 s later. A client
//! that takes the first Sentinel's answer (what the redis crate's
//! `SentinelClient` does) can connect to it and stay: it reads no token,
//! and no lease or rotated refresh token it writes there is ever
//! acknowledged by a replica. Seen in a fleet of eight processes: every
//! one of them went 7 s without a token.
//!
//! So every Sentinel is asked for its view (`SENTINEL MASTER`), and the
//! primary of the newest configuration wins: the highest `config-epoch`,
//! which every failover raises. A tie (Sentinels that agree, or a
//! misconfigured set that monitors two groups under one name) goes to the
//! address most of them name, then to the one named first. The primary
//! chosen must still answer `ROLE` as one.

use std::collections::HashMap;

use redis::Value;

/// What one Sentinel said of the service's primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Named {
    pub(super) host: String,
    pub(super) port: u16,
    /// The configuration epoch of the Sentinel's view (raised by every
    /// failover).
    pub(super) epoch: u64,
}

/// `SENTINEL MASTER <service>`: the Sentinel's view of the primary.
pub(super) fn master_cmd(service: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("MASTER").arg(service);
    cmd
}

/// Reads a `SENTINEL MASTER` answer: field/value pairs, a flat array
/// under RESP2 and a map under RESP3. `None` for an answer without a
/// usable address (the caller moves on to the next Sentinel).
pub(super) fn parse_master(answer: &Value) -> Option<Named> {
    let text = |v: &Value| match v {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let pairs: Vec<(String, String)> = match answer {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|p| Some((text(&p[0])?, text(&p[1])?)))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => return None,
    };
    let fields: HashMap<String, String> = pairs.into_iter().collect();
    let host = fields.get("ip")?.clone();
    if host.is_empty() {
        return None;
    }
    Some(Named {
        host,
        port: fields.get("port")?.parse().ok()?,
        epoch: fields
            .get("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
    })
}

/// The primary of the newest view: the highest epoch, then the address
/// most Sentinels name, then the first named.
pub(super) fn choose(named: &[Named]) -> Option<(String, u16)> {
    let newest = named.iter().map(|n| n.epoch).max()?;
    let mut best: Option<(&Named, usize)> = None;
    for candidate in named.iter().filter(|n| n.epoch == newest) {
        let votes = named
            .iter()
            .filter(|n| n.epoch == newest && n.host == candidate.host && n.port == candidate.port)
            .count();
        if best.is_none_or(|(_, most)| votes > most) {
            best = Some((candidate, votes));
        }
    }
    best.map(|(n, _)| (n.host.clone(), n.port))
}

/// The primary's URL (an IPv6 address in brackets).
pub(super) fn primary_url(host: &str, port: u16, tls: bool) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    if host.contains(':') {
        format!("{scheme}://[{host}]:{port}/")
    } else {
        format!("{scheme}://{host}:{port}/")
    }
}

/// Whether a `ROLE` answer says "master".
pub(super) fn is_primary(role: &Value) -> bool {
    match role {
        Value::Array(items) => items.first().is_some_and(|first| {
            redis::from_redis_value_ref::<String>(first).is_ok_and(|r| r == "master")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn answer(ip: &str, port: u16, epoch: u64) -> Value {
        Value::Array(
            [
                ("name", "freshtoken".to_owned()),
                ("ip", ip.to_owned()),
                ("port", port.to_string()),
                ("flags", "master".to_owned()),
                ("config-epoch", epoch.to_string()),
                ("num-slaves", "2".to_owned()),
            ]
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect(),
        )
    }

    fn named(ip: &str, port: u16, epoch: u64) -> Named {
        Named {
            host: ip.to_owned(),
            port,
            epoch,
        }
    }

    #[test]
    fn reads_a_resp2_and_a_resp3_answer() {
        assert_eq!(
            parse_master(&answer("127.0.0.1", 6380, 3)),
            Some(named("127.0.0.1", 6380, 3))
        );
        let map = Value::Map(vec![
            (bulk("ip"), bulk("::1")),
            (bulk("port"), bulk("6379")),
            (bulk("config-epoch"), Value::Int(7)),
        ]);
        assert_eq!(parse_master(&map), Some(named("::1", 6379, 7)));
    }

    #[test]
    fn a_hostile_answer_names_nothing() {
        for bad in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![bulk("ip")]),
            Value::Array(vec![bulk("ip"), bulk(""), bulk("port"), bulk("1")]),
            Value::Array(vec![bulk("ip"), bulk("h"), bulk("port"), bulk("99999")]),
            Value::Array(vec![bulk("port"), bulk("6379")]),
        ] {
            assert_eq!(parse_master(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_newest_epoch_wins_over_a_stale_majority() {
        // Right after a failover: the leader names the new primary (epoch
        // 1); the two others still name the old one (epoch 0), which may
        // be back as an empty primary.
        let views = [
            named("127.0.0.1", 1000, 0),
            named("127.0.0.1", 2000, 1),
            named("127.0.0.1", 1000, 0),
        ];
        assert_eq!(choose(&views), Some(("127.0.0.1".to_owned(), 2000)));
    }

    #[test]
    fn a_tie_goes_to_the_most_named_then_the_first() {
        let views = [
            named("a", 1, 4),
            named("b", 2, 4),
            named("b", 2, 4),
            named("c", 3, 2),
        ];
        assert_eq!(choose(&views), Some(("b".to_owned(), 2)));
        assert_eq!(
            choose(&[named("a", 1, 0), named("b", 2, 0)]),
            Some(("a".to_owned(), 1))
        );
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn urls_and_roles() {
        assert_eq!(primary_url("::1", 6379, false), "redis://[::1]:6379/");
        assert_eq!(primary_url("h", 1, true), "rediss://h:1/");
        assert!(is_primary(&Value::Array(vec![
            bulk("master"),
            Value::Int(0)
        ])));
        assert!(!is_primary(&Value::Array(vec![bulk("slave")])));
        assert!(!is_primary(&Value::Nil));
    }
}
