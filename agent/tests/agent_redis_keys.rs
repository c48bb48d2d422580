//! The agent's default Redis key is bound to what the token is for: two
//! configurations that share a real `redis-server` and a token name but
//! not a client (or a scope) never serve each other's token, while one
//! configuration still shares its token across processes.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use freshtoken::testing::LocalAuthority;
use support::{cc_token, command, free_port, wait_for, write_file};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> (Redis, u16) {
    let port = free_port();
    let redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): run .ci/setup-redis.sh"));
    let redis = Redis(redis);
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("redis-server listening");
    (redis, port)
}

/// `freshtoken token api` with `config`: the token printed.
fn token(config: &Path, redis_url: &str) -> String {
    let out = command()
        .args(["token", "api", "--config"])
        .arg(config)
        .env("API_REDIS_URL", redis_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn agents_with_other_clients_or_scopes_on_one_redis_never_share_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = start_redis(dir.path());
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let authority = LocalAuthority::builder()
        .client("team-a", "secret-a")
        .client("team-b", "secret-b")
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .unwrap();
    let url = authority.token_url();
    let cache = "[tokens.api.cache]\nredis_url_env = \"API_REDIS_URL\"\n";
    let config = |file: &str, client: &str, scope: &str| {
        let secret = write_file(
            &dir.path().join(format!("{file}.secret")),
            &format!("secret-{}", &client[5..]),
            0o600,
        );
        write_file(
            &dir.path().join(format!("{file}.toml")),
            &cc_token(
                "api",
                &url,
                client,
                &secret,
                &format!("scope = \"{scope}\"\n{cache}"),
            ),
            0o600,
        )
    };
    let team_a = config("a", "team-a", "read");
    let team_b = config("b", "team-b", "read");
    let team_a_write = config("a-write", "team-a", "write");

    let a = token(&team_a, &redis_url);
    assert_eq!(
        authority.validate_access_token(&a).unwrap().client_id,
        "team-a"
    );
    assert_eq!(authority.request_count(), 1);

    // Team B, same token name, same Redis: its own token, not team A's.
    let b = token(&team_b, &redis_url);
    assert_ne!(b, a, "team B was served team A's token");
    assert_eq!(
        authority.validate_access_token(&b).unwrap().client_id,
        "team-b"
    );
    assert_eq!(authority.request_count(), 2);

    // Team A with another scope: a token with that scope, not the old one.
    let w = token(&team_a_write, &redis_url);
    assert_ne!(w, a, "the token of the old scope was served");
    let info = authority.validate_access_token(&w).unwrap();
    assert_eq!(info.scope.as_deref(), Some("write"));
    assert_eq!(authority.request_count(), 3);

    // One configuration still shares its token through Redis: no request.
    assert_eq!(token(&team_a, &redis_url), a);
    assert_eq!(token(&team_b, &redis_url), b);
    assert_eq!(authority.request_count(), 3);
}

#[test]
fn agents_sharing_a_hand_made_redis_key_never_adopt_each_others_token() {
    // `redis_key` set by hand to one key for two clients and two scopes:
    // the name no longer tells them apart, the records still do.
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = start_redis(dir.path());
    let redis_url = format!("redis://127.0.0.1:{port}/");
    let authority = LocalAuthority::builder()
        .client("team-a", "secret-a")
        .client("team-b", "secret-b")
        .token_lifetime(Duration::from_secs(3600))
        .start()
        .unwrap();
    let url = authority.token_url();
    let cache =
        "[tokens.api.cache]\nredis_url_env = \"API_REDIS_URL\"\nredis_key = \"shared:api\"\n";
    let config = |file: &str, client: &str, scope: &str| {
        let secret = write_file(
            &dir.path().join(format!("{file}.secret")),
            &format!("secret-{}", &client[5..]),
            0o600,
        );
        write_file(
            &dir.path().join(format!("{file}.toml")),
            &cc_token(
                "api",
                &url,
                client,
                &secret,
                &format!("scope = \"{scope}\"\n{cache}"),
            ),
            0o600,
        )
    };
    let team_a = config("a", "team-a", "read");
    let team_b = config("b", "team-b", "read");
    let team_a_write = config("a-write", "team-a", "write");

    let a = token(&team_a, &redis_url);
    // The same configuration shares its token through the key.
    assert_eq!(token(&team_a, &redis_url), a);
    assert_eq!(authority.request_count(), 1);

    let b = token(&team_b, &redis_url);
    assert_ne!(b, a, "team B was served team A's token");
    assert_eq!(
        authority.validate_access_token(&b).unwrap().client_id,
        "team-b"
    );
    let w = token(&team_a_write, &redis_url);
    let info = authority.validate_access_token(&w).unwrap();
    assert_eq!(
        info.scope.as_deref(),
        Some("write"),
        "the read token was served"
    );
    assert_eq!(authority.request_count(), 3);

    // One key, so the entry holds the last writer's token: team A reads
    // fetch again instead of serving the write token.
    let a2 = token(&team_a, &redis_url);
    assert_eq!(
        authority
            .validate_access_token(&a2)
            .unwrap()
            .scope
            .as_deref(),
        Some("read")
    );
    assert_eq!(authority.request_count(), 4);
}
