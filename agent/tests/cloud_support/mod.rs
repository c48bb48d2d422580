//! Local servers for the cloud identity endpoints, each implementing its
//! documented protocol: the GCE/GKE metadata server, Azure IMDS and the App
//! Service identity endpoint. Each refuses a request without the
//! protocol's required header, as the real ones do, answers with the
//! protocol's lifetime fields, and caches its token the way metadata
//! servers do (handing back the same token, its life running down, until
//! it renews). Used by the agent's cloud test (agent_cloud.rs) and, through
//! a `#[path]`, by tests/tests/cloud_identity.rs; it lives here so that the
//! agent's package builds its tests on its own.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HashMap<String, String>,
}

/// A response: status, headers, body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// The metadata-server side of every protocol: a cached token that the
/// server hands back, its life running down, until less than `renew_below`
/// is left (or it expired); then a new one living `lifetime`.
pub struct TokenCache {
    counter: u32,
    current: Option<(String, Instant)>,
    pub lifetime: Duration,
    pub renew_below: Duration,
    /// The first token's remaining life, when it is to arrive nearly
    /// expired.
    pub first_left: Option<Duration>,
}

impl TokenCache {
    pub fn new(lifetime: Duration, renew_below: Duration) -> Self {
        TokenCache {
            counter: 0,
            current: None,
            lifetime,
            renew_below,
            first_left: None,
        }
    }

    /// The token to hand out and the time it has left.
    pub fn token(&mut self, prefix: &str) -> (String, Duration) {
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
pub struct Server {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
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

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
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

pub fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Failures to answer with before the protocol's normal answer.
pub type Faults = Arc<Mutex<Vec<Reply>>>;

pub fn next_fault(faults: &Faults) -> Option<Reply> {
    let mut f = faults.lock().unwrap();
    (!f.is_empty()).then(|| f.remove(0))
}

// ----- the GCE / GKE metadata server -----

pub const GCE_ACCOUNT: &str = "reports@proj-1.iam.gserviceaccount.com";

/// The metadata server as Google documents it: `Metadata-Flavor: Google`
/// required (403 without it, or with `X-Forwarded-For`), the token path
/// for `default` or a known account (404 otherwise), `expires_in` in the
/// answer, `Metadata-Flavor: Google` on every answer.
pub fn gce_server(cache: TokenCache, faults: Faults) -> Server {
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

// ----- Azure IMDS -----

pub const AZ_RESOURCE: &str = "https://vault.azure.net";
pub const AZ_CLIENT_ID: &str = "6f1c2b3a-0000-4000-8000-00000000c1d0";

/// IMDS as Azure documents it: `Metadata: true` required (400
/// `bad_request_102` without it), `api-version` and `resource` required,
/// a user-assigned identity by `client_id` (400 "Identity not found" for
/// an unknown one), `expires_in` and `expires_on` as strings.
pub fn imds_server(cache: TokenCache, faults: Faults) -> Server {
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

// ----- App Service / Functions -----

pub const IDENTITY_HEADER: &str = "a8f1e0c4-identity-header-5d2b";

/// The App Service identity endpoint (api-version 2019-08-01): the
/// `X-IDENTITY-HEADER` required (401 without it or with a wrong one),
/// `resource` and `api-version` required, `expires_on` in epoch seconds and
/// no `expires_in`.
pub fn app_service_server(cache: TokenCache) -> Server {
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
