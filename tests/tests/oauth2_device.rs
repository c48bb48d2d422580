//! Device login (RFC 8628) with `freshtoken::oauth2::device::DeviceLogin`:
//! against panva's oidc-provider (tests/oidc/server.mjs, device flow on),
//! whose user pages the test walks through over HTTP as a browser would
//! (agent/tests/device_support, shared with the agent's login test, which
//! must build from the agent's package alone), and against a scripted authority on
//! loopback for the answers oidc-provider never gives (`slow_down`, a late
//! `expired_token`).

#[path = "../../agent/tests/device_support/mod.rs"]
mod device_support;
mod oidc_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use device_support::{decide, Decision};
use freshtoken::oauth2::device::{DeviceLogin, DeviceLoginError};
use freshtoken::oauth2::RefreshTokenSource;
use freshtoken::Builder;
use oidc_support::OidcProvider;

fn device_login(provider: &OidcProvider, client: &str) -> DeviceLogin {
    DeviceLogin::builder(
        format!("{}/device/auth", provider.issuer),
        provider.token_url(),
        client,
    )
    .scope("openid offline_access")
    .build()
    .unwrap()
}

/// The user approves while the CLI polls: the first polls are answered
/// `authorization_pending`, then the tokens come, with a refresh token
/// that the refresh-token driver then uses.
#[test]
fn a_user_approves_and_the_refresh_token_works() {
    let provider = OidcProvider::start();
    let login = device_login(&provider, "device-cli");
    let started = login.start().unwrap();
    assert_eq!(
        started.verification_uri(),
        format!("{}/device", provider.issuer)
    );
    let complete = started.verification_uri_complete().expect("a complete URI");
    assert!(complete.contains("user_code="), "{complete}");
    assert_eq!(started.interval(), Duration::from_secs(5));

    let waits = Arc::new(AtomicU32::new(0));
    let poller = {
        let waits = waits.clone();
        let started = started.clone();
        std::thread::spawn(move || {
            login.poll_with(&started, |wait| {
                waits.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(wait);
            })
        })
    };
    // A second wait means the first poll was answered (pending).
    let deadline = Instant::now() + Duration::from_secs(60);
    while waits.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the first poll never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    decide(
        started.verification_uri(),
        started.user_code(),
        Decision::Approve,
    );
    let tokens = poller.join().unwrap().expect("tokens after approval");
    assert!(waits.load(Ordering::SeqCst) >= 2);
    let refresh_token = tokens
        .refresh_token
        .expect("offline_access gives a refresh token");
    assert!(!tokens.access_token.expose_secret().is_empty());

    // The refresh token is a live grant: the driver refreshes with it.
    let source = RefreshTokenSource::builder(provider.token_url(), "device-cli")
        .refresh_token(refresh_token)
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let token = tokens
        .wait_ready(Duration::from_secs(30))
        .expect("a token from the device login's refresh token");
    assert!(!token.access_token().expose_secret().is_empty());
    drop(token);
    driver.shutdown_blocking();
}

/// The user aborts on the confirmation page: `access_denied`.
#[test]
fn an_aborted_login_is_access_denied() {
    let provider = OidcProvider::start();
    let login = device_login(&provider, "device-cli");
    let started = login.start().unwrap();
    decide(
        started.verification_uri(),
        started.user_code(),
        Decision::Abort,
    );
    let err = login.poll(&started).unwrap_err();
    assert!(
        matches!(err, DeviceLoginError::AccessDenied { .. }),
        "{err}"
    );
}

/// A code that lives 2 s and nobody approves: the login ends as expired
/// instead of polling on.
#[test]
fn an_unapproved_code_expires() {
    let provider = OidcProvider::start();
    let login = device_login(&provider, "device-short");
    let started = login.start().unwrap();
    assert!(started.expires_in() <= Duration::from_secs(2));
    let err = login.poll(&started).unwrap_err();
    assert_eq!(err, DeviceLoginError::Expired);
    // An unknown client is the authority's refusal, typed.
    let err = device_login(&provider, "no-such-client")
        .start()
        .unwrap_err();
    assert!(matches!(err, DeviceLoginError::Authority(_)), "{err}");
}

