//! The OAuth2 sources against the crate's own `LocalAuthority` (a real HTTP
//! server on loopback) and against raw TCP servers that answer with hostile
//! bytes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

mod oauth2_common;

use freshtoken::handle::RefreshState;
use freshtoken::oauth2::{
    BodyFormat, ClientAuth, ClientCredentials, HttpTransport, RefreshTokenSource, UreqTransport,
    UrlError,
};
use freshtoken::oauth2::{HttpResponse, TokenRequest as CoreRequest};
use freshtoken::policy::LifetimePolicy;
use freshtoken::proto::{Action, Input, MachineConfig, Output, RefreshMachine};
use freshtoken::source::TokenSource;
use freshtoken::source::{FetchRequest, TokenResponse};
use freshtoken::testing::{Fault, FaultWindow, LocalAuthority, Outcome, RetryAfter};
use freshtoken::{ClientSecret, FetchErrorKind, ManualClock, RefreshToken, Timestamp};
use oauth2_common::claims;

const SECRET: &str = "cs-Secret-5e7c1b9d";

fn authority() -> LocalAuthority {
    LocalAuthority::builder()
        .client("svc", SECRET)
        .client("app", "app-secret-0042")
        .public_client("desktop")
        .start()
        .expect("start the local authority")
}

#[test]
fn client_credentials_with_basic_post_and_json_bodies() {
    let authority = authority();
    let cases = [
        (ClientAuth::Basic, BodyFormat::Form),
        (ClientAuth::Post, BodyFormat::Form),
        (ClientAuth::Post, BodyFormat::Json),
        (ClientAuth::Basic, BodyFormat::Json),
    ];
    for (auth, format) in cases {
        let source = authority
            .client_credentials("svc")
            .client_auth(auth)
            .body_format(format)
            .scope("orders:read orders:write")
            .resource("https://orders.example/")
            .build()
            .unwrap();
        let answer = source.fetch(&FetchRequest::first()).unwrap();
        assert_eq!(answer.expires_in, Some(60));
        assert_eq!(answer.token_type, "Bearer");
        assert_eq!(answer.scope.as_deref(), Some("orders:read orders:write"));
        assert!(answer.refresh_token.is_none());
        assert!(answer.server_date.is_some());
        let c = claims(answer.access_token.expose_secret());
        assert_eq!(c["sub"], "svc");
        assert_eq!(c["aud"], "https://orders.example/");
        let (iat, exp) = (c["iat"].as_f64().unwrap(), c["exp"].as_f64().unwrap());
        assert!((exp - iat - 60.0).abs() < 0.01, "iat {iat} exp {exp}");
    }
    let log = authority.requests();
    assert_eq!(log.len(), cases.len());
    for (entry, (auth, format)) in log.iter().zip(cases) {
        assert_eq!(entry.client_auth, Some(auth));
        assert_eq!(entry.json_body, format == BodyFormat::Json);
        assert_eq!(entry.resources, vec!["https://orders.example/".to_string()]);
        assert_eq!(entry.outcome, Outcome::Issued { rotated: false });
    }
    assert_eq!(authority.grant_count("client_credentials"), 4);
}

#[test]
fn client_id_and_secret_are_form_encoded_in_basic_auth() {
    // RFC 6749 2.3.1: the authority decodes them, so characters that mean
    // something in the header (':') or in form encoding ('+', '%') survive.
    let secret = "p:a+s%s w/ord";
    let authority = LocalAuthority::builder()
        .client("id:with+odd chars", secret)
        .start()
        .unwrap();
    let source = authority
        .client_credentials("id:with+odd chars")
        .build()
        .unwrap();
    source.fetch(&FetchRequest::first()).unwrap();
}

#[test]
fn wrong_secret_is_permanent_and_backs_off_long() {
    let authority = authority();
    let source = ClientCredentials::builder(authority.token_url(), "svc", "not-the-secret")
        .build()
        .unwrap();
    let err = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(err.kind(), FetchErrorKind::Permanent);
    assert_eq!(err.status(), Some(401));
    assert!(err.message().starts_with("invalid_client"), "{err}");

    // Drive the machine for an hour of virtual time: a permanent error is
    // retried at the long interval, not in a storm.
    let config = MachineConfig::default();
    let (lo, hi) = config.backoff.bounds(&err, 1);
    let mut times = Vec::new();
    let run = run_machine(&source, config, Duration::from_secs(3600), |_, now| {
        times.push(now)
    });
    assert!(matches!(run.last_state, RefreshState::Retrying { .. }));
    for pair in times.windows(2) {
        let gap = pair[1].saturating_duration_since(pair[0]);
        assert!(
            lo <= gap && gap <= hi,
            "retry after {gap:?}, bounds {lo:?}..{hi:?}"
        );
    }
    // Default permanent interval: 150..300 s, so 12 to 24 retries an hour
    // after the first request.
    assert_eq!(authority.request_count(), 1 + times.len());
    assert!((12..=25).contains(&times.len()), "{}", times.len());
}

