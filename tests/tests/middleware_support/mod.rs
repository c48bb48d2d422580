//! What the middleware tests share: a real API server (hyper, on a loopback
//! port) that checks bearer tokens against a [`LocalAuthority`], a log
//! capture, and the secret checks.
#![allow(dead_code)]

use std::collections::HashSet;
use std::convert::Infallible;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use freshtoken::testing::LocalAuthority;
use freshtoken::TokenId;
use freshtoken_tests::log_capture::Capture;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub const CLIENT: &str = "svc";
pub const CLIENT_SECRET: &str = "client-s3cret-never-in-logs";

/// One request as the API saw it (no token, only its id).
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub token: Option<TokenId>,
    /// The id of what came in `x-api-key`, if anything did.
    pub api_key: Option<TokenId>,
    pub status: u16,
    pub body: Vec<u8>,
}

/// A real API on `127.0.0.1`: `GET/POST /<anything>` needs a bearer token
/// the authority issued, unexpired and unrevoked.
///
/// * `/aud/<audience>`: also requires that audience (the token's `aud`),
///   answering 401 `invalid_token` otherwise, as a resource server does;
/// * `/always-401`: answers 401 `invalid_token` whatever the token;
/// * `/admin`: answers 403 `insufficient_scope` to any valid token;
/// * `/redirect-to/<port>/<path>`: answers 302 to
///   `http://127.0.0.1:<port>/<path>` (another origin), whatever the token;
/// * anything else: 200 with the request body echoed and `x-audience`.
pub struct Api {
    pub addr: SocketAddr,
    pub authority: Arc<LocalAuthority>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tokens: Arc<Mutex<HashSet<String>>>,
    gate: Arc<Gate>,
    task: tokio::task::JoinHandle<()>,
}

/// Holds rejections back until a number of them have arrived, so that a
/// concurrency test sees every request rejected before any refresh.
#[derive(Default)]
pub struct Gate {
    /// How many rejections to gather; 0: none held.
    target: std::sync::atomic::AtomicUsize,
    arrived: std::sync::atomic::AtomicUsize,
    open: tokio::sync::Notify,
}

impl Gate {
    async fn pass(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let target = self.target.load(SeqCst);
        if target == 0 {
            return;
        }
        let notified = self.open.notified();
        if self.arrived.fetch_add(1, SeqCst) + 1 >= target {
            self.target.store(0, SeqCst);
            self.open.notify_waiters();
            return;
        }
        // Bounded: a broken test must not hang.
        let _ = tokio::time::timeout(Duration::from_secs(10), notified).await;
    }
}

impl Api {
    /// Starts the API on the current tokio runtime.
    pub async fn start(authority: Arc<LocalAuthority>) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(Mutex::new(HashSet::new()));
        let gate = Arc::new(Gate::default());
        let (a, s, t, g) = (
            authority.clone(),
            seen.clone(),
            tokens.clone(),
            gate.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (a, s, t, g) = (a.clone(), s.clone(), t.clone(), g.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (a, s, t, g) = (a.clone(), s.clone(), t.clone(), g.clone());
                        async move { Ok::<_, Infallible>(answer(&a, &s, &t, &g, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Api {
            addr,
            authority,
            seen,
            tokens,
            gate,
            task,
        }
    }

    /// Holds the next rejections until `n` of them have arrived (at most
    /// 10 s), then answers them all.
    pub fn hold_rejections(&self, n: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        self.gate.arrived.store(0, SeqCst);
        self.gate.target.store(n, SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn seen_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every bearer token presented so far (for the secret checks).
    pub fn tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().iter().cloned().collect()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn www_authenticate(error: &str) -> String {
    format!("Bearer realm=\"api\", error=\"{error}\"")
}

async fn answer(
    authority: &LocalAuthority,
    seen: &Mutex<Vec<Seen>>,
    tokens: &Mutex<HashSet<String>>,
    gate: &Gate,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let api_key = req
        .headers()
        .get("x-api-key")
        .map(|v| TokenId::of(v.as_bytes()));
    if let Some(rest) = path.strip_prefix("/redirect-to/") {
        let (port, target) = rest.split_once('/').unwrap_or((rest, ""));
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            token: bearer.as_deref().map(|t| TokenId::of(t.as_bytes())),
            api_key,
            status: 302,
            body: Vec::new(),
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::FOUND;
        response.headers_mut().insert(
            "location",
            format!("http://127.0.0.1:{port}/{target}").parse().unwrap(),
        );
        return response;
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => b"<unreadable>".to_vec(),
    };
    if let Some(t) = &bearer {
        tokens.lock().unwrap().insert(t.clone());
    }
    let info = bearer
        .as_deref()
        .map(|t| authority.validate_access_token(t));
    let (status, challenge, audience) = match info {
        None => (401, Some("Bearer realm=\"api\"".to_owned()), None),
        Some(Err(_)) => (401, Some(www_authenticate("invalid_token")), None),
        Some(Ok(info)) => {
            if path == "/always-401" {
                (401, Some(www_authenticate("invalid_token")), None)
            } else if path == "/admin" {
                (403, Some(www_authenticate("insufficient_scope")), None)
            } else if let Some(aud) = path.strip_prefix("/aud/") {
                if info.audiences.iter().any(|a| a == aud) {
                    (200, None, Some(aud.to_owned()))
                } else {
                    (401, Some(www_authenticate("invalid_token")), None)
                }
            } else {
                (200, None, info.audiences.first().cloned())
            }
        }
    };
    if status == 401 {
        gate.pass().await;
    }
    seen.lock().unwrap().push(Seen {
        path,
        token: bearer.as_deref().map(|t| TokenId::of(t.as_bytes())),
        api_key,
        status,
        body: body.clone(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(c) = challenge {
        response
            .headers_mut()
            .insert("www-authenticate", c.parse().unwrap());
    }
    if let Some(a) = audience {
        response
            .headers_mut()
            .insert("x-audience", a.parse().unwrap());
    }
    response
}

/// A local authority with the test client and 60 s tokens.
pub fn authority() -> Arc<LocalAuthority> {
    Arc::new(
        LocalAuthority::builder()
            .client(CLIENT, CLIENT_SECRET)
            .token_lifetime(Duration::from_secs(60))
            .start()
            .unwrap(),
    )
}

/// Waits (bounded, 10 s) until `f` holds.
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not within 10 s: {what}");
}

/// The process-wide log (installed on first use).
pub fn logs() -> Arc<Mutex<String>> {
    static LOGS: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        tracing::subscriber::set_global_default(Capture(logs.clone()))
            .expect("the only subscriber");
        logs
    })
    .clone()
}

/// Fails if any token the API saw, or the client secret, is in `text`.
pub fn assert_no_secret(api: &Api, what: &str, text: &str) {
    assert!(
        !text.contains(CLIENT_SECRET),
        "{what} shows the client secret"
    );
    for token in api.tokens() {
        assert!(!text.contains(&token), "{what} shows an access token");
        // A JWT's payload alone is a secret too.
        if let Some(payload) = token.split('.').nth(1) {
            assert!(!text.contains(payload), "{what} shows a token's payload");
        }
    }
}

/// The captured logs hold no token or secret, and the middleware did log.
pub fn assert_logs_clean(api: &Api) {
    let logs = logs().lock().unwrap().clone();
    assert!(!api.tokens().is_empty(), "the test sent no token");
    assert_no_secret(api, "the logs", &logs);
}
