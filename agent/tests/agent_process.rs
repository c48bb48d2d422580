//! The agent as a real process against `LocalAuthority`: token files that
//! never tear, the socket through an outage, SIGHUP, SIGTERM.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshtoken::cache::{FileCache, TokenCache};
use freshtoken::source::FetchRequest;
use freshtoken::source::TokenSource;
use freshtoken::testing::{Fault, FaultWindow, LocalAuthority, Outcome, TokenRejection};
use freshtoken::{Clock, RefreshToken, SystemClock};
use support::{cc_token, json_token_file, one_token, wait_for, write_file, Agent, OneToken};

fn now_secs_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A reader polls the token file every millisecond while the agent
/// refreshes a 4 s token several times: every read is a whole token the
/// authority issued. Then an outage shorter than the stale window: the
/// socket endpoint serves a valid token at every poll throughout.
#[test]
fn token_file_never_tears_and_the_socket_rides_out_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("out/api.json");
    let OneToken {
        authority,
        config,
        socket,
    } = one_token(
        dir.path(),
        "run/agent.sock",
        Some(Duration::from_secs(4)),
        &json_token_file(&token_file),
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    wait_for(Duration::from_secs(5), || token_file.exists().then_some(())).expect("a token file");

    // The token file's mode is 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Phase 1: torn reads through refreshes.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let path = token_file.clone();
        std::thread::spawn(move || {
            let (mut reads, mut torn) = (0u64, 0u64);
            let mut tokens = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        reads += 1;
                        let parsed: Option<(String, u64)> =
                            serde_json::from_slice::<serde_json::Value>(&bytes)
                                .ok()
                                .and_then(|v| {
                                    Some((
                                        v["access_token"].as_str()?.to_owned(),
                                        v["expires_at"].as_u64()?,
                                    ))
                                });
                        match parsed {
                            Some((t, _)) => {
                                if tokens.last() != Some(&t) {
                                    tokens.push(t);
                                }
                            }
                            None => torn += 1,
                        }
                    }
                    // The file is replaced by rename: it never goes missing.
                    Err(_) => torn += 1,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (reads, torn, tokens)
        })
    };
    let before = authority.issued_count();
    // At least three refreshes (a 4 s token is renewed every 1 to 2 s).
    let refreshed = wait_for(Duration::from_secs(20), || {
        (authority.issued_count() >= before + 3).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (reads, torn, tokens) = reader.join().unwrap();
    assert!(refreshed.is_some(), "no refreshes: {}", agent.log_text());
    eprintln!(
        "torn reads: {torn} of {reads} reads; {} distinct tokens",
        tokens.len()
    );
    assert_eq!(torn, 0, "{torn} torn reads of {reads}");
    assert!(reads > 1_000, "the reader barely ran: {reads}");
    assert!(tokens.len() >= 3, "saw {} tokens", tokens.len());
    for t in &tokens {
        let check = authority.validate_access_token(t);
        assert!(
            !matches!(check, Err(TokenRejection::Unknown)),
            "the file held a token the authority never issued"
        );
    }

    // Phase 2: an outage shorter than the stale window (2 s of a 4 s
    // token), over a refresh.
    let issued = authority.issued_count();
    wait_for(Duration::from_secs(10), || {
        (authority.issued_count() > issued).then_some(())
    })
    .unwrap();
    // From 1 s into the new token's life to 2.5 s: across its refresh
    // time (2 s, a little earlier with jitter).
    let from = SystemClock.now() + Duration::from_secs(1);
    let outage = Duration::from_millis(1_500);
    authority.add_fault(
        Fault::Unavailable { retry_after: None },
        FaultWindow::Between {
            from,
            until: from + outage,
        },
    );
    let started = Instant::now();
    let (mut polls, mut bad) = (0u32, Vec::new());
    while started.elapsed() < outage + Duration::from_millis(3_500) {
        polls += 1;
        match agent.get("/v1/token/api") {
            Ok(answer) if answer.status == 200 => {
                let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
                let token = body["access_token"].as_str().unwrap();
                let expires_at = body["expires_at"].as_u64().unwrap() as f64;
                if authority.validate_access_token(token).is_err()
                    || expires_at + 1.0 <= now_secs_f64()
                {
                    bad.push(format!("poll {polls}: an invalid token"));
                }
                assert_eq!(body["token_type"], "Bearer");
            }
            Ok(answer) => bad.push(format!(
                "poll {polls}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )),
            Err(e) => bad.push(format!("poll {polls}: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let faulted = authority
        .requests()
        .iter()
        .filter(|r| r.fault.is_some() && r.at >= from)
        .count();
    eprintln!("outage of {outage:?}: {faulted} failed authority requests, {polls} socket polls, {} without a valid token", bad.len());
    assert!(
        faulted >= 1,
        "the outage was never hit: {}",
        agent.log_text()
    );
    assert!(bad.is_empty(), "{bad:?}");
    // And the agent recovered.
    let status = agent.get_json("/v1/status").unwrap();
    assert_eq!(status["tokens"][0]["name"], "api");

    // Nothing secret in the agent's log.
    let log = agent.log_text();
    assert!(!log.contains("s3cret-value"), "{log}");
    for t in &tokens {
        assert!(!log.contains(t.as_str()), "a token in the log");
    }

    agent.signal(support::Signal::TERM);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed");
}

/// SIGHUP re-reads the configuration: a new token starts and is served,
/// a removed one stops and its token file goes.
#[test]
fn sighup_adds_and_removes_tokens() {
    let authority = LocalAuthority::builder()
        .client("svc", "secret-one")
        .client("billing", "secret-two")
        .token_lifetime(Duration::from_secs(30))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let one = write_file(&dir.path().join("one.secret"), "secret-one", 0o600);
    let two = write_file(&dir.path().join("two.secret"), "secret-two", 0o600);
    let socket = dir.path().join("agent.sock");
    let api_file = dir.path().join("api.token");
    let billing_file = dir.path().join("billing.token");
    let head = format!("[agent]\nsocket = \"{}\"\n\n", socket.display());
    let api = cc_token(
        "api",
        &authority.token_url(),
        "svc",
        &one,
        &format!("[tokens.api.file]\npath = \"{}\"\n", api_file.display()),
    );
    let billing = cc_token(
        "billing",
        &authority.token_url(),
        "billing",
        &two,
        &format!(
            "[tokens.billing.file]\npath = \"{}\"\nformat = \"header\"\n",
            billing_file.display()
        ),
    );
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!("{head}{api}"),
        0o600,
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    assert_eq!(agent.get("/v1/token/billing").unwrap().status, 404);

    // Add billing.
    write_file(&config, &format!("{head}{api}{billing}"), 0o600);
    agent.signal(support::Signal::HUP);
    let body = wait_for(Duration::from_secs(10), || {
        agent.get_json("/v1/token/billing")
    })
    .unwrap_or_else(|| panic!("billing never served: {}", agent.log_text()));
    let token = body["access_token"].as_str().unwrap().to_owned();
    let info = authority.validate_access_token(&token).unwrap();
    assert_eq!(info.client_id, "billing");
    let line = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&billing_file).ok()
    })
    .unwrap();
    assert_eq!(line, format!("Authorization: Bearer {token}\n"));
    // api kept running, unchanged: no new request for it.
    assert_eq!(authority.grant_count("client_credentials"), 2);

    // Remove api.
    write_file(&config, &format!("{head}{billing}"), 0o600);
    agent.signal(support::Signal::HUP);
    wait_for(Duration::from_secs(10), || {
        agent.get("/v1/token/api").ok().filter(|a| a.status == 404)
    })
    .unwrap_or_else(|| panic!("api never removed: {}", agent.log_text()));
    wait_for(Duration::from_secs(5), || {
        (!api_file.exists()).then_some(())
    })
    .expect("the removed token's file is deleted");
    assert_eq!(agent.get("/v1/token/billing").unwrap().status, 200);

    // A broken configuration is reported and the running one kept.
    write_file(
        &config,
        &format!("{head}{billing}\n[tokens.billing.cach]\n"),
        0o600,
    );
    agent.signal(support::Signal::HUP);
    wait_for(Duration::from_secs(5), || {
        agent
            .log_text()
            .contains("tokens.billing.cach")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no reload error: {}", agent.log_text()));
    assert_eq!(agent.get("/v1/token/billing").unwrap().status, 200);

    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// SIGTERM while a refresh is in flight (the authority holds it, and says
/// so): the agent waits for the answer, stores the rotated refresh token
/// and exits; the cache holds the newest refresh token, which the
/// authority still takes.
#[test]
fn sigterm_leaves_the_cache_with_the_newest_refresh_token() {
    let authority = LocalAuthority::builder()
        .public_client("cli")
        .token_lifetime(Duration::from_secs(4))
        .rotate_refresh_tokens(true)
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = authority.issue_refresh_token("cli");
    let rt_file = write_file(&dir.path().join("rt"), first.expose_secret(), 0o600);
    let socket = dir.path().join("agent.sock");
    let cache_file = dir.path().join("state/cli.json");
    let config = write_file(
        &dir.path().join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\n\n[tokens.cli]\ngrant = \"refresh_token\"\ntoken_url = \"{}\"\n\
             client_id = \"cli\"\nrefresh_token_file = \"{}\"\nfetch_timeout_secs = 20\n\
             [tokens.cli.cache]\nfile = \"{}\"\n",
            socket.display(),
            authority.token_url(),
            rt_file.display(),
            cache_file.display()
        ),
        0o600,
    );
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    // Let it rotate once more, then make the next refresh slow.
    let issued = authority.issued_count();
    wait_for(Duration::from_secs(10), || {
        (authority.issued_count() > issued).then_some(())
    })
    .unwrap();
    // The next refresh is held 5 s (well within the 20 s fetch timeout);
    // SIGTERM goes once the authority says it holds it, so the answer
    // comes after the signal however slow the machine.
    authority.add_fault(
        Fault::Hang(Duration::from_secs(5)),
        FaultWindow::NextRequests(1),
    );
    wait_for(Duration::from_secs(20), || {
        (authority.hanging_count() == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("no refresh held: {}", agent.log_text()));
    let requests_before = authority.requests().len();
    agent.signal(support::Signal::TERM);
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .expect("exits after the drain");
    assert!(status.success(), "{status}: {}", agent.log_text());

    // The slow answer was given (after the SIGTERM) and rotated the token.
    let log = authority.requests();
    let last = log.last().unwrap();
    assert!(
        log.len() > requests_before,
        "the slow refresh completed after SIGTERM"
    );
    assert!(matches!(last.fault, Some(Fault::Hang(_))), "{last:?}");
    assert!(
        matches!(last.outcome, Outcome::Issued { rotated: true }),
        "{last:?}"
    );

    // The cache holds the refresh token of that last answer: the authority
    // still accepts it (a spent one would be a replay and fail).
    let cached = FileCache::new(&cache_file)
        .load()
        .unwrap()
        .expect("a cached token");
    let rt = cached.refresh_token().expect("a refresh token").clone();
    let source = authority.refresh_token_source("cli").build().unwrap();
    let answer = source.fetch(&FetchRequest::new(
        1,
        Some(RefreshToken::new(rt.expose_secret())),
    ));
    assert!(
        answer.is_ok(),
        "the cached refresh token is not the newest: {answer:?}"
    );
    assert!(!authority.requests().last().unwrap().reused_refresh_token);
    let text = agent.log_text();
    assert!(!text.contains(rt.expose_secret()) && !text.contains(first.expose_secret()));
}

/// Once the token has expired through an outage, `/healthz` says when as an
/// RFC 3339 time, not as Unix seconds.
#[test]
fn an_expiry_is_told_as_an_rfc3339_time() {
    let dir = tempfile::tempdir().unwrap();
    let OneToken {
        authority,
        config,
        socket,
    } = one_token(dir.path(), "agent.sock", Some(Duration::from_secs(3)), "");
    let mut agent = Agent::start(&config, &socket, dir.path(), &[]);
    agent.wait_healthy(Duration::from_secs(10));
    authority.add_fault(
        Fault::Unavailable { retry_after: None },
        FaultWindow::Always,
    );
    let reason = wait_for(Duration::from_secs(20), || {
        let (code, body) = support::unix_get(&socket, "/healthz")?;
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        let reason = body["tokens"]["api"].as_str()?.to_owned();
        (code == 503 && reason.contains("expired at")).then_some(reason)
    })
    .unwrap_or_else(|| panic!("never expired: {}", agent.log_text()));
    let at = reason
        .split("expired at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    assert!(
        at.len() == "2026-12-06T07:02:46.095Z".len()
            && at.as_bytes()[4] == b'-'
            && at.as_bytes()[10] == b'T'
            && at.ends_with('Z'),
        "not RFC 3339: {reason}"
    );
    agent.signal(support::Signal::TERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).unwrap().success());
}