struct MachineRun {
    last_state: RefreshState,
    published: usize,
}

/// Drives a `RefreshMachine` against `source` in virtual time (each Timeout
/// jumps there), for `span`, calling `on_publish` with each snapshot's token
/// presence.
fn run_machine(
    source: &dyn TokenSource,
    config: MachineConfig,
    span: Duration,
    mut on_fetch: impl FnMut(&FetchRequest, Timestamp),
) -> MachineRun {
    let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
    let end = freshtoken::Clock::now(&clock) + span;
    let mut machine = RefreshMachine::new(config);
    machine.handle_input(Input::Start, freshtoken::Clock::now(&clock));
    let mut last_state = RefreshState::Starting;
    let mut published = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 10_000, "the machine is busy-looping");
        let now = freshtoken::Clock::now(&clock);
        match machine.poll_output() {
            Output::Action(Action::Fetch(req)) => {
                on_fetch(&req, now);
                let result = source.fetch(&req);
                machine.handle_input(
                    Input::Fetched(req.id, result),
                    freshtoken::Clock::now(&clock),
                );
            }
            Output::Action(Action::Publish(snapshot)) => {
                published += 1;
                last_state = snapshot.state.clone();
                if let RefreshState::Failed { .. } = snapshot.state {
                    return MachineRun {
                        last_state,
                        published,
                    };
                }
            }
            Output::Action(Action::Stop) => break,
            Output::Action(other) => panic!("unexpected action without a cache: {other:?}"),
            Output::Timeout(at) => {
                if at >= end || at == Timestamp::MAX {
                    break;
                }
                assert!(at > now, "timeout in the past");
                clock.set(at);
                machine.handle_input(Input::Tick, at);
            }
        }
    }
    MachineRun {
        last_state,
        published,
    }
}

#[test]
fn refresh_tokens_rotate_and_a_replay_is_revoked() {
    let authority = authority();
    let source = authority.refresh_token_source("app").build().unwrap();
    let rt0 = authority.issue_refresh_token("app");

    let mut current = rt0.clone();
    let mut seen = vec![rt0.expose_secret().to_owned()];
    for attempt in 1..=4 {
        let answer = source
            .fetch(&FetchRequest::new(attempt, Some(current.clone())))
            .unwrap();
        let next = answer.refresh_token.expect("a rotated refresh token");
        assert!(!seen.contains(&next.expose_secret().to_owned()));
        seen.push(next.expose_secret().to_owned());
        current = next;
    }
    // The first token was used long ago: presenting it again is a replay.
    let err = source.fetch(&FetchRequest::new(1, Some(rt0))).unwrap_err();
    assert_eq!(err.kind(), FetchErrorKind::GrantRevoked);
    assert!(err.message().starts_with("invalid_grant"), "{err}");
    // Like real authorities, the replay revoked the whole chain.
    let err = source
        .fetch(&FetchRequest::new(1, Some(current)))
        .unwrap_err();
    assert_eq!(err.kind(), FetchErrorKind::GrantRevoked);
    assert_eq!(authority.grant_count("refresh_token"), 6);
    assert_eq!(authority.issued_count(), 4);
}

#[test]
fn public_client_refreshes_without_a_secret() {
    let authority = authority();
    let source = RefreshTokenSource::builder(authority.token_url(), "desktop")
        .build()
        .unwrap();
    let rt = authority.issue_refresh_token("desktop");
    let answer = source.fetch(&FetchRequest::new(1, Some(rt))).unwrap();
    assert!(answer.refresh_token.is_some());
    assert_eq!(authority.requests()[0].client_auth, Some(ClientAuth::None));
}

#[test]
fn machine_hands_each_rotated_token_to_the_next_fetch() {
    let authority = LocalAuthority::builder()
        .client("app", "app-secret-0042")
        .token_lifetime(Duration::from_secs(2))
        .start()
        .unwrap();
    let source = authority.refresh_token_source("app").build().unwrap();
    let mut config = MachineConfig::default();
    config.refresh_token = Some(authority.issue_refresh_token("app"));
    config.lifetime = LifetimePolicy::default()
        .with_lifetime_bounds(Duration::from_secs(1), Duration::from_secs(3600));

    let mut presented = Vec::new();
    let run = run_machine(&source, config, Duration::from_secs(20), |req, _| {
        presented.push(
            req.refresh_token
                .as_ref()
                .unwrap()
                .expose_secret()
                .to_owned(),
        );
    });
    assert_eq!(run.last_state, RefreshState::Healthy);
    // 2 s tokens over 20 s of virtual time: several refreshes, each with a
    // token never presented before, all accepted.
    assert!(presented.len() >= 5, "{}", presented.len());
    let mut unique = presented.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), presented.len());
    assert_eq!(authority.issued_count(), presented.len());
    assert!(run.published >= presented.len());
}

