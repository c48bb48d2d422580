//! The cloud identity sources against local servers that implement each
//! documented protocol: the GCE/GKE metadata server, Azure IMDS and the App
//! Service identity endpoint. Each server refuses a request without the
//! protocol's required header, as the real ones do, answers with the
//! protocol's lifetime fields, and caches its token the way metadata
//! servers do (handing back the same token, its life running down, until
//! it renews). The real endpoints are not reachable from CI.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use freshtoken::handle::RefreshState;
use freshtoken::source::{
    AppServiceIdentity, AzureManagedIdentity, CloudIdentityError, FetchRequest, GcpMetadata,
    TokenSource,
};
use freshtoken::{Builder, FetchErrorKind};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
}

/// A response: status, headers, body.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// The metadata-server side of every protocol: a cached token that the
/// server hands back, its life running down, until less than `renew_below`
/// is left (or it expired); then a new one living `lifetime`.
struct TokenCache {
    counter: u32,
    current: Option<(String, Instant)>,
    lifetime: Duration,
    renew_below: Duration,
    /// The first token's remaining life, when it is to arrive nearly
    /// expired.
    first_left: Option<Duration>,
}

impl TokenCache {
    fn new(lifetime: Duration, renew_below: Duration) -> Self {
        TokenCache {
            counter: 0,
            current: None,
            lifetime,
            renew_below,
            first_left: None,
        }
    }

    /// The token to hand out and the time it has left.
    fn token(&mut self, prefix: &str) -> (String, Duration) {
        let now = Instant::now();
        let renew = match &self.current {
            None => true,
            Some((_, expires)) => expires.saturating_duration_since(now) < self.renew_below,
        };
        if renew {
            self.counter += 1;
            let life = match self.first_left.take() {
                Some(left) => left,
                None => self.lifetime,
            };
            self.current = Some((format!("{prefix}-{}", self.counter), now + life));
        }
        let (token, expires) = self.current.clone().expect("a token");
        (token, expires.saturating_duration_since(now))
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A small HTTP/1.1 server on 127.0.0.1: one request per connection (the
/// sources send `Connection: close`), every request logged.
struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (log, handler) = (log.clone(), handler.clone());
                    std::thread::spawn(move || serve(stream, &log, &*handler));
                }
            })
        };
        Server {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<Seen>>, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect();
    let seen = Seen {
        path: path.to_owned(),
        query,
        headers,
    };
    log.lock().unwrap().push(seen.clone());
    let reply = if method == "GET" {
        handler(&seen)
    } else {
        Reply::json(405, r#"{"error":"method_not_allowed"}"#.into())
    };
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (n, v) in &reply.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.body.len(),
        reply.body
    ));
    let mut stream = reader.into_inner();
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}

/// Percent-decoding of one query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Failures to answer with before the protocol's normal answer.
type Faults = Arc<Mutex<Vec<Reply>>>;

fn next_fault(faults: &Faults) -> Option<Reply> {
    let mut f = faults.lock().unwrap();
    (!f.is_empty()).then(|| f.remove(0))
}

// ----- the GCE / GKE metadata server -----

const GCE_ACCOUNT: &str = "reports@proj-1.iam.gserviceaccount.com";

/// The metadata server as Google documents it: `Metadata-Flavor: Google`
/// required (403 without it, or with `X-Forwarded-For`), the token path
/// for `default` or a known account (404 otherwise), `expires_in` in the
/// answer, `Metadata-Flavor: Google` on every answer.
fn gce_server(cache: TokenCache, faults: Faults) -> Server {
    let cache = Mutex::new(cache);
    Server::start(move |req| {
        let flavor = |r: Reply| r.header("Metadata-Flavor", "Google");
        if req.headers.get("metadata-flavor").map(String::as_str) != Some("Google")
            || req.headers.contains_key("x-forwarded-for")
        {
            return flavor(Reply {
                status: 403,
                headers: vec![("Content-Type", "text/html".into())],
                body: "Missing Metadata-Flavor:Google header.".into(),
            });
        }
        let account = req
            .path
            .strip_prefix("/computeMetadata/v1/instance/service-accounts/")
            .and_then(|p| p.strip_suffix("/token"));
        match account {
            Some("default") | Some(GCE_ACCOUNT) => {}
            _ => {
                return flavor(Reply {
                    status: 404,
                    headers: vec![("Content-Type", "text/html".into())],
                    body: "Not Found".into(),
                })
            }
        }
        if let Some(fault) = next_fault(&faults) {
            return flavor(fault);
        }
        let (token, left) = cache.lock().unwrap().token("ya29.gce");
        flavor(Reply::json(
            200,
            format!(
                r#"{{"access_token":"{token}","expires_in":{},"token_type":"Bearer"}}"#,
                left.as_secs()
            ),
        ))
    })
}

