//! The OAuth2 sources over the async transports (reqwest, hyper-util's
//! legacy client), polled in a tokio driver's task, against the crate's
//! `LocalAuthority` and against raw TCP servers that answer badly: each
//! transport keeps the built-in one's guarantees (no redirect followed, a
//! capped body, timeouts and the machine's deadline, no plain http beyond
//! loopback), and a hostile answer is a typed error, never a panic.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use freshtoken::driver::AsyncSource;
use freshtoken::handle::NoValidToken;
use freshtoken::oauth2::{
    AsyncHttp, AsyncHttpTransport, ClientCredentials, Discovery, HttpRequest, HyperTransport,
    ReqwestTransport,
};
use freshtoken::proto::oauth2::TokenRequest as CoreRequest;
use freshtoken::runtime::Tokio;
use freshtoken::source::{AsyncTokenSource, FetchRequest};
use freshtoken::testing::LocalAuthority;
use freshtoken::{Builder, ClientSecret, FetchError, FetchErrorKind, TokenHandle};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const SECRET: &str = "cs-Transp0rt-9f3a";

/// The transports under test, as a test builds them.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Reqwest,
    Hyper,
}

const KINDS: [Kind; 2] = [Kind::Reqwest, Kind::Hyper];

fn reqwest_transport(timeout: Duration) -> ReqwestTransport {
    ReqwestTransport::new()
        .expect("a reqwest client")
        .timeout(timeout)
}

fn hyper_transport(timeout: Duration) -> HyperTransport<HttpConnector, Full<Bytes>> {
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    HyperTransport::new(client).timeout(timeout)
}

/// Sends `request` over a transport of `kind` with a 64 KiB cap.
async fn send(kind: Kind, timeout: Duration, request: &HttpRequest) -> Result<u16, FetchError> {
    let answer = match kind {
        Kind::Reqwest => reqwest_transport(timeout).send(request, 65_536).await,
        Kind::Hyper => hyper_transport(timeout).send(request, 65_536).await,
    }?;
    Ok(answer.status())
}