#[test]
fn planned_faults_are_classified() {
    let authority = authority();
    let source = authority
        .client_credentials("svc")
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let fetch = || source.fetch(&FetchRequest::first());
    let once = FaultWindow::NextRequests(1);

    authority.add_fault(
        Fault::Unavailable {
            retry_after: Some(RetryAfter::Seconds(7)),
        },
        once,
    );
    let e = fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status(), e.retry_after()),
        (
            FetchErrorKind::Transient,
            Some(503),
            Some(Duration::from_secs(7))
        )
    );

    let in_a_minute = freshtoken::Clock::now(&freshtoken::SystemClock) + Duration::from_secs(60);
    authority.add_fault(
        Fault::RateLimited {
            retry_after: Some(RetryAfter::Date(in_a_minute)),
        },
        once,
    );
    let e = fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::RateLimited, Some(429))
    );
    let ra = e.retry_after().unwrap();
    assert!(
        ra > Duration::from_secs(50) && ra <= Duration::from_secs(60),
        "{ra:?}"
    );

    authority.add_fault(Fault::MalformedJson, once);
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.message().contains("not valid JSON"), "{e}");

    authority.add_fault(Fault::CloseConnection, once);
    let e = fetch().unwrap_err();
    assert_eq!((e.kind(), e.status()), (FetchErrorKind::Transient, None));
    // A closed connection, not a hang that ran into the timeout.
    assert!(!e.message().contains("timed out"), "{e}");

    authority.add_fault(Fault::Hang(Duration::from_secs(5)), once);
    let e = fetch().unwrap_err();
    assert_eq!((e.kind(), e.status()), (FetchErrorKind::Transient, None));
    assert!(e.message().contains("timed out"), "{e}");

    authority.add_fault(Fault::Hang(Duration::from_millis(50)), once);
    fetch().unwrap();

    authority.add_fault(
        Fault::Error {
            status: 400,
            code: "invalid_scope".into(),
        },
        once,
    );
    assert_eq!(fetch().unwrap_err().kind(), FetchErrorKind::Permanent);

    fetch().unwrap();
    let outcomes: Vec<_> = authority
        .requests()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Faulted).count(),
        5 // hangs answer normally in the end
    );
    // The short hang and the last request; the long hang's late answer may
    // not be logged yet.
    assert!(authority.issued_count() >= 2);
}

#[test]
fn fault_windows_follow_the_authoritys_clock_and_can_change_from_another_thread() {
    let clock = ManualClock::new(Timestamp::from_secs(1_000));
    let authority = Arc::new(
        LocalAuthority::builder()
            .client("svc", SECRET)
            .clock(clock.clone())
            .start()
            .unwrap(),
    );
    let source = authority.client_credentials("svc").build().unwrap();
    let from = Timestamp::from_secs(1_010);
    let until = Timestamp::from_secs(1_020);
    let a = Arc::clone(&authority);
    std::thread::spawn(move || {
        a.add_fault(
            Fault::Unavailable { retry_after: None },
            FaultWindow::Between { from, until },
        )
    })
    .join()
    .unwrap();

    assert!(source.fetch(&FetchRequest::first()).is_ok());
    clock.set(from);
    assert!(source.fetch(&FetchRequest::first()).is_err());
    clock.set(until - Duration::from_millis(1));
    assert!(source.fetch(&FetchRequest::first()).is_err());
    clock.set(until);
    let ok = source.fetch(&FetchRequest::first()).unwrap();
    // Token times and the Date header come from the authority's clock.
    assert_eq!(ok.server_date, Some(until));
    assert_eq!(claims(ok.access_token.expose_secret())["iat"], 1_020.0);
}

/// A loopback server that answers each of the connections it accepts with
/// `answer(request bytes)`, then closes it. Counts connections.
struct RawServer {
    url: String,
    connections: Arc<AtomicUsize>,
    _thread: JoinHandle<()>,
}