fn gce_source(server: &Server) -> freshtoken::source::GcpMetadataBuilder {
    GcpMetadata::builder().host(server.addr.to_string())
}

#[test]
fn gce_driver_gets_a_token_and_refreshes_it() {
    let server = gce_server(
        TokenCache::new(Duration::from_secs(4), Duration::from_secs(1)),
        Faults::default(),
    );
    let source = gce_source(&server)
        .service_account(GCE_ACCOUNT)
        .scopes([
            "https://www.googleapis.com/auth/cloud-platform",
            "https://www.googleapis.com/auth/userinfo.email",
        ])
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "ya29.gce-1");
    let lifetime = first
        .expires_at()
        .saturating_duration_since(first.issued_at());
    assert!(lifetime <= Duration::from_secs(4), "{lifetime:?}");
    drop(first);
    // A 4 s token is renewed before it expires: the server renews its
    // cache with less than a second left, so a later request gets -2.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens
        .token()
        .is_some_and(|t| t.access_token().expose_secret() == "ya29.gce-1")
    {
        assert!(Instant::now() < deadline, "no refresh");
        let _ = tokens.wait_changed(Duration::from_millis(200));
    }
    assert_eq!(
        tokens.token().unwrap().access_token().expose_secret(),
        "ya29.gce-2"
    );
    driver.shutdown_blocking();
    let log = server.requests();
    for r in &log {
        assert_eq!(r.headers["metadata-flavor"], "Google");
        assert!(!r.headers.contains_key("x-forwarded-for"));
        assert_eq!(
            r.path,
            format!("/computeMetadata/v1/instance/service-accounts/{GCE_ACCOUNT}/token")
        );
        assert_eq!(
            r.query["scopes"],
            "https://www.googleapis.com/auth/cloud-platform,https://www.googleapis.com/auth/userinfo.email"
        );
    }
}

#[test]
fn gce_server_refuses_requests_without_the_header() {
    // The local server is as strict as the real one: without the header,
    // or through a proxy that adds X-Forwarded-For, 403.
    let server = gce_server(
        TokenCache::new(Duration::from_secs(3600), Duration::from_secs(300)),
        Faults::default(),
    );
    let url = format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/token",
        server.base()
    );
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let bare = agent.get(&url).call().unwrap();
    assert_eq!(bare.status().as_u16(), 403);
    let proxied = agent
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .header("X-Forwarded-For", "10.0.0.1")
        .call()
        .unwrap();
    assert_eq!(proxied.status().as_u16(), 403);
    let ok = agent
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .call()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

#[test]
fn gce_errors_are_classified_as_google_documents_them() {
    let faults = Faults::default();
    let server = gce_server(
        TokenCache::new(Duration::from_secs(3600), Duration::from_secs(300)),
        faults.clone(),
    );
    let source = gce_source(&server).build().unwrap();
    let fetch = || source.fetch(&FetchRequest::first());

    faults.lock().unwrap().push(Reply {
        status: 503,
        headers: vec![],
        body: "starting".into(),
    });
    let e = fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Transient, Some(503))
    );

    faults
        .lock()
        .unwrap()
        .push(Reply::json(429, "{}".into()).header("Retry-After", "7"));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    let unknown = gce_source(&server)
        .service_account("nobody@proj-1.iam.gserviceaccount.com")
        .build()
        .unwrap();
    let e = unknown.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(404))
    );
    assert!(e.message().contains("no such service account"), "{e}");

    // An answer without Metadata-Flavor: Google is not the metadata server.
    let impostor = Server::start(|_| {
        Reply::json(
            200,
            r#"{"access_token":"evil","expires_in":3600,"token_type":"Bearer"}"#.into(),
        )
    });
    let e = GcpMetadata::builder()
        .host(impostor.addr.to_string())
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Permanent);
    assert!(e.message().contains("Metadata-Flavor"), "{e}");

    let answer = fetch().unwrap();
    assert_eq!(answer.access_token.expose_secret(), "ya29.gce-1");
}