/// A client-credentials source for `url` over a transport of `kind`.
fn source(kind: Kind, url: &str, timeout: Duration) -> ClientCredentials<AsyncHttp> {
    let builder = ClientCredentials::builder(url, "svc", SECRET);
    match kind {
        Kind::Reqwest => builder.async_transport(reqwest_transport(timeout)),
        Kind::Hyper => builder.async_transport(hyper_transport(timeout)),
    }
    .build()
    .expect("a loopback URL")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Waits (60 s at most) for a token other than `seen`, and returns its id.
async fn next_token(tokens: &TokenHandle, seen: Option<&str>) -> String {
    let wait = async {
        loop {
            if let Some(token) = tokens.token() {
                let id = token.id().to_string();
                if Some(id.as_str()) != seen {
                    return id;
                }
            }
            tokens.changed().await.expect("the driver runs");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("a new token within 60 s")
}

#[test]
fn async_transports_fetch_and_refresh_in_a_tokio_driver() {
    for kind in KINDS {
        let authority = LocalAuthority::builder()
            .client("svc", SECRET)
            .public_client("desktop")
            // Stale after about a second: the driver refreshes in the test.
            .token_lifetime(Duration::from_secs(2))
            .start()
            .expect("start the local authority");
        let rt = runtime();
        rt.block_on(async {
            // Client credentials.
            let cc = authority.client_credentials("svc");
            let cc = match kind {
                Kind::Reqwest => cc.async_transport(reqwest_transport(Duration::from_secs(30))),
                Kind::Hyper => cc.async_transport(hyper_transport(Duration::from_secs(30))),
            }
            .scope("orders:read")
            .build()
            .unwrap();
            let (tokens, driver) = Builder::new().spawn(Tokio::current().unwrap(), AsyncSource(cc));
            let first = tokio::time::timeout(Duration::from_secs(60), tokens.ready())
                .await
                .expect("a token within 60 s")
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            let info = authority
                .validate_access_token(first.access_token().expose_secret())
                .expect("a token the authority issued");
            assert_eq!(info.client_id, "svc");
            let first = first.id().to_string();
            let second = next_token(&tokens, Some(&first)).await;
            assert_ne!(first, second);
            assert!(authority.grant_count("client_credentials") >= 2, "{kind:?}");
            driver.shutdown().await;

            // Refresh token, rotated at every refresh.
            let refresh = authority.issue_refresh_token("desktop");
            let rt_source = authority.refresh_token_source("desktop");
            let rt_source = match kind {
                Kind::Reqwest => {
                    rt_source.async_transport(reqwest_transport(Duration::from_secs(30)))
                }
                Kind::Hyper => rt_source.async_transport(hyper_transport(Duration::from_secs(30))),
            }
            .refresh_token(refresh)
            .build()
            .unwrap();
            let (tokens, driver) =
                Builder::new().spawn(Tokio::current().unwrap(), AsyncSource(rt_source));
            let first = next_token(&tokens, None).await;
            let second = next_token(&tokens, Some(&first)).await;
            let third = next_token(&tokens, Some(&second)).await;
            assert_ne!(first, third);
            // Each refresh presented the rotated token: none was refused.
            assert!(authority.grant_count("refresh_token") >= 3, "{kind:?}");
            assert!(tokens.valid_token().is_ok(), "{kind:?}");
            driver.shutdown().await;
        });
    }
}

/// A raw HTTP server on loopback: each connection gets `answer` (after the
/// request is read), on a thread; counts connections.
struct RawServer {
    url: String,
    connections: Arc<AtomicUsize>,
}

#[derive(Clone)]
enum Answer {
    /// These bytes, then close.
    Bytes(Vec<u8>),
    /// A 200 head without length, then `a7` until the client hangs up.
    Endless,
    /// Read the request, then say nothing until the client hangs up.
    Silent,
}

impl RawServer {
    fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                std::thread::spawn(move || {
                    read_request(&mut stream);
                    match answer {
                        Answer::Bytes(bytes) => drop(stream.write_all(&bytes)),
                        Answer::Endless => {
                            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"access_token\":\"";
                            if stream.write_all(head.as_bytes()).is_err() {
                                return;
                            }
                            let chunk = "a7".repeat(8192);
                            while stream.write_all(chunk.as_bytes()).is_ok() {}
                        }
                        Answer::Silent => {
                            // Until the client gives up (or 10 minutes).
                            stream
                                .set_read_timeout(Some(Duration::from_secs(600)))
                                .unwrap();
                            let _ = stream.read(&mut [0u8; 1]);
                        }
                    }
                });
            }
        });
        RawServer { url, connections }
    }

    fn json(status: &str, headers: &str, body: &str) -> Self {
        Self::start(Answer::Bytes(response(status, headers, body.as_bytes())))
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

fn read_request(stream: &mut TcpStream) {
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
                return;
            }
        }
    }
}

/// A fetch by a source of `kind` from `url`, bounded by 120 s.
fn fetch(kind: Kind, url: &str, timeout: Duration) -> Result<String, FetchError> {
    let source = source(kind, url, timeout);
    runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(120),
            source.fetch(&FetchRequest::first()),
        )
        .await
        .expect("the fetch ends within 120 s")
        .map(|answer| answer.access_token.expose_secret().to_owned())
    })
}