impl RawServer {
    fn start(answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let request = read_request(&mut stream);
                // The client may hang up early (a capped body); fine.
                let _ = stream.write_all(&answer(&request));
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        });
        RawServer {
            url,
            connections,
            _thread: thread,
        }
    }

    fn json(status: &str, headers: &str, body: impl Into<Vec<u8>>) -> RawServer {
        let (status, headers, body) = (status.to_owned(), headers.to_owned(), body.into());
        RawServer::start(move |_| response(&status, &headers, &body))
    }

    fn source(&self) -> ClientCredentials {
        ClientCredentials::builder(&self.url, "svc", SECRET)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    fn fetch(&self) -> Result<TokenResponse, freshtoken::FetchError> {
        self.source().fetch(&FetchRequest::first())
    }
}

fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    buf
}

#[test]
fn hostile_answers_are_errors_not_crashes() {
    // 10 MiB: refused at the 64 KiB cap without reading it all.
    let big = RawServer::json(
        "200 OK",
        "",
        format!(r#"{{"access_token":"{}"}}"#, "a7".repeat(5 << 20)),
    );
    let e = big.fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.message().contains("larger than 65536 bytes"), "{e}");
    assert!(!e.message().contains("a7a7a7a7"), "{e}");

    // Deep nesting, in a field we read and in one we skip.
    for body in [
        format!(
            r#"{{"access_token":{}"x"{}}}"#,
            "[".repeat(30_000),
            "]".repeat(30_000)
        ),
        format!(
            r#"{{"access_token":"at","junk":{}1{}}}"#,
            "[".repeat(30_000),
            "]".repeat(30_000)
        ),
        "[".repeat(60_000),
    ] {
        let server = RawServer::json("200 OK", "", body);
        let _ = server.fetch();
    }

    let missing = RawServer::json("200 OK", "", r#"{"token_type":"Bearer","expires_in":60}"#);
    let e = missing.fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.message().contains("no access_token"), "{e}");

    let dup = RawServer::json(
        "200 OK",
        "",
        r#"{"access_token":"one-a1b2","access_token":"two-c3d4"}"#,
    );
    let e = dup.fetch().unwrap_err();
    assert!(
        e.message()
            .contains("`access_token` appears more than once"),
        "{e}"
    );
    assert!(
        !e.message().contains("one-a1b2") && !e.message().contains("two-c3d4"),
        "{e}"
    );

    let dpop = RawServer::json(
        "200 OK",
        "",
        r#"{"access_token":"at","token_type":"DPoP","expires_in":60}"#,
    );
    assert_eq!(dpop.fetch().unwrap().token_type, "DPoP");
    let lower = RawServer::json(
        "200 OK",
        "",
        r#"{"access_token":"at","token_type":"bearer"}"#,
    );
    assert_eq!(lower.fetch().unwrap().token_type, "bearer");
}

