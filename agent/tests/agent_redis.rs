//! The agent with a Redis cache (a real `redis-server`, installed by
//! `.ci/setup-redis.sh`): the URL from the environment, the token shared
//! with `freshtoken token` once the agent has stopped.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{command, free_port, one_token, wait_for, write_file, Agent, OneToken};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_redis_cache_is_shared_with_freshtoken_token() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--requirepass")
        .arg("redis-pw-secret")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): run .ci/setup-redis.sh"));
    let _redis = Redis(redis);
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("redis-server listening");

    let OneToken {
        authority,
        config,
        socket,
    } = one_token(
        dir.path(),
        "agent.sock",
        Some(Duration::from_secs(60)),
        "[tokens.api.cache]\nredis_url_env = \"API_REDIS_URL\"\nredis_key = \"agent-test:api\"\n",
    );
    let url = format!("redis://:redis-pw-secret@127.0.0.1:{port}/");
    let env = [("API_REDIS_URL", url.as_str())];
    let mut agent = Agent::start(&config, &socket, dir.path(), &env);
    agent.wait_healthy(Duration::from_secs(10));
    let served = agent.get_json("/v1/token/api").unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
    let log = agent.log_text();
    assert!(
        !log.contains("redis-pw-secret") && !log.contains("s3cret-value"),
        "{log}"
    );

    // No agent now: the token comes from Redis, without a request.
    let out = command()
        .args(["token", "api", "--config"])
        .arg(&config)
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), served);
    assert_eq!(authority.request_count(), 1);

    // A password written into the file itself is refused (exit 2).
    let inline = write_file(
        &dir.path().join("inline.toml"),
        &std::fs::read_to_string(&config).unwrap().replace(
            "redis_url_env = \"API_REDIS_URL\"",
            &format!("redis_url = \"{url}\""),
        ),
        0o600,
    );
    let out = command()
        .args(["token", "api", "--config"])
        .arg(&inline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("redis-pw-secret"));
}
