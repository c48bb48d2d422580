//! The agent's listeners as other processes, other users and web pages see
//! them: the loopback TCP port answers only requests naming it (DNS
//! rebinding), a slow client holds up no one, the socket and its directory
//! are private, and the client asks only an agent of its own user.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use support::{
    cc_token, command, free_port, one_token, tcp_get, unix_get, wait_for, write_file, Agent,
    OneToken,
};

fn status(answer: Option<(u16, String)>) -> u16 {
    answer.map_or(0, |(s, _)| s)
}

/// A page whose name is rebound to 127.0.0.1 reaches the TCP port with its
/// own name in `Host`: refused, as is a request without `Host`. Only
/// `/healthz` and `/metrics` are served, and tokens (with
/// `tcp_serves_tokens`) only with the `Metadata-Flavor: freshtoken` header
/// and no `Origin`.
#[test]
fn the_tcp_listener_answers_only_requests_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority,
        config,
        socket,
    } = one_token(dir.path(), "agent.sock", None, "");
    let port = free_port();
    // `localhost` is 127.0.0.1.
    let listen = format!("localhost:{port}");
    let mut agent = Agent::start(
        &config,
        &socket,
        dir.path(),
        &[
            ("FRESHTOKEN_AGENT_LISTEN", &listen),
            ("FRESHTOKEN_AGENT_TCP_SERVES_TOKENS", "true"),
        ],
    );
    agent.wait_healthy(Duration::from_secs(10));

    let host = format!("Host: 127.0.0.1:{port}");
    for good in [
        host.clone(),
        format!("Host: localhost:{port}"),
        format!("Host: LocalHost:{port}"),
        format!("Host: [::1]:{port}"),
        format!("Host: 127.0.0.2:{port}"),
    ] {
        assert_eq!(status(tcp_get(port, "/healthz", &[&good])), 200, "{good}");
        assert_eq!(status(tcp_get(port, "/metrics", &[&good])), 200, "{good}");
    }
    let bad = [
        format!("Host: rebound.attacker.example:{port}"),
        format!("Host: 127.0.0.1.nip.io:{port}"),
        format!("Host: 10.0.0.1:{port}"),
        "Host: 127.0.0.1:1".to_owned(),
        "Host: localhost".to_owned(),
        format!("Host: [::1]x:{port}"),
    ];
    for bad in &bad {
        for path in ["/healthz", "/metrics", "/v1/token/api"] {
            let answer = tcp_get(port, path, &[bad, "Metadata-Flavor: freshtoken"]);
            assert_eq!(status(answer), 403, "{path} with {bad}");
        }
    }
    assert_eq!(status(tcp_get(port, "/healthz", &[])), 403, "no Host");
    assert_eq!(
        status(tcp_get(port, "/healthz", &[&host, &host])),
        403,
        "two Hosts"
    );

    // Not /v1/status (file paths, last errors): the socket only.
    assert_eq!(status(tcp_get(port, "/v1/status", &[&host])), 404);
    assert!(agent.get_json("/v1/status").is_some());

    // Tokens: only with the header a browser cannot send cross-origin
    // without a preflight, and never with an Origin.
    assert_eq!(status(tcp_get(port, "/v1/token/api", &[&host])), 403);
    assert_eq!(
        status(tcp_get(
            port,
            "/v1/token/api",
            &[
                &host,
                "Metadata-Flavor: freshtoken",
                "Origin: http://rebound.attacker.example"
            ]
        )),
        403
    );
    let (code, body) = tcp_get(
        port,
        "/v1/token/api",
        &[&host, "Metadata-Flavor: freshtoken"],
    )
    .expect("an answer");
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(authority
        .validate_access_token(body["access_token"].as_str().unwrap())
        .is_ok());

    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// A client that pipelines requests and never reads, and one that sends