#[test]
fn odd_expires_in_values_give_sane_tokens() {
    let policy = LifetimePolicy::default();
    let now = Timestamp::from_secs(1_700_000_000);
    for (raw, parsed) in [
        ("-5", Some(-5)),
        ("0", Some(0)),
        ("1e30", Some(i64::MAX)),
        (r#""abc""#, None),
        (r#""300""#, Some(300)),
    ] {
        let server = RawServer::json(
            "200 OK",
            "",
            format!(r#"{{"access_token":"at","expires_in":{raw}}}"#),
        );
        let answer = server.fetch().unwrap();
        assert_eq!(answer.expires_in, parsed, "{raw}");
        let token = policy.resolve(answer, now, now).token;
        assert!(token.expires_at() > now, "{raw}: already expired");
        assert!(token.stale_at() <= token.expires_at());
        assert!(
            token.lifetime() <= Duration::from_secs(366 * 86_400),
            "{raw}: {:?}",
            token.lifetime()
        );
    }
}

#[test]
fn retry_after_and_status_from_raw_answers() {
    let s = RawServer::json(
        "503 Service Unavailable",
        "Retry-After: 120\r\n",
        "<html>down</html>",
    );
    let e = s.fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status(), e.retry_after()),
        (
            FetchErrorKind::Transient,
            Some(503),
            Some(Duration::from_secs(120))
        )
    );
    assert!(e.message().contains("<html>down</html>"), "{e}");

    let s = RawServer::json(
        "429 Too Many Requests",
        "Retry-After: Fri, 31 Dec 1999 23:59:59 GMT\r\n",
        "",
    );
    let e = s.fetch().unwrap_err();
    // A date in the past means "now".
    assert_eq!(
        (e.kind(), e.retry_after()),
        (FetchErrorKind::RateLimited, Some(Duration::ZERO))
    );
}

#[test]
fn redirects_are_not_followed() {
    let target = RawServer::json("200 OK", "", r#"{"access_token":"at"}"#);
    let redirect = RawServer::json(
        "307 Temporary Redirect",
        &format!("Location: {}\r\n", target.url),
        "",
    );
    let e = redirect.fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(307))
    );
    assert!(e.message().contains(&target.url), "{e}");
    assert_eq!(redirect.connections.load(Ordering::SeqCst), 1);
    assert_eq!(target.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn plain_http_beyond_loopback_is_refused() {
    let e = ClientCredentials::builder("http://auth.example.com/token", "svc", SECRET)
        .build()
        .unwrap_err();
    assert!(matches!(e, UrlError::Insecure { ref host } if host == "auth.example.com"));
    assert!(e.to_string().contains("https"), "{e}");
    assert!(RefreshTokenSource::builder("http://10.1.2.3/token", "app")
        .build()
        .is_err());

    // The transport checks again, whoever built the request.
    let request =
        CoreRequest::client_credentials("http://192.0.2.1/token", "svc", ClientSecret::new(SECRET))
            .build(&FetchRequest::first())
            .unwrap();
    let e = UreqTransport::new().send(&request, 1024).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Permanent);
    assert!(e.message().contains("https"), "{e}");
}

#[test]
fn no_secret_in_debug_or_error_messages() {
    let refresh = "rt-Ref7esh-0a1b2c3d";
    // A hostile authority that echoes the whole request back in its error.
    let echo = RawServer::start(|request| {
        let split = request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(0);
        let (head, body) = request.split_at(split);
        let echoed = [b"you sent: ".as_slice(), body, b" with ", head].concat();
        response("400 Bad Request", "", &echoed)
    });
    let cc = echo.source();
    let rt = RefreshTokenSource::builder(&echo.url, "app")
        .client_secret(SECRET)
        .client_auth(ClientAuth::Post)
        .param("assertion", "assert-Xy9-secret")
        .build()
        .unwrap();
    let e1 = cc.fetch(&FetchRequest::first()).unwrap_err();
    let e2 = rt
        .fetch(&FetchRequest::new(1, Some(RefreshToken::new(refresh))))
        .unwrap_err();
    // The echoed form body is partly visible, its secrets are not.
    assert!(e2.message().contains("grant_type=refresh_token"), "{e2}");

    let authority = authority();
    let ok = authority.client_credentials("svc").build().unwrap();
    let answer = ok.fetch(&FetchRequest::first()).unwrap();
    let access = answer.access_token.expose_secret().to_owned();
    let bad = ClientCredentials::builder(authority.token_url(), "svc", "wr0ng-Secret-77")
        .build()
        .unwrap();
    let e3 = bad.fetch(&FetchRequest::first()).unwrap_err();
    let rt_source = authority.refresh_token_source("app").build().unwrap();
    let rt0 = authority.issue_refresh_token("app");
    let rotated = rt_source
        .fetch(&FetchRequest::new(1, Some(rt0.clone())))
        .unwrap();
    let e4 = rt_source
        .fetch(&FetchRequest::new(1, Some(rt0.clone())))
        .unwrap_err();

    let request = CoreRequest::refresh_token(
        authority.token_url(),
        "app",
        Some(ClientSecret::new(SECRET)),
    )
    .build(&FetchRequest::new(1, Some(RefreshToken::new(refresh))))
    .unwrap();
    let text = format!(
        "{cc:?} {rt:?} {ok:?} {bad:?} {rt_source:?} {e1} {e1:?} {e2} {e2:?} {e3} {e3:?} {e4} {e4:?} \
         {answer:?} {rotated:?} {request:?} {:?} {authority:?} {:?} {:?}",
        authority.requests(),
        HttpResponse::new(200, vec![], format!(r#"{{"access_token":"{access}"}}"#).into_bytes()),
        ClientCredentials::builder(authority.token_url(), "svc", SECRET),
    );
    for secret in [
        SECRET,
        "app-secret-0042",
        "wr0ng-Secret-77",
        refresh,
        "assert-Xy9-secret",
        access.as_str(),
        rt0.expose_secret(),
        rotated.refresh_token.as_ref().unwrap().expose_secret(),
        rotated.access_token.expose_secret(),
    ] {
        assert!(!text.contains(secret), "{secret} leaked in: {text}");
    }
}

#[test]
fn a_dropped_authority_stops_listening() {
    let authority = authority();
    let source = authority.client_credentials("svc").build().unwrap();
    source.fetch(&FetchRequest::first()).unwrap();
    drop(authority);
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!((e.kind(), e.status()), (FetchErrorKind::Transient, None));
}
