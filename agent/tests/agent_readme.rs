//! The README's agent configuration (agent/examples/agent.toml, shown
//! verbatim in the README) run as it is against the local authority: only
//! the token endpoint and the TCP port come from the environment, as the
//! README says any setting may. That the README shows this very file is
//! checked by tests/tests/readme_agent_config.rs, outside this package: the
//! repository's README is not part of the published package.

mod support;

use std::time::Duration;

use freshtoken::testing::LocalAuthority;
use support::{command, free_port, wait_for, write_file, Agent};

const EXAMPLE: &str = include_str!("../examples/agent.toml");

#[test]
fn the_readme_config_runs() {
    let authority = LocalAuthority::builder()
        .client("orders-service", "readme-s3cret")
        .token_lifetime(Duration::from_secs(60))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(&dir.path().join("agent.toml"), EXAMPLE, 0o600);
    write_file(
        &dir.path().join("secrets/api.secret"),
        "readme-s3cret\n",
        0o600,
    );
    let port = free_port().to_string();
    let url = authority.token_url();
    let env = [
        ("FRESHTOKEN_TOKENS_API_TOKEN_URL", url.as_str()),
        ("FRESHTOKEN_AGENT_LISTEN", &format!("127.0.0.1:{port}")),
    ];
    let socket = dir.path().join("run/agent.sock");
    let mut agent = Agent::start(&config, &socket, dir.path(), &env);
    agent.wait_healthy(Duration::from_secs(10));

    // The header-format token file.
    let line = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(dir.path().join("run/api.token")).ok()
    })
    .unwrap();
    let token = line
        .strip_prefix("Authorization: Bearer ")
        .and_then(|t| t.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("not a header line: {line:?}"));
    let info = authority.validate_access_token(token).unwrap();
    assert_eq!(info.client_id, "orders-service");
    assert_eq!(
        authority.requests()[0].scope.as_deref(),
        Some("orders.read")
    );

    // `freshtoken token api --config agent.toml` and `exec` with $API_TOKEN.
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
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), token);
    let out = command()
        .args(["exec", "api", "--config"])
        .arg(&config)
        .envs(env)
        .args(["--", "sh", "-c", "printf %s \"$API_TOKEN\""])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), token);

    // The loopback port serves /healthz and /metrics, not tokens.
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let status = |answer: &str| {
        answer
            .lines()
            .next()
            .unwrap_or("")
            .split(' ')
            .nth(1)
            .map(str::to_owned)
    };
    assert_eq!(status(&get("/healthz")).as_deref(), Some("200"));
    let metrics = get("/metrics");
    assert!(
        metrics.contains("freshtoken_agent_token_valid{token=\"api\"} 1"),
        "{metrics}"
    );
    for (name, _) in freshtoken_agent::metrics::SERIES {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "no HELP for {name}: {metrics}"
        );
    }
    assert_eq!(status(&get("/v1/token/api")).as_deref(), Some("404"));
    assert!(!metrics.contains(token));

    // The cache holds it for `freshtoken token` when no agent runs.
    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
    let out = command()
        .args(["token", "api", "--config"])
        .arg(&config)
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), token);
    assert_eq!(authority.request_count(), 1);
}