#[test]
fn redirects_are_not_followed() {
    for kind in KINDS {
        let target = RawServer::json("200 OK", "", r#"{"access_token":"at"}"#);
        let redirect = RawServer::json(
            "307 Temporary Redirect",
            &format!("Location: {}\r\n", target.url),
            "",
        );
        let e = fetch(kind, &redirect.url, Duration::from_secs(30)).unwrap_err();
        assert_eq!(
            (e.kind(), e.status()),
            (FetchErrorKind::Permanent, Some(307)),
            "{kind:?}: {e}"
        );
        assert_eq!(redirect.connections.load(Ordering::SeqCst), 1, "{kind:?}");
        assert_eq!(target.connections.load(Ordering::SeqCst), 0, "{kind:?}");
    }
}

#[test]
fn a_redirecting_authority_ends_the_drivers_wait_with_a_typed_error() {
    for kind in KINDS {
        let target = RawServer::json("200 OK", "", r#"{"access_token":"at"}"#);
        let redirect = RawServer::json(
            "308 Permanent Redirect",
            &format!("Location: {}\r\n", target.url),
            "",
        );
        let source = source(kind, &redirect.url, Duration::from_secs(30));
        runtime().block_on(async {
            let (tokens, driver) =
                Builder::new().spawn(Tokio::current().unwrap(), AsyncSource(source));
            let e = tokio::time::timeout(Duration::from_secs(60), tokens.ready())
                .await
                .expect("an answer within 60 s")
                .unwrap_err();
            let error = match e {
                NoValidToken::NotYetFetched {
                    last_error: Some(error),
                }
                | NoValidToken::Failed { error } => error,
                other => panic!("{kind:?}: {other:?}"),
            };
            assert_eq!(
                (error.kind(), error.status()),
                (FetchErrorKind::Permanent, Some(308))
            );
            driver.shutdown().await;
        });
        assert_eq!(target.connections.load(Ordering::SeqCst), 0, "{kind:?}");
    }
}

#[test]
fn an_endless_answer_is_cut_at_the_cap() {
    for kind in KINDS {
        // Without the cap the read would never end.
        let server = RawServer::start(Answer::Endless);
        let e = fetch(kind, &server.url, Duration::from_secs(600)).unwrap_err();
        assert_eq!(e.kind(), FetchErrorKind::Transient, "{kind:?}: {e}");
        assert!(
            e.message().contains("larger than 65536 bytes"),
            "{kind:?}: {e}"
        );
        assert!(!e.message().contains("a7a7a7a7"), "{kind:?}: {e}");
    }
}

#[test]
fn a_silent_authority_times_out() {
    for kind in KINDS {
        // The transport's own timeout.
        let server = RawServer::start(Answer::Silent);
        let e = fetch(kind, &server.url, Duration::from_millis(500)).unwrap_err();
        assert_eq!(e.kind(), FetchErrorKind::Transient, "{kind:?}: {e}");
        assert!(e.message().contains("timed out"), "{kind:?}: {e}");

        // The machine's deadline, below a transport timeout of an hour.
        let request =
            CoreRequest::client_credentials(server.url.clone(), "svc", ClientSecret::new(SECRET))
                .build(&FetchRequest::first())
                .unwrap()
                .with_timeout(Some(Duration::from_secs(1)));
        let e = runtime().block_on(async {
            tokio::time::timeout(
                Duration::from_secs(120),
                send(kind, Duration::from_secs(3600), &request),
            )
            .await
            .expect("the deadline applies")
            .unwrap_err()
        });
        assert_eq!(e.kind(), FetchErrorKind::Transient, "{kind:?}: {e}");
        assert!(e.message().contains("timed out"), "{kind:?}: {e}");
    }
}

#[test]
fn plain_http_beyond_loopback_is_refused_by_the_transport() {
    // 192.0.2.1 is TEST-NET-1: a connection attempt would hang until the
    // 2 s timeout, a transient error, not the permanent refusal.
    let request =
        CoreRequest::client_credentials("http://192.0.2.1/token", "svc", ClientSecret::new(SECRET))
            .build(&FetchRequest::first())
            .unwrap();
    for kind in KINDS {
        let e = runtime()
            .block_on(send(kind, Duration::from_secs(2), &request))
            .unwrap_err();
        assert_eq!(e.kind(), FetchErrorKind::Permanent, "{kind:?}: {e}");
        assert!(e.message().contains("https"), "{kind:?}: {e}");
    }
    // And the source refuses it when built.
    assert!(
        ClientCredentials::builder("http://192.0.2.1/token", "svc", SECRET)
            .async_transport(reqwest_transport(Duration::from_secs(1)))
            .build()
            .is_err()
    );
}

#[test]
fn hostile_answers_are_typed_errors_not_panics() {
    let huge_header = format!("X-Junk: {}\r\n", "j".repeat(1 << 20));
    let cases: Vec<(&str, Answer)> =
        vec![
        ("not HTTP", Answer::Bytes(b"\x00\xffSSH-2.0-nope\r\n\r\n".to_vec())),
        (
            "truncated body",
            Answer::Bytes(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"access_"
                    .to_vec(),
            ),
        ),
        (
            "a 1 MiB header",
            Answer::Bytes(response("200 OK", &huge_header, br#"{"access_token":"at"}"#)),
        ),
        (
            "not JSON",
            Answer::Bytes(response("200 OK", "", b"<html>hello</html>")),
        ),
        (
            "deep nesting",
            Answer::Bytes(response("200 OK", "", "[".repeat(60_000).as_bytes())),
        ),
        (
            "no access token",
            Answer::Bytes(response("200 OK", "", br#"{"token_type":"Bearer"}"#)),
        ),
        ("nothing at all", Answer::Bytes(Vec::new())),
    ];
    for kind in KINDS {
        for (name, answer) in &cases {
            let server = RawServer::start(answer.clone());
            let e = fetch(kind, &server.url, Duration::from_secs(30)).unwrap_err();
            assert_eq!(e.kind(), FetchErrorKind::Transient, "{kind:?}, {name}: {e}");
            assert!(!e.message().contains(SECRET), "{kind:?}, {name}: {e}");
        }
    }
}

#[test]
fn async_discovery_finds_the_token_endpoint() {
    // A document at the OpenID location, then tokens, from one server.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let document = format!(r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token"}}"#);
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let answer = if head.starts_with("GET /.well-known/openid-configuration ") {
                response("200 OK", "", document.as_bytes())
            } else if head.starts_with("POST /token ") {
                read_rest(&mut stream, &buf[..n]);
                response(
                    "200 OK",
                    "",
                    br#"{"access_token":"from-discovery","expires_in":60}"#,
                )
            } else {
                response("404 Not Found", "", b"")
            };
            drop(stream.write_all(&answer));
        }
    });
    for kind in KINDS {
        let discovery = match kind {
            Kind::Reqwest => {
                Discovery::with_async_transport(&issuer, reqwest_transport(Duration::from_secs(30)))
            }
            Kind::Hyper => {
                Discovery::with_async_transport(&issuer, hyper_transport(Duration::from_secs(30)))
            }
        }
        .unwrap();
        // The source sends over the discovery's transport.
        let source = ClientCredentials::from_issuer(discovery.clone(), "svc")
            .client_secret(SECRET)
            .build()
            .unwrap();
        let token = runtime().block_on(async {
            let metadata = discovery.metadata().await.unwrap();
            assert_eq!(metadata.token_endpoint(), format!("{issuer}/token"));
            source.fetch(&FetchRequest::first()).await
        });
        assert_eq!(
            token.unwrap().access_token.expose_secret(),
            "from-discovery",
            "{kind:?}"
        );
    }
}

/// Reads the rest of a request whose first bytes were `first`.
fn read_rest(stream: &mut TcpStream, first: &[u8]) {
    let mut buf = first.to_vec();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

#[test]
fn outside_a_tokio_runtime_a_request_is_an_error_not_a_panic() {
    let server = RawServer::json("200 OK", "", r#"{"access_token":"at"}"#);
    for kind in KINDS {
        let source = source(kind, &server.url, Duration::from_secs(30));
        let e = futures::executor::block_on(source.fetch(&FetchRequest::first())).unwrap_err();
        assert_eq!(e.kind(), FetchErrorKind::Permanent, "{kind:?}: {e}");
        assert!(e.message().contains("tokio runtime"), "{kind:?}: {e}");
    }
}

/// A blocking transport that records the thread each request is sent from.
struct ThreadRecorder {
    inner: freshtoken::oauth2::UreqTransport,
    threads: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

impl freshtoken::oauth2::HttpTransport for ThreadRecorder {
    fn send(
        &self,
        request: &HttpRequest,
        max_body: usize,
    ) -> Result<freshtoken::oauth2::HttpResponse, FetchError> {
        let name = std::thread::current().name().map(str::to_owned);
        self.threads.lock().unwrap().push(name);
        self.inner.send(request, max_body)
    }
}

#[test]
fn a_blocking_transport_on_an_async_builder_never_blocks_the_task() {
    let authority = LocalAuthority::builder()
        .client("svc", SECRET)
        .start()
        .expect("start the local authority");
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Made async first, then given a blocking client.
    let source = authority
        .client_credentials("svc")
        .async_transport(reqwest_transport(Duration::from_secs(30)))
        .transport(ThreadRecorder {
            inner: freshtoken::oauth2::UreqTransport::new(),
            threads: threads.clone(),
        })
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("the-runtime")
        .build()
        .unwrap();
    let token = rt.block_on(async {
        let (tokens, driver) = Builder::new().spawn(Tokio::current().unwrap(), AsyncSource(source));
        let token = tokio::time::timeout(Duration::from_secs(60), tokens.ready())
            .await
            .expect("a token within 60 s")
            .unwrap();
        let id = token.id().to_string();
        drop(token);
        driver.shutdown().await;
        id
    });
    assert!(!token.is_empty());
    let threads = threads.lock().unwrap().clone();
    assert!(!threads.is_empty());
    // Sent from a thread of its own, neither the runtime's nor its pool's.
    for name in threads {
        assert_eq!(name.as_deref(), Some("freshtoken-http"));
    }
}