#[test]
fn gce_metadata_host_comes_from_the_environment_and_plain_http_is_confined() {
    // GCE_METADATA_HOST names the server (host:port, as Google's libraries
    // read it). Only this test sets it.
    let server = gce_server(
        TokenCache::new(Duration::from_secs(3600), Duration::from_secs(300)),
        Faults::default(),
    );
    std::env::set_var("GCE_METADATA_HOST", server.addr.to_string());
    let source = GcpMetadata::builder().build();
    std::env::remove_var("GCE_METADATA_HOST");
    let source = source.unwrap();
    assert!(source.url().starts_with(&server.base()), "{}", source.url());
    assert_eq!(
        source
            .fetch(&FetchRequest::first())
            .unwrap()
            .access_token
            .expose_secret(),
        "ya29.gce-1"
    );
    // The default is the documented address.
    assert!(GcpMetadata::builder()
        .build()
        .unwrap()
        .url()
        .starts_with("http://169.254.169.254/computeMetadata/v1/"));
    assert!(GcpMetadata::builder()
        .host("metadata.google.internal")
        .build()
        .is_ok());
    // Plain http anywhere else is refused, before any request.
    for host in ["10.0.0.1", "metadata.example.com", "169.254.169.254:8080"] {
        let err = GcpMetadata::builder().host(host).build().unwrap_err();
        assert!(
            matches!(err, CloudIdentityError::Insecure { .. }),
            "{host}: {err}"
        );
    }
    assert!(matches!(
        GcpMetadata::builder().service_account("../../x").build(),
        Err(CloudIdentityError::InvalidParameter { .. })
    ));
}

/// A token that arrives nearly expired, and that the metadata server keeps
/// handing back until it has less than a second left: the driver serves it
/// for the life it really has, asks again a handful of times, not as fast
/// as the server answers, keeps its status healthy while the server repeats
/// itself (a repeat is not a failure), and has the renewed token when it
/// comes.
#[test]
fn a_nearly_expired_cached_token_does_not_cause_a_storm() {
    let mut cache = TokenCache::new(Duration::from_secs(3600), Duration::from_secs(1));
    // "90 s left out of an hour", scaled to 6 s so the test is short.
    cache.first_left = Some(Duration::from_secs(6));
    let server = gce_server(cache, Faults::default());
    let source = gce_source(&server).build().unwrap();
    let started = Instant::now();
    // The machine's refresh floor scaled down with the token's life (the
    // default 5 s would leave room for a single repeat in 6 s).
    let floor = Duration::from_millis(500);
    let (tokens, driver) = Builder::new()
        .min_refresh_interval(floor)
        .spawn_thread(source)
        .unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "ya29.gce-1");
    // Its life is what the server said was left, not an hour.
    let life = first
        .expires_at()
        .saturating_duration_since(first.issued_at());
    assert!(life <= Duration::from_secs(6), "{life:?}");
    drop(first);
    // Until the renewed token comes, every status seen is healthy: the
    // server handing back its cached token is no failure to report.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut looks = 0u32;
    loop {
        let status = tokens.status();
        if tokens
            .token()
            .is_some_and(|t| t.access_token().expose_secret() == "ya29.gce-2")
        {
            break;
        }
        assert!(
            matches!(status, RefreshState::Healthy),
            "while the server repeats its token: {status:?}"
        );
        looks += 1;
        assert!(Instant::now() < deadline, "the renewed token never came");
        let _ = tokens.wait_changed(Duration::from_millis(50));
    }
    // The server did hand the first token back (more than one request
    // before the renewal), so the loop above watched the repeats.
    let before_renewal = server.requests().len() - 1;
    assert!(before_renewal >= 2, "{before_renewal} requests for gce-1");
    let renewed = tokens.token().unwrap();
    let life = renewed
        .expires_at()
        .saturating_duration_since(renewed.issued_at());
    assert!(life > Duration::from_secs(3000), "{life:?}");
    assert!(matches!(tokens.status(), RefreshState::Healthy));
    drop(renewed);
    driver.shutdown_blocking();
    let requests = server.requests().len();
    let elapsed = started.elapsed();
    // At most one request per refresh floor once the server has repeated
    // itself (plus the first, the first repeat and the renewal). Without
    // the machine's rule it asks again as soon as each repeat arrives:
    // hundreds of requests.
    let bound = 4 + (elapsed.as_millis() / floor.as_millis()) as usize;
    eprintln!(
        "{requests} requests in {elapsed:?} (bound {bound}); {before_renewal} before the \
         renewal, status looked at {looks} times"
    );
    assert!(requests <= bound, "{requests} requests in {elapsed:?}");
}

// ----- Azure IMDS -----

const AZ_RESOURCE: &str = "https://vault.azure.net";
const AZ_CLIENT_ID: &str = "6f1c2b3a-0000-4000-8000-00000000c1d0";