/// A scripted authority on loopback: the device authorization answer, then
/// one scripted answer per token request; every request body is kept.
struct Scripted {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

fn scripted(interval: u64, token_answers: Vec<(u16, &'static str)>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(token_answers.into_iter()));
    {
        let bodies = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((n, v)) = header.split_once(':') {
                        if n.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                bodies
                    .lock()
                    .unwrap()
                    .push(String::from_utf8(body).unwrap());
                let (status, json) = if path == "/device" {
                    (
                        200,
                        format!(
                            r#"{{"device_code":"dc-secret-1","user_code":"BDWP-HQPK","verification_uri":"https://example.com/device","expires_in":600,"interval":{interval}}}"#
                        ),
                    )
                } else {
                    let (s, j) = answers.lock().unwrap().next().expect("an answer left");
                    (s, j.to_owned())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
            }
        });
    }
    Scripted { url, bodies }
}

const PENDING: (u16, &str) = (400, r#"{"error":"authorization_pending"}"#);
const SLOW_DOWN: (u16, &str) = (400, r#"{"error":"slow_down"}"#);

/// `slow_down` adds 5 s to the interval for good; `authorization_pending`
/// keeps it; each poll sends the device code with the device grant.
#[test]
fn slow_down_adds_five_seconds_and_pending_keeps_polling() {
    let authority = scripted(
        1,
        vec![
            PENDING,
            SLOW_DOWN,
            PENDING,
            (
                200,
                r#"{"access_token":"at-1","token_type":"Bearer","expires_in":300,"refresh_token":"rt-1"}"#,
            ),
        ],
    );
    let login = DeviceLogin::builder(
        format!("{}/device", authority.url),
        format!("{}/token", authority.url),
        "tv-app",
    )
    .scope("offline_access")
    .build()
    .unwrap();
    let started = login.start().unwrap();
    assert!(!format!("{started:?}").contains("dc-secret-1"));
    let mut waits = Vec::new();
    let tokens = login.poll_with(&started, |w| waits.push(w)).unwrap();
    assert_eq!(tokens.refresh_token.unwrap().expose_secret(), "rt-1");
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [1, 1, 6, 6]);
    let bodies = authority.bodies.lock().unwrap();
    assert_eq!(bodies[0], "scope=offline_access&client_id=tv-app");
    for poll in &bodies[1..] {
        assert_eq!(
            poll,
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code\
             &device_code=dc-secret-1&client_id=tv-app"
        );
    }
}

/// `expired_token` from the authority ends the login as expired, and an
/// error the grant does not know (`invalid_client`) as the authority's.
#[test]
fn expired_token_and_other_refusals_end_the_login() {
    let authority = scripted(
        2,
        vec![
            SLOW_DOWN,
            (400, r#"{"error":"expired_token"}"#),
            (
                401,
                r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
            ),
        ],
    );
    let login = DeviceLogin::builder(
        format!("{}/device", authority.url),
        format!("{}/token", authority.url),
        "tv-app",
    )
    .build()
    .unwrap();
    let started = login.start().unwrap();
    let mut waits = Vec::new();
    let err = login.poll_with(&started, |w| waits.push(w)).unwrap_err();
    assert_eq!(err, DeviceLoginError::Expired);
    assert_eq!(waits, [Duration::from_secs(2), Duration::from_secs(7)]);
    let started = login.start().unwrap();
    let err = login.poll_with(&started, |_| {}).unwrap_err();
    match err {
        DeviceLoginError::Authority(e) => {
            assert_eq!(e.error_code(), Some("invalid_client"));
            assert_eq!(e.status(), Some(401));
        }
        other => panic!("{other}"),
    }
}