/// half a request and waits, hold up no one: `/healthz` is answered on the
/// socket and on the TCP port while they stay connected, and the agent
/// drops them (the half request within its deadline).
#[test]
fn a_slow_client_never_stalls_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority: _authority,
        config,
        socket,
    } = one_token(dir.path(), "agent.sock", None, "");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(
        &config,
        &socket,
        dir.path(),
        &[("FRESHTOKEN_AGENT_LISTEN", &listen)],
    );
    agent.wait_healthy(Duration::from_secs(10));
    let host = format!("Host: 127.0.0.1:{port}");

    // Many pipelined requests for /metrics, never read: their answers
    // would fill the socket's buffer many times over.
    let pipelined = format!("GET /metrics HTTP/1.1\r\n{host}\r\n\r\n").repeat(2_000);
    let mut unix_hog = UnixStream::connect(&socket).unwrap();
    unix_hog
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = unix_hog.write_all(pipelined.as_bytes());
    let mut tcp_hog = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp_hog
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = tcp_hog.write_all(pipelined.as_bytes());
    // Half a request, then nothing.
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();

    // Everyone else is answered meanwhile.
    let answer = support::client::get(&socket, "/healthz", Duration::from_secs(30));
    assert_eq!(
        answer.as_ref().map(|a| a.status).ok(),
        Some(200),
        "{answer:?}"
    );
    assert_eq!(status(tcp_get(port, "/healthz", &[&host])), 200);
    assert_eq!(status(unix_get(&socket, "/metrics")), 200);

    // The agent closes the half request's connection (its deadline is a
    // few seconds; the read waits far longer) without an answer, and
    // the pipelining one after one answer (the requests it left unread
    // make that a reset).
    half.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = half.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)),
        "the half request was not dropped: {closed:?}"
    );
    unix_hog
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answers = Vec::new();
    let closed = unix_hog.read_to_end(&mut answers);
    assert!(
        closed.is_ok()
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the pipelining client was not dropped: {closed:?}"
    );
    drop(tcp_hog);

    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// Runs `freshtoken agent --config config` expecting it to refuse to start:
/// its exit code (`None` if it was still running after 30 s) and stderr.
fn agent_exit(config: &std::path::Path) -> (Option<i32>, String) {
    let mut cmd = command();
    cmd.arg("agent").arg("--config").arg(config);
    let (code, _, stderr) = support::output_within(cmd, Duration::from_secs(30));
    (code, stderr)
}

/// A regular file at the socket path is refused, never deleted; a socket
/// directory others can write to, or another user's, is refused; a missing
/// one is created 0700 and the socket is 0600.
#[test]
fn the_socket_and_its_directory_are_private() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority: _authority,
        config,
        socket,
    } = one_token(dir.path(), "run/agent.sock", None, "");
    let run = socket.parent().unwrap().to_owned();

    write_file(&socket, "precious", 0o600);
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, stderr) = agent_exit(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("agent.socket") && stderr.contains("not a socket"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
    std::fs::remove_file(&socket).unwrap();

    for mode in [0o777, 0o1777, 0o770] {
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, stderr) = agent_exit(&config);
        assert_eq!(code, Some(2), "mode {mode:o}: {stderr}");
        assert!(
            stderr.contains("agent.socket") && stderr.contains("write"),
            "{stderr}"
        );
        assert!(!socket.exists());
    }
    if rustix::process::geteuid().is_root() {
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
        let (code, stderr) = agent_exit(&config);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("uid 65534"), "{stderr}");
        assert!(!socket.exists());
    } else {
        eprintln!("not root: another user's directory not tried");
    }

    std::fs::remove_dir_all(&run).unwrap();
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    let dir_mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o7777;
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!(dir_mode, 0o700);
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
    assert!(!socket.exists());
}

/// Another user's agent on the socket (its socket, or only its process)
/// is not asked: `token` and `status` fail with the reason instead of
/// taking that user's token. Runs as root, the agent as `nobody`.
#[test]
fn the_client_asks_only_an_agent_of_this_user() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot run an agent as another user; not tried");
        return;
    }
    const NOBODY: u32 = 65534;
    let authority = freshtoken::testing::LocalAuthority::builder()
        .client("svc", "s3cret-value")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = write_file(&dir.path().join("svc.secret"), "s3cret-value", 0o600);
    std::os::unix::fs::chown(&secret, Some(NOBODY), Some(NOBODY)).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&run, Some(NOBODY), Some(NOBODY)).unwrap();
    let socket = run.join("agent.sock");
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\n\n{}",
            socket.display(),
            cc_token("api", &authority.token_url(), "svc", &secret, "")
        ),
        0o644,
    );
    let mut agent = Agent::start_as(&config, &socket, dir.path(), &[], Some(NOBODY));
    wait_for(Duration::from_secs(10), || {
        assert!(agent.running(), "the agent exited: {}", agent.log_text());
        unix_get(&socket, "/healthz").filter(|(s, _)| *s == 200)
    })
    .unwrap_or_else(|| panic!("the agent never got healthy: {}", agent.log_text()));

    let ask = |what: &[&str]| {
        let out = command()
            .args(what)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Its socket.
    for what in [&["token", "api"][..], &["status"][..]] {
        let (code, stdout, stderr) = ask(what);
        assert_eq!(code, Some(1), "{what:?}: {stdout} {stderr}");
        assert!(stdout.is_empty(), "{what:?}: {stdout}");
        assert!(stderr.contains("uid 65534"), "{what:?}: {stderr}");
    }
    // A socket handed to this user, the process behind it still nobody's.
    std::os::unix::fs::chown(&socket, Some(0), Some(0)).unwrap();
    let (code, stdout, stderr) = ask(&["token", "api"]);
    assert_eq!(code, Some(1), "{stdout} {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("runs as uid 65534"), "{stderr}");

    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}