/// IMDS as Azure documents it: `Metadata: true` required (400
/// `bad_request_102` without it), `api-version` and `resource` required,
/// a user-assigned identity by `client_id` (400 "Identity not found" for
/// an unknown one), `expires_in` and `expires_on` as strings.
fn imds_server(cache: TokenCache, faults: Faults) -> Server {
    let cache = Mutex::new(cache);
    Server::start(move |req| {
        if req.headers.get("metadata").map(String::as_str) != Some("true") {
            return Reply::json(
                400,
                r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#.into(),
            );
        }
        if req.path != "/metadata/identity/oauth2/token" {
            return Reply::json(404, r#"{"error":"not_found"}"#.into());
        }
        if req.query.get("api-version").map(String::as_str) != Some("2018-02-01") {
            return Reply::json(
                400,
                r#"{"error":"invalid_request","error_description":"Invalid or missing api-version"}"#.into(),
            );
        }
        let Some(resource) = req.query.get("resource") else {
            return Reply::json(
                400,
                r#"{"error":"invalid_request","error_description":"Required query variable 'resource' is missing"}"#.into(),
            );
        };
        if let Some(id) = req.query.get("client_id") {
            if id != AZ_CLIENT_ID {
                return Reply::json(
                    400,
                    r#"{"error":"invalid_request","error_description":"Identity not found"}"#
                        .into(),
                );
            }
        }
        if let Some(fault) = next_fault(&faults) {
            return fault;
        }
        let (token, left) = cache.lock().unwrap().token("eyJ.imds");
        let now = epoch_secs();
        Reply::json(
            200,
            format!(
                r#"{{"access_token":"{token}","refresh_token":"","expires_in":"{}","expires_on":"{}","not_before":"{}","resource":"{resource}","token_type":"Bearer"}}"#,
                left.as_secs(),
                now + left.as_secs(),
                now
            ),
        )
    })
}

fn imds_source(server: &Server) -> freshtoken::source::AzureManagedIdentityBuilder {
    AzureManagedIdentity::builder(AZ_RESOURCE)
        .endpoint(format!("{}/metadata/identity/oauth2/token", server.base()))
}

#[test]
fn imds_driver_gets_a_token_for_a_user_assigned_identity_and_refreshes_it() {
    let server = imds_server(
        TokenCache::new(Duration::from_secs(4), Duration::from_secs(1)),
        Faults::default(),
    );
    let source = imds_source(&server)
        .client_id(AZ_CLIENT_ID)
        .unwrap()
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "eyJ.imds-1");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens
        .token()
        .is_some_and(|t| t.access_token().expose_secret() == "eyJ.imds-1")
    {
        assert!(Instant::now() < deadline, "no refresh");
        let _ = tokens.wait_changed(Duration::from_millis(200));
    }
    driver.shutdown_blocking();
    for r in server.requests() {
        assert_eq!(r.headers["metadata"], "true");
        assert_eq!(r.query["resource"], AZ_RESOURCE);
        assert_eq!(r.query["client_id"], AZ_CLIENT_ID);
    }
}

#[test]
fn imds_errors_are_classified_as_azure_documents_them() {
    let faults = Faults::default();
    let server = imds_server(
        TokenCache::new(Duration::from_secs(86_400), Duration::from_secs(300)),
        faults.clone(),
    );
    let source = imds_source(&server).build().unwrap();
    let fetch = || source.fetch(&FetchRequest::first());
    let push = |r: Reply| faults.lock().unwrap().push(r);

    // 404: IMDS is updating; retried, at least a second apart.
    push(Reply::json(404, "{}".into()));
    let e = fetch().unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Transient, Some(404))
    );
    assert!(e.retry_after() >= Some(Duration::from_secs(1)));
    // 410: updating, back within 70 s; every 10 s.
    push(Reply::json(410, "{}".into()));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(10)));
    // 429: throttled; a Retry-After longer than the floor is kept.
    push(Reply::json(429, "{}".into()).header("Retry-After", "12"));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(12)));
    // 5xx: transient, no sooner than a second.
    push(Reply::json(
        500,
        r#"{"error":"unknown","error_description":"Failed to retrieve token from the Active directory"}"#.into(),
    ));
    let e = fetch().unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    // 400: an identity this VM does not have is permanent.
    let e = imds_source(&server)
        .client_id("not-assigned")
        .unwrap()
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(400))
    );
    assert!(e.message().contains("Identity not found"), "{e}");

    // The server refuses a request without `Metadata: true`, as IMDS does.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let bare = agent
        .get(format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
            server.base()
        ))
        .call()
        .unwrap();
    assert_eq!(bare.status().as_u16(), 400);

    let answer = fetch().unwrap();
    let left = answer.expires_in.unwrap();
    assert!((86_390..=86_400).contains(&left), "{left}");

    // Naming the identity twice is an error; plain http only to IMDS.
    assert!(AzureManagedIdentity::builder(AZ_RESOURCE)
        .client_id("a")
        .unwrap()
        .object_id("b")
        .is_err());
    assert!(AzureManagedIdentity::builder(AZ_RESOURCE).build().is_ok());
    let err = AzureManagedIdentity::builder(AZ_RESOURCE)
        .endpoint("http://169.254.169.253/metadata/identity/oauth2/token")
        .build()
        .unwrap_err();
    assert!(matches!(err, CloudIdentityError::Insecure { .. }), "{err}");
}

