//! `freshtoken token` and `freshtoken exec` as real processes.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{cc_token, command, one_token, output_within, write_file, Agent, OneToken};

/// 8 `freshtoken token` processes started at once with no agent and a
/// cold shared file cache: one authority request, and all print that token.
#[test]
fn eight_processes_with_a_cold_cache_make_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority, config, ..
    } = one_token(
        dir.path(),
        "no-agent.sock",
        Some(Duration::from_secs(60)),
        &format!(
            "[tokens.api.cache]\nfile = \"{}\"\n",
            dir.path().join("cache/api.json").display()
        ),
    );
    let children: Vec<_> = (0..8)
        .map(|_| {
            command()
                .args(["token", "api", "--config"])
                .arg(&config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut printed = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", out.status);
        assert!(!stderr.contains("s3cret-value"));
        printed.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    let requests = authority.request_count();
    eprintln!("8 processes, cold cache: {requests} authority request(s)");
    assert_eq!(requests, 1, "{:?}", authority.requests());
    assert!(
        printed.iter().all(|t| t == &printed[0]),
        "different tokens printed"
    );
    assert!(authority.validate_access_token(&printed[0]).is_ok());

    // A warm cache: no request at all.
    let out = command()
        .args(["token", "api", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), printed[0]);
    assert_eq!(authority.request_count(), 1);

    // An unknown name: exit code 3.
    let out = command()
        .args(["token", "nope", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

/// With an agent running, `token` and `exec` ask its socket (no request
/// of their own), and `status` shows the token without its secret.
#[test]
fn token_exec_and_status_ask_the_running_agent() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority,
        config,
        socket,
    } = one_token(
        dir.path(),
        "agent.sock",
        Some(Duration::from_secs(60)),
        "env_var = \"API_TOKEN\"\n",
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    let served = agent.get_json("/v1/token/api").unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // `token` with only the socket (no configuration).
    let out = command()
        .args(["token", "api", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), served);

    // `exec` puts it in the configured variable.
    let out = command()
        .args(["exec", "api", "--config"])
        .arg(&config)
        .args(["--", "sh", "-c", "printf %s \"$API_TOKEN\""])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), served);
    // A command that does not exist: 127.
    let out = command()
        .args(["exec", "api", "--socket"])
        .arg(&socket)
        .args(["--", "/nonexistent/command"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(authority.request_count(), 1, "only the agent asked");

    // `status`, as a table and as JSON, never with the token.
    let out = command()
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("api"), "{table}");
    assert!(
        table.contains("healthy") && table.contains("fresh"),
        "{table}"
    );
    assert!(!table.contains(&served));
    let out = command()
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tokens"][0]["state"], "healthy");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&served));

    // Completions and help work.
    let out = command().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("freshtoken"));
    let out = command().args(["token", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--timeout"));
    // `agent --help` lists the configuration keys and their variables.
    let out = command().args(["agent", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for key in [
        "tcp_serves_tokens",
        "client_secret_env",
        "cache.redis_url_env",
        "FRESHTOKEN_TOKENS_NAME_FILE_MODE",
    ] {
        assert!(help.contains(key), "{key} not in agent --help: {help}");
    }

    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
    // No agent any more, and no configuration: `status` fails with 1 and
    // says how to name the agent's socket.
    let out = command()
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
}

/// No agent and an authority that does not answer: `token` shows one
/// status line after a second, then fails with code 1 and the reason,
/// never the secret.
#[test]
fn token_waits_with_a_status_line_then_fails_with_1() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(&dir.path().join("svc.secret"), "s3cret-value", 0o600);
    // Port 9 (discard) on loopback: nothing listens there.
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\n\n{}",
            dir.path().join("no-agent.sock").display(),
            cc_token("api", "http://127.0.0.1:9/token", "svc", &secret, "")
        ),
        0o600,
    );
    let out = command()
        .args(["token", "api", "--timeout", "2.5", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    let waiting: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("waiting for a token for api"))
        .collect();
    assert_eq!(
        waiting.len(),
        1,
        "one status line (not a terminal): {stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("freshtoken: no valid token for api")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-value"));
}

/// `status --watch` redraws the table in place until interrupted.
#[test]
fn status_watch_redraws() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority: _authority,
        config,
        socket,
    } = one_token(dir.path(), "agent.sock", None, "");
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    let mut watch = command()
        .args(["status", "--watch", "--interval", "0.2", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_000));
    watch.kill().unwrap();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("\x1b[H\x1b[2J").count();
    assert!(frames >= 2, "{frames} frames: {text:?}");
    assert!(text.matches("NAME").count() == frames && text.contains("healthy"));
    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// The secrets and connection strings the configuration reads from the
/// environment never reach the command `exec` runs: neither those its
/// `*_env` keys name, nor the `FRESHTOKEN_TOKENS_*` secret variables, with
/// a configuration or with only the socket. The token does, and so does
/// everything else.
#[test]
fn exec_never_hands_the_child_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let authority = freshtoken::testing::LocalAuthority::builder()
        .client("svc", "api-s3cret-value")
        .client("other", "other-s3cret-value")
        .public_client("cli")
        .start()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let url = authority.token_url();
    let api = format!(
        "[tokens.api]\ntoken_url = \"{url}\"\nclient_id = \"svc\"\nclient_secret_env = \"API_SECRET\"\n"
    );
    let head = format!("[agent]\nsocket = \"{}\"\n\n", socket.display());
    let agent_config = write_file(
        &dir.path().join("agent.toml"),
        &format!("{head}{api}"),
        0o600,
    );
    let mut agent = Agent::start(
        &agent_config,
        &socket,
        dir.path(),
        &[("API_SECRET", "api-s3cret-value")],
    );
    agent.wait_healthy(Duration::from_secs(10));
    let served = agent.get_json("/v1/token/api").unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // A configuration that reads a secret or a connection string from
    // every place it can.
    let full = write_file(
        &dir.path().join("full.toml"),
        &format!(
            "{head}{api}\n[tokens.cli]\ngrant = \"refresh_token\"\ntoken_url = \"{url}\"\n\
             client_id = \"cli\"\nrefresh_token_env = \"CLI_REFRESH\"\n\
             [tokens.cli.cache]\nredis_url_env = \"CLI_REDIS\"\n"
        ),
        0o600,
    );
    let secrets = [
        ("API_SECRET", "api-s3cret-value"),
        ("CLI_REFRESH", "cli-refresh-s3cret"),
        ("CLI_REDIS", "redis://:redis-s3cret@127.0.0.1:1/"),
        (
            "FRESHTOKEN_TOKENS_OTHER_CLIENT_SECRET",
            "other-s3cret-value",
        ),
    ];
    let env = |cmd: &mut std::process::Command| {
        cmd.envs(secrets)
            .env("FRESHTOKEN_TOKEN_NAMES", "other")
            .env("FRESHTOKEN_TOKENS_OTHER_TOKEN_URL", &url)
            .env("FRESHTOKEN_TOKENS_OTHER_CLIENT_ID", "other")
            .env("UNRELATED", "kept");
    };
    let mut cmd = command();
    cmd.args(["exec", "api", "--config"])
        .arg(&full)
        .args(["--", "env"]);
    env(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let child_env = String::from_utf8(out.stdout).unwrap();
    assert!(
        child_env
            .lines()
            .any(|l| l == format!("ACCESS_TOKEN={served}")),
        "no token: {stderr}"
    );
    assert!(child_env.lines().any(|l| l == "UNRELATED=kept"));
    for (name, value) in secrets {
        assert!(
            !child_env.contains(value),
            "{name} reached the child (with --config)"
        );
    }

    // Only the socket: the FRESHTOKEN_ secret variables, and the variables
    // that FRESHTOKEN_TOKENS_*_ENV variables name, are removed all the same.
    let named = [
        ("FRESHTOKEN_TOKENS_X_CLIENT_SECRET", "x-s3cret"),
        ("FRESHTOKEN_TOKENS_X_REFRESH_TOKEN", "x-refresh-s3cret"),
        (
            "FRESHTOKEN_TOKENS_X_CACHE_REDIS_URL",
            "redis://x-conn-s3cret@127.0.0.1/",
        ),
        ("FRESHTOKEN_TOKENS_Y_CLIENT_SECRET_ENV", "Y_SECRET"),
        ("Y_SECRET", "y-s3cret"),
        ("FRESHTOKEN_TOKENS_Y_CACHE_REDIS_URL_ENV", "Y_REDIS"),
        ("Y_REDIS", "redis://:y-redis-s3cret@127.0.0.1/"),
    ];
    let out = command()
        .args(["exec", "api", "--socket"])
        .arg(&socket)
        .envs(named)
        .args(["--", "env"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let child_env = String::from_utf8(out.stdout).unwrap();
    assert!(child_env.contains(&served), "no token: {stderr}");
    for (name, value) in named {
        if value.contains("s3cret") {
            assert!(
                !child_env.contains(value),
                "{name} reached the child (socket only)"
            );
        }
    }
    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// A wrong secret is a permanent error: `token` says so and exits 1 at
/// once instead of waiting out its `--timeout` (600 s here; the test waits
/// at most 120 s).
#[test]
fn token_fails_at_once_on_a_permanent_error() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority, config, ..
    } = one_token(dir.path(), "no-agent.sock", None, "");
    write_file(&dir.path().join("svc.secret"), "the-wrong-secret", 0o600);
    let mut cmd = command();
    // As a user runs it: no FRESHTOKEN_LOG.
    cmd.env_remove("FRESHTOKEN_LOG")
        .args(["token", "api", "--timeout", "600", "--config"])
        .arg(&config);
    let (code, stdout, stderr) = support::output_within(cmd, Duration::from_secs(120));
    assert_eq!(code, Some(1), "still waiting after 120 s: {stderr}");
    assert!(stdout.is_empty());
    let reason = stderr
        .lines()
        .find(|l| l.starts_with("freshtoken: no valid token for api"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(reason.contains("invalid_client"), "{reason}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("the-wrong-secret"));
    assert_eq!(authority.request_count(), 1, "retried a permanent error");
}

/// `freshtoken completions bash | head -3`: the reader goes away (here
/// before the first write), and the command ends quietly, without a panic.
#[test]
fn completions_into_a_closed_pipe_do_not_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = command()
        .args(["completions", "bash"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Tokens declared only in the environment (`FRESHTOKEN_TOKEN_NAMES`) work
/// without a configuration file.
#[test]
fn a_token_declared_only_in_the_environment_needs_no_file() {
    let authority = freshtoken::testing::LocalAuthority::builder()
        .client("svc", "s3cret-value")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = command()
        .args(["token", "api"])
        .env("FRESHTOKEN_SOCKET", dir.path().join("no-agent.sock"))
        .env("FRESHTOKEN_TOKEN_NAMES", "api")
        .env("FRESHTOKEN_TOKENS_API_TOKEN_URL", authority.token_url())
        .env("FRESHTOKEN_TOKENS_API_CLIENT_ID", "svc")
        .env("FRESHTOKEN_TOKENS_API_CLIENT_SECRET", "s3cret-value")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(authority.validate_access_token(token.trim()).is_ok());
}

/// `token --min-validity`: a fresh token that is not valid long enough is
/// refreshed early by the agent, once; a validity that the authority's
/// tokens never reach fails with 1 and says why, without a request; and
/// without an agent the same holds of the cache and a driver run once.
#[test]
fn token_min_validity_refreshes_early_once() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority,
        config,
        socket,
    } = one_token(
        dir.path(),
        "agent.sock",
        Some(Duration::from_secs(60)),
        &format!(
            "[tokens.api.cache]\nfile = \"{}\"\n",
            dir.path().join("cache/api.json").display()
        ),
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    let served = |agent: &Agent| {
        agent.get_json("/v1/token/api").unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = served(&agent);
    assert_eq!(authority.request_count(), 1);
    // The agent's 60 s token is over a second old: valid for less than
    // 59 s more. Tokens issued from now on live an hour.
    std::thread::sleep(Duration::from_millis(1100));
    authority.set_token_lifetime(Duration::from_secs(3600));
    let ask = |args: &[&str], secs: &str| {
        let mut cmd = command();
        cmd.args(["token", "api"])
            .args(args)
            .args(["--min-validity", secs, "--timeout", "600"]);
        // Bounded, so a wait that should have ended at once fails the test
        // instead of hanging it.
        output_within(cmd, Duration::from_secs(120))
    };
    let socket_arg = ["--socket", socket.to_str().unwrap()];

    let (code, stdout, stderr) = ask(&socket_arg, "59");
    assert_eq!(code, Some(0), "{stderr}");
    let second = stdout.trim().to_owned();
    assert_ne!(second, first, "the 60 s token was handed out");
    assert_eq!(second, served(&agent), "the agent serves the new token");
    assert_eq!(authority.request_count(), 2, "one early refresh");
    // Valid long enough now: the same token, no request.
    let (code, stdout, stderr) = ask(&socket_arg, "59");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), second);
    assert_eq!(authority.request_count(), 2);

    // Two hours: longer than this authority's tokens live. The agent says
    // asking again cannot help, and `token` fails with 1 and the reason.
    let answer = agent.get("/v1/token/api?min_validity=7200").unwrap();
    assert_eq!(answer.status, 503);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["retry"], false, "{body}");
    let (code, stdout, stderr) = ask(&socket_arg, "7200");
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stderr.contains("tokens live"), "{stderr}");
    assert!(!stderr.contains(&second) && stdout.is_empty());
    // A value that is not a number of seconds: a usage error.
    let (code, _, stderr) = ask(&socket_arg, "soon");
    assert_eq!(code, Some(2), "{stderr}");
    let answer = agent.get("/v1/token/api?min_validity=soon").unwrap();
    assert_eq!(answer.status, 400);
    assert_eq!(authority.request_count(), 2, "no request for any of these");

    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());

    // No agent: the cache's hour-long token (over a second old by now) is
    // valid long enough for 3000 s and handed out as it is ...
    std::thread::sleep(Duration::from_millis(1100));
    authority.set_token_lifetime(Duration::from_secs(7200));
    let config_arg = ["--config", config.to_str().unwrap()];
    let (code, stdout, stderr) = ask(&config_arg, "3000");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), second);
    assert_eq!(authority.request_count(), 2);
    // ... but not for 3599 s: the driver refreshes early, once.
    let (code, stdout, stderr) = ask(&config_arg, "3599");
    assert_eq!(code, Some(0), "{stderr}");
    let third = stdout.trim().to_owned();
    assert_ne!(third, second);
    assert_eq!(authority.request_count(), 3);
    // And nothing this authority issues lives three hours.
    let (code, _, stderr) = ask(&config_arg, "10800");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("tokens live"), "{stderr}");
    assert!(!stderr.contains(&third));
    assert_eq!(authority.request_count(), 3);
}