// ----- App Service / Functions -----

const IDENTITY_HEADER: &str = "a8f1e0c4-identity-header-5d2b";

/// The App Service identity endpoint (api-version 2019-08-01): the
/// `X-IDENTITY-HEADER` required (401 without it or with a wrong one),
/// `resource` and `api-version` required, `expires_on` in epoch seconds and
/// no `expires_in`.
fn app_service_server(cache: TokenCache) -> Server {
    let cache = Mutex::new(cache);
    Server::start(move |req| {
        if req.headers.get("x-identity-header").map(String::as_str) != Some(IDENTITY_HEADER) {
            return Reply::json(401, r#"{"statusCode":401,"message":"Unauthorized"}"#.into());
        }
        if req.query.get("api-version").map(String::as_str) != Some("2019-08-01") {
            return Reply::json(400, r#"{"statusCode":400,"message":"api-version"}"#.into());
        }
        let Some(resource) = req.query.get("resource") else {
            return Reply::json(400, r#"{"statusCode":400,"message":"resource"}"#.into());
        };
        let (token, left) = cache.lock().unwrap().token("eyJ.appsvc");
        let now = epoch_secs();
        Reply::json(
            200,
            format!(
                r#"{{"access_token":"{token}","expires_on":"{}","resource":"{resource}","token_type":"Bearer","client_id":"{AZ_CLIENT_ID}"}}"#,
                now + left.as_secs()
            ),
        )
    })
}

#[test]
fn app_service_driver_takes_the_lifetime_from_expires_on_and_refreshes() {
    let server = app_service_server(TokenCache::new(
        Duration::from_secs(5),
        Duration::from_secs(1),
    ));
    let endpoint = format!("{}/msi/token", server.base());
    let source = AppServiceIdentity::builder(&endpoint, IDENTITY_HEADER, AZ_RESOURCE)
        .build()
        .unwrap();
    assert!(!format!("{source:?}").contains(IDENTITY_HEADER));
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let first = tokens.wait_ready(Duration::from_secs(20)).expect("a token");
    assert_eq!(first.access_token().expose_secret(), "eyJ.appsvc-1");
    // expires_on is whole seconds: the life is at most the 5 s, and not
    // the lifetime policy's 300 s default.
    let life = first
        .expires_at()
        .saturating_duration_since(first.issued_at());
    assert!(
        life <= Duration::from_secs(5) && life >= Duration::from_secs(3),
        "{life:?}"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokens
        .token()
        .is_some_and(|t| t.access_token().expose_secret() == "eyJ.appsvc-1")
    {
        assert!(Instant::now() < deadline, "no refresh");
        let _ = tokens.wait_changed(Duration::from_millis(200));
    }
    driver.shutdown_blocking();
    for r in server.requests() {
        assert_eq!(r.headers["x-identity-header"], IDENTITY_HEADER);
        assert_eq!(r.query["api-version"], "2019-08-01");
        assert_eq!(r.query["resource"], AZ_RESOURCE);
    }

    // A wrong identity header is refused (permanent), and never shown.
    let wrong = AppServiceIdentity::builder(&endpoint, "stale-header-value", AZ_RESOURCE)
        .build()
        .unwrap();
    let e = wrong.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(401))
    );
    assert!(!format!("{e} {e:?}").contains("stale-header-value"));

    // Plain http to loopback or a link-local address only.
    assert!(
        AppServiceIdentity::builder("http://169.254.255.2:8081/msi/token", "h", "r")
            .build()
            .is_ok()
    );
    let err = AppServiceIdentity::builder("http://172.16.0.9:8081/msi/token", "h", "r")
        .build()
        .unwrap_err();
    assert!(matches!(err, CloudIdentityError::Insecure { .. }), "{err}");
}
