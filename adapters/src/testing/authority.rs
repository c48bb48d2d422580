//! The local authority's server, grants and bookkeeping.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use freshtoken_core::oauth2::{form, ClientAuth};
use freshtoken_core::{Clock, RefreshToken, Timestamp};
use serde_json::{json, Value};

use super::faults::{Fault, FaultPlan, FaultWindow, RetryAfter};
use crate::clock::SystemClock;
use crate::oauth2::{ClientCredentials, RefreshTokenSource, SourceBuilder};

/// Requests larger than this are refused; real token requests are tiny.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Threads answering requests, so that a hanging answer does not hold up
/// the others.
const WORKERS: usize = 8;

/// What the authority did with one token request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A token was issued.
    Issued {
        /// A new refresh token replaced the presented one.
        rotated: bool,
    },
    /// An RFC 6749 error answer.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The `error` code.
        error: String,
    },
    /// A fault from the plan answered instead of the grant logic.
    Faulted,
}

/// One token request, as the authority saw it. It holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedRequest {
    /// When it arrived, on the authority's clock.
    pub at: Timestamp,
    /// The `grant_type` parameter.
    pub grant_type: Option<String>,
    /// The client, however it identified itself.
    pub client_id: Option<String>,
    /// How the client authenticated, if it did.
    pub client_auth: Option<ClientAuth>,
    /// Whether the body was JSON rather than a form.
    pub json_body: bool,
    /// The `scope` parameter.
    pub scope: Option<String>,
    /// The `audience` parameter.
    pub audience: Option<String>,
    /// The `resource` parameters.
    pub resources: Vec<String>,
    /// The fault from the plan that applied, if any (a [`Fault::Hang`] is
    /// followed by a normal outcome).
    pub fault: Option<Fault>,
    /// A refresh token that had already been rotated was accepted again,
    /// within the reuse interval (see
    /// [`LocalAuthorityBuilder::refresh_token_reuse_interval`]).
    pub reused_refresh_token: bool,
    /// What happened.
    pub outcome: Outcome,
}

/// What [`LocalAuthority::validate_access_token`] knows of a valid token.
/// It holds no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessTokenInfo {
    /// The client it was issued to.
    pub client_id: String,
    /// Its audiences: the `audience` parameter, else the `resource`s.
    pub audiences: Vec<String>,
    /// The scope it was issued with.
    pub scope: Option<String>,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// Why [`LocalAuthority::validate_access_token`] refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRejection {
    /// This authority did not issue it.
    Unknown,
    /// It has expired.
    Expired,
    /// It was revoked.
    Revoked,
}

/// Builds a [`LocalAuthority`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LocalAuthorityBuilder {
    clients: HashMap<String, Option<String>>,
    lifetime: Duration,
    send_expires_in: bool,
    refresh_in: Option<i64>,
    rotate: bool,
    reuse_interval: Duration,
    clock: Option<Arc<dyn ClockDebug>>,
}

/// A `Clock` that can sit in a `Debug` struct.
trait ClockDebug: Clock {}
impl<C: Clock> ClockDebug for C {}
impl fmt::Debug for dyn ClockDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

impl LocalAuthorityBuilder {
    /// Registers a confidential client; it may authenticate with
    /// `client_secret_basic` or `client_secret_post`.
    pub fn client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.clients.insert(id.into(), Some(secret.into()));
        self
    }

    /// Registers a public client (no secret; refresh-token grant only).
    pub fn public_client(mut self, id: impl Into<String>) -> Self {
        self.clients.insert(id.into(), None);
        self
    }

    /// How long issued access tokens live (default 60 s). The JWT `iat` and
    /// `exp` claims carry milliseconds; `expires_in` is whole seconds,
    /// rounded down.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Whether answers carry `expires_in` (default yes). Without it clients
    /// must read the JWT's `exp`.
    pub fn send_expires_in(mut self, send: bool) -> Self {
        self.send_expires_in = send;
        self
    }

    /// Whether answers carry a refresh hint, `refresh_in` (seconds, as sent:
    /// zero or negative are sent as they are), as Entra ID's do (default
    /// none). The token's lifetime and `expires_in` do not change; the hint
    /// tells the client to renew sooner. Changeable later with
    /// [`LocalAuthority::set_refresh_in`].
    pub fn refresh_in(mut self, seconds: Option<i64>) -> Self {
        self.refresh_in = seconds;
        self
    }

    /// Whether a refresh replaces the refresh token (default yes). A used
    /// refresh token is then dead, and presenting it again revokes the whole
    /// chain it belongs to, as OAuth 2.1 recommends.
    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> Self {
        self.rotate = rotate;
        self
    }

    /// How long a rotated refresh token stays usable after its first use
    /// (default zero: a second use is a replay). Real authorities offer
    /// this (Auth0's "reuse interval", Okta's "grace period") because a
    /// client can die after the authority rotated its refresh token and
    /// before it saved the new one; the old one then still works for this
    /// long. A reuse within the interval is logged
    /// ([`LoggedRequest::reused_refresh_token`]); after it, it is a replay.
    ///
    /// ```
    /// use freshtoken::testing::LocalAuthority;
    /// use freshtoken::source::TokenSource;
    /// use freshtoken::source::FetchRequest;
    /// use std::time::Duration;
    ///
    /// let authority = LocalAuthority::builder()
    ///     .client("app", "app-secret")
    ///     .refresh_token_reuse_interval(Duration::from_secs(30))
    ///     .start()?;
    /// let source = authority.refresh_token_source("app").build()?;
    /// let first = authority.issue_refresh_token("app");
    /// source.fetch(&FetchRequest::new(1, Some(first.clone())))?;
    /// // The client lost the rotated token; the old one still works, within the interval.
    /// source.fetch(&FetchRequest::new(1, Some(first)))?;
    /// assert!(authority.requests()[1].reused_refresh_token);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn refresh_token_reuse_interval(mut self, interval: Duration) -> Self {
        self.reuse_interval = interval;
        self
    }

    /// The clock used for token times, `Date` headers and fault windows
    /// (default the system clock). A `ManualClock` set apart from the
    /// system clock makes an authority with a skewed clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Starts the server on `127.0.0.1` with an ephemeral port.
    pub fn start(self) -> io::Result<LocalAuthority> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the server has no IP address"))?;
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            clients: self.clients,
            send_expires_in: self.send_expires_in,
            rotate: self.rotate,
            reuse_interval: self.reuse_interval,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            stopping: AtomicBool::new(false),
            hanging: AtomicUsize::new(0),
            nonce: RandomState::new().hash_one(addr),
            state: Mutex::new(State {
                lifetime: self.lifetime,
                refresh_in: self.refresh_in,
                faults: FaultPlan::new(),
                refresh: HashMap::new(),
                revoked_families: HashSet::new(),
                access: HashMap::new(),
                next_id: 1,
                log: Vec::new(),
            }),
        });
        let server = Arc::new(server);
        let mut workers = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let (server, shared) = (Arc::clone(&server), Arc::clone(&shared));
            let worker = std::thread::Builder::new()
                .name(format!("local-authority-{i}"))
                .spawn(move || {
                    while let Ok(request) = server.recv() {
                        shared.handle(request);
                    }
                })?;
            workers.push(worker);
        }
        tracing::debug!(%addr, "local authority started");
        Ok(LocalAuthority {
            shared,
            server,
            workers,
            addr,
        })
    }
}

/// A real OAuth2 authority on `127.0.0.1`, for quickstarts and tests.
///
/// It serves `POST /token` with the `client_credentials` and
/// `refresh_token` grants for the clients it was given, authenticating
/// them with `client_secret_basic` or `client_secret_post`, with form or
/// JSON bodies. It issues unsigned JWTs (`"alg":"none"`) with `iat` and
/// `exp` in milliseconds precision, rotates refresh tokens, and rejects a
/// replayed one with `invalid_grant` (revoking its chain). A [`FaultPlan`],
/// changeable at any time from any thread, makes it fail on purpose, and
/// every token request is logged.
///
/// It runs on its own threads (no async runtime) and stops when dropped.
///
/// ```
/// use freshtoken::testing::{Fault, FaultWindow, LocalAuthority, Outcome};
/// use freshtoken::source::TokenSource;
/// use freshtoken::FetchErrorKind;
/// use freshtoken::source::FetchRequest;
///
/// let authority = LocalAuthority::builder().client("svc", "s3cret").start()?;
/// let source = authority.client_credentials("svc").scope("read").build()?;
///
/// let answer = source.fetch(&FetchRequest::first())?;
/// assert_eq!(answer.expires_in, Some(60));
///
/// authority.add_fault(Fault::Unavailable { retry_after: None }, FaultWindow::NextRequests(1));
/// let err = source.fetch(&FetchRequest::first()).unwrap_err();
/// assert_eq!(err.kind(), FetchErrorKind::Transient);
///
/// assert_eq!(authority.request_count(), 2);
/// assert_eq!(authority.requests()[1].outcome, Outcome::Faulted);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct LocalAuthority {
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl fmt::Debug for LocalAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut clients: Vec<&str> = self.shared.clients.keys().map(String::as_str).collect();
        clients.sort_unstable();
        f.debug_struct("LocalAuthority")
            .field("addr", &self.addr)
            .field("clients", &clients)
            .finish_non_exhaustive()
    }
}

impl LocalAuthority {
    /// A builder with no clients, 60 s tokens and refresh-token rotation.
    pub fn builder() -> LocalAuthorityBuilder {
        LocalAuthorityBuilder {
            clients: HashMap::new(),
            lifetime: Duration::from_secs(60),
            send_expires_in: true,
            refresh_in: None,
            rotate: true,
            reuse_interval: Duration::ZERO,
            clock: None,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer, `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The token endpoint, `http://127.0.0.1:<port>/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.shared.issuer)
    }

    /// A [`ClientCredentials`] builder for a registered client, with its
    /// secret and this authority's URL filled in.
    pub fn client_credentials(&self, client_id: &str) -> SourceBuilder<ClientCredentials> {
        let secret = self.client_secret(client_id);
        ClientCredentials::builder(self.token_url(), client_id, secret)
    }

    /// A [`RefreshTokenSource`] builder for a registered client (with its
    /// secret, if it has one).
    pub fn refresh_token_source(&self, client_id: &str) -> SourceBuilder<RefreshTokenSource> {
        let builder = RefreshTokenSource::builder(self.token_url(), client_id);
        match self.shared.clients.get(client_id).cloned().flatten() {
            Some(secret) => builder.client_secret(secret),
            None => builder,
        }
    }

    fn client_secret(&self, client_id: &str) -> String {
        self.shared
            .clients
            .get(client_id)
            .cloned()
            .flatten()
            .unwrap_or_default()
    }

    /// Issues a refresh token for `client_id`, as if the user had just
    /// completed an authorization-code flow; it starts a new rotation chain.
    pub fn issue_refresh_token(&self, client_id: &str) -> RefreshToken {
        let mut state = self.shared.lock();
        let family = state.next_id;
        RefreshToken::new(
            self.shared
                .new_refresh_token(&mut state, client_id, family, None),
        )
    }

    /// Revokes every refresh token issued so far (a user logging out
    /// everywhere); presenting one then gets `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        let mut state = self.shared.lock();
        let families: Vec<u64> = state.refresh.values().map(|r| r.family).collect();
        state.revoked_families.extend(families);
    }

    /// Checks an access token as a resource server would: it must have been
    /// issued by this authority, not be expired (by the authority's clock)
    /// and not be revoked. An API in a test calls this for every request's
    /// bearer token (the tokens are unsigned, so this registry is what
    /// makes them checkable).
    ///
    /// ```
    /// use freshtoken::testing::{LocalAuthority, TokenRejection};
    /// use freshtoken::source::TokenSource;
    /// use freshtoken::source::FetchRequest;
    ///
    /// let authority = LocalAuthority::builder().client("svc", "s3cret").start()?;
    /// let source = authority.client_credentials("svc").audience("https://api").build()?;
    /// let answer = source.fetch(&FetchRequest::first())?;
    /// let token = answer.access_token.expose_secret();
    /// let info = authority.validate_access_token(token).expect("valid");
    /// assert_eq!(info.audiences, ["https://api"]);
    /// assert_eq!(authority.revoke_access_tokens(), 1);
    /// assert_eq!(authority.validate_access_token(token).unwrap_err(), TokenRejection::Revoked);
    /// assert_eq!(authority.validate_access_token("forged").unwrap_err(), TokenRejection::Unknown);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn validate_access_token(&self, token: &str) -> Result<AccessTokenInfo, TokenRejection> {
        let now = self.shared.clock.now();
        let state = self.shared.lock();
        match state.access.get(token) {
            None => Err(TokenRejection::Unknown),
            Some(r) if r.revoked => Err(TokenRejection::Revoked),
            Some(r) if now >= r.info.expires_at => Err(TokenRejection::Expired),
            Some(r) => Ok(r.info.clone()),
        }
    }

    /// Revokes one access token (server-side, as an administrator or a
    /// security event would); whether it was known and not yet revoked.
    pub fn revoke_access_token(&self, token: &str) -> bool {
        match self.shared.lock().access.get_mut(token) {
            Some(r) if !r.revoked => {
                r.revoked = true;
                true
            }
            _ => false,
        }
    }

    /// Revokes every access token issued so far; returns how many were
    /// still unrevoked. Tokens issued afterwards are valid.
    pub fn revoke_access_tokens(&self) -> usize {
        let mut state = self.shared.lock();
        let mut n = 0;
        for r in state.access.values_mut().filter(|r| !r.revoked) {
            r.revoked = true;
            n += 1;
        }
        n
    }

    /// Replaces the fault plan.
    pub fn set_faults(&self, plan: FaultPlan) {
        self.shared.lock().faults = plan;
    }

    /// Adds a rule at the end of the fault plan.
    pub fn add_fault(&self, fault: Fault, window: FaultWindow) {
        let mut state = self.shared.lock();
        state.faults = std::mem::take(&mut state.faults).with(fault, window);
    }

    /// Removes every fault: the authority answers normally again.
    pub fn clear_faults(&self) {
        self.shared.lock().faults = FaultPlan::new();
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().lifetime = lifetime;
    }

    /// Changes the refresh hint (`refresh_in`) of answers from now on
    /// (`None`: no hint); see [`LocalAuthorityBuilder::refresh_in`].
    pub fn set_refresh_in(&self, seconds: Option<i64>) {
        self.shared.lock().refresh_in = seconds;
    }

    /// Every token request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().log.clone()
    }

    /// How many token requests arrived.
    pub fn request_count(&self) -> usize {
        self.shared.lock().log.len()
    }

    /// How many token requests asked for `grant_type` (`"refresh_token"`,
    /// `"client_credentials"`).
    pub fn grant_count(&self, grant_type: &str) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.grant_type.as_deref() == Some(grant_type))
            .count()
    }

    /// How many token requests a [`Fault::Hang`] holds right now: they
    /// have arrived and are not answered yet, so a test can act while a
    /// request is surely in flight rather than after a guessed duration.
    /// (They are in [`requests`](Self::requests) once answered.)
    ///
    /// ```
    /// use freshtoken::testing::{Fault, FaultWindow, LocalAuthority};
    /// use freshtoken::source::{FetchRequest, TokenSource};
    /// use std::time::Duration;
    ///
    /// let authority = LocalAuthority::builder().client("svc", "s3cret").start()?;
    /// authority.add_fault(Fault::Hang(Duration::from_millis(500)), FaultWindow::NextRequests(1));
    /// let source = authority.client_credentials("svc").build()?;
    /// let slow = std::thread::spawn(move || source.fetch(&FetchRequest::first()).is_ok());
    /// while authority.hanging_count() == 0 {
    ///     std::thread::sleep(Duration::from_millis(5));
    /// }
    /// // The request is in flight now; it is answered once the hang ends.
    /// assert!(slow.join().unwrap());
    /// assert_eq!(authority.hanging_count(), 0);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn hanging_count(&self) -> usize {
        self.shared.hanging.load(Ordering::SeqCst)
    }

    /// How many tokens were issued.
    pub fn issued_count(&self) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Issued { .. }))
            .count()
    }
}

impl Drop for LocalAuthority {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Each unblock releases one worker from `recv`; a worker that is
        // busy picks its one up when it comes back.
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        tracing::debug!(addr = %self.addr, "local authority stopped");
    }
}

struct AccessRecord {
    info: AccessTokenInfo,
    revoked: bool,
}

struct RefreshRecord {
    client_id: String,
    family: u64,
    scope: Option<String>,
    /// When it was first used, once rotated away.
    used_at: Option<Timestamp>,
}

struct State {
    lifetime: Duration,
    /// The `refresh_in` answers carry, if any.
    refresh_in: Option<i64>,
    faults: FaultPlan,
    refresh: HashMap<String, RefreshRecord>,
    revoked_families: HashSet<u64>,
    /// Every access token issued, for [`LocalAuthority::validate_access_token`].
    access: HashMap<String, AccessRecord>,
    next_id: u64,
    log: Vec<LoggedRequest>,
}

struct Shared {
    issuer: String,
    clients: HashMap<String, Option<String>>,
    send_expires_in: bool,
    rotate: bool,
    reuse_interval: Duration,
    clock: Arc<dyn ClockDebug>,
    stopping: AtomicBool,
    /// Token requests a [`Fault::Hang`] holds right now.
    hanging: AtomicUsize,
    /// Makes tokens differ between authorities started in one process.
    nonce: u64,
    state: Mutex<State>,
}

/// A parsed token request.
#[derive(Default)]
struct Params {
    values: Vec<(String, String)>,
}

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An answer to send.
struct Answer {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn error(status: u16, code: &str, description: &str) -> Self {
        Answer {
            status,
            body: json!({ "error": code, "error_description": description }),
            headers: Vec::new(),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a worker must not take the test's authority down.
        crate::sync::lock(&self.state)
    }

    fn handle(&self, mut request: tiny_http::Request) {
        let path = request.url().split('?').next().unwrap_or("");
        if path != "/token" {
            respond(
                request,
                404,
                b"not found".to_vec(),
                Vec::new(),
                self.clock.now(),
            );
            return;
        }
        if *request.method() != tiny_http::Method::Post {
            respond(
                request,
                405,
                b"use POST".to_vec(),
                Vec::new(),
                self.clock.now(),
            );
            return;
        }
        let now = self.clock.now();
        let mut body = Vec::new();
        let read = request
            .as_reader()
            .take(MAX_REQUEST_BYTES)
            .read_to_end(&mut body);
        let json_body = header(&request, "content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"));
        let params = if json_body {
            json_params(&body)
        } else {
            Params {
                values: form::parse(&String::from_utf8_lossy(&body)),
            }
        };
        let basic = header(&request, "authorization").and_then(basic_credentials);

        let mut entry = LoggedRequest {
            at: now,
            grant_type: params.get("grant_type").map(str::to_owned),
            client_id: basic
                .as_ref()
                .map(|(id, _)| id.clone())
                .or_else(|| params.get("client_id").map(str::to_owned)),
            client_auth: None,
            json_body,
            scope: params.get("scope").map(str::to_owned),
            audience: params.get("audience").map(str::to_owned),
            resources: params.all("resource"),
            fault: None,
            reused_refresh_token: false,
            outcome: Outcome::Faulted,
        };

        let fault = self.lock().faults.take(now);
        entry.fault = fault.clone();
        let answer = match fault {
            Some(Fault::Hang(d)) => {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                self.sleep(d);
                self.hanging.fetch_sub(1, Ordering::SeqCst);
                None
            }
            Some(Fault::CloseConnection) => {
                self.log(entry);
                drop(request.into_writer());
                return;
            }
            Some(Fault::MalformedJson) => {
                self.log(entry);
                let body = br#"{"access_token": "#.to_vec();
                respond(request, 200, body, json_headers(), now);
                return;
            }
            Some(Fault::Unavailable { retry_after }) => Some(with_retry_after(
                Answer::error(503, "temporarily_unavailable", "planned outage"),
                retry_after,
            )),
            Some(Fault::RateLimited { retry_after }) => Some(with_retry_after(
                Answer::error(429, "slow_down", "planned rate limit"),
                retry_after,
            )),
            Some(Fault::Error { status, code }) => {
                Some(Answer::error(status, &code, "planned error"))
            }
            Some(Fault::ExpiresIn(_)) | None => None,
        };
        let answer = match answer {
            Some(a) => a,
            None => {
                let mut a = match read {
                    Ok(_) => self.grant(&params, basic, &mut entry),
                    Err(_) => Answer::error(400, "invalid_request", "unreadable body"),
                };
                if let (Some(Fault::ExpiresIn(secs)), 200) = (&entry.fault, a.status) {
                    a.body["expires_in"] = (*secs).into();
                }
                entry.outcome = match a.status {
                    200 => Outcome::Issued {
                        rotated: entry.grant_type.as_deref() == Some("refresh_token")
                            && self.rotate,
                    },
                    status => Outcome::Rejected {
                        status,
                        error: a.body["error"].as_str().unwrap_or("").to_owned(),
                    },
                };
                a
            }
        };
        self.log(entry);
        let mut headers = json_headers();
        headers.extend(answer.headers);
        let body = serde_json::to_vec(&answer.body).unwrap_or_default();
        respond(request, answer.status, body, headers, now);
    }

    fn log(&self, entry: LoggedRequest) {
        tracing::debug!(grant = ?entry.grant_type, client = ?entry.client_id, outcome = ?entry.outcome, "local authority answered");
        self.lock().log.push(entry);
    }

    /// Sleeps `d`, or less if the authority is being dropped.
    fn sleep(&self, d: Duration) {
        let step = Duration::from_millis(10);
        let mut left = d;
        while !left.is_zero() && !self.stopping.load(Ordering::SeqCst) {
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
    }

    /// Authenticates the client and runs the grant.
    fn grant(
        &self,
        params: &Params,
        basic: Option<(String, String)>,
        entry: &mut LoggedRequest,
    ) -> Answer {
        let body_secret = params.get("client_secret");
        let (client_id, secret, auth) = match (basic, body_secret) {
            (Some(_), Some(_)) => {
                return Answer::error(
                    400,
                    "invalid_request",
                    "more than one client authentication method",
                )
            }
            (Some((id, secret)), None) => (id, Some(secret), ClientAuth::Basic),
            (None, Some(secret)) => match params.get("client_id") {
                Some(id) => (id.to_owned(), Some(secret.to_owned()), ClientAuth::Post),
                None => {
                    return Answer::error(400, "invalid_request", "client_secret without client_id")
                }
            },
            (None, None) => match params.get("client_id") {
                Some(id) => (id.to_owned(), None, ClientAuth::None),
                None => return Answer::error(401, "invalid_client", "no client authentication"),
            },
        };
        entry.client_auth = Some(auth);
        let authenticated = match (self.clients.get(&client_id), &secret) {
            (Some(Some(expected)), Some(given)) => {
                constant_time_eq(expected.as_bytes(), given.as_bytes())
            }
            (Some(None), None) => true,
            _ => false,
        };
        if !authenticated {
            let mut a = Answer::error(401, "invalid_client", "client authentication failed");
            if auth == ClientAuth::Basic {
                a.headers.push((
                    "WWW-Authenticate",
                    "Basic realm=\"local-authority\"".to_owned(),
                ));
            }
            return a;
        }

        match params.get("grant_type") {
            Some("client_credentials") if auth != ClientAuth::None => {
                let mut state = self.lock();
                let audience = params.get("audience").map(str::to_owned);
                let resources = params.all("resource");
                self.issue(
                    &mut state,
                    &client_id,
                    params.get("scope").map(str::to_owned),
                    audience,
                    resources,
                    None,
                )
            }
            Some("client_credentials") => Answer::error(
                400,
                "unauthorized_client",
                "public clients cannot use client_credentials",
            ),
            Some("refresh_token") => {
                let Some(presented) = params.get("refresh_token") else {
                    return Answer::error(400, "invalid_request", "refresh_token is missing");
                };
                let now = self.clock.now();
                let mut state = self.lock();
                let (family, scope) = match state.refresh.get_mut(presented) {
                    Some(r) if r.client_id == client_id => {
                        if let Some(used_at) = r.used_at {
                            if now >= used_at + self.reuse_interval {
                                // Reuse of a rotated token: someone has a copy.
                                let family = r.family;
                                state.revoked_families.insert(family);
                                return Answer::error(
                                    400,
                                    "invalid_grant",
                                    "refresh token was already used",
                                );
                            }
                            entry.reused_refresh_token = true;
                        } else if self.rotate {
                            r.used_at = Some(now);
                        }
                        (r.family, r.scope.clone())
                    }
                    _ => return Answer::error(400, "invalid_grant", "unknown refresh token"),
                };
                if state.revoked_families.contains(&family) {
                    return Answer::error(400, "invalid_grant", "refresh token was revoked");
                }
                let scope = params.get("scope").map(str::to_owned).or(scope);
                let rotated = if self.rotate {
                    Some(self.new_refresh_token(&mut state, &client_id, family, scope.clone()))
                } else {
                    None
                };
                self.issue(
                    &mut state,
                    &client_id,
                    scope,
                    None,
                    params.all("resource"),
                    rotated,
                )
            }
            Some(_) => Answer::error(
                400,
                "unsupported_grant_type",
                "this authority knows client_credentials and refresh_token",
            ),
            None => Answer::error(400, "invalid_request", "grant_type is missing"),
        }
    }

    fn issue(
        &self,
        state: &mut State,
        client_id: &str,
        scope: Option<String>,
        audience: Option<String>,
        resources: Vec<String>,
        refresh_token: Option<String>,
    ) -> Answer {
        let now = self.clock.now();
        let lifetime = state.lifetime;
        let exp = now + lifetime;
        let jti = state.next_id;
        state.next_id += 1;
        let aud: Value = match (audience, resources.len()) {
            (Some(a), _) => a.into(),
            (None, 0) => Value::Null,
            (None, 1) => resources[0].clone().into(),
            (None, _) => resources.into(),
        };
        let claims = json!({
            "iss": self.issuer,
            "sub": client_id,
            "client_id": client_id,
            "aud": aud,
            "scope": scope,
            "jti": format!("{:016x}-{jti}", self.nonce),
            "iat": now.as_millis() as f64 / 1000.0,
            "exp": exp.as_millis() as f64 / 1000.0,
        });
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let access_token = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"at+jwt"}"#),
            b64.encode(serde_json::to_vec(&claims).unwrap_or_default())
        );
        let audiences = match &aud {
            Value::String(a) => vec![a.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        state.access.insert(
            access_token.clone(),
            AccessRecord {
                info: AccessTokenInfo {
                    client_id: client_id.to_owned(),
                    audiences,
                    scope: scope.clone(),
                    expires_at: exp,
                },
                revoked: false,
            },
        );
        let mut body = json!({ "access_token": access_token, "token_type": "Bearer" });
        if self.send_expires_in {
            body["expires_in"] = lifetime.as_secs().into();
        }
        if let Some(hint) = state.refresh_in {
            body["refresh_in"] = hint.into();
        }
        if let Some(scope) = scope {
            body["scope"] = scope.into();
        }
        if let Some(rt) = refresh_token {
            body["refresh_token"] = rt.into();
        }
        Answer {
            status: 200,
            body,
            headers: vec![("Cache-Control", "no-store".to_owned())],
        }
    }

    fn new_refresh_token(
        &self,
        state: &mut State,
        client_id: &str,
        family: u64,
        scope: Option<String>,
    ) -> String {
        let id = state.next_id;
        state.next_id += 1;
        let token = format!(
            "rt_{:016x}_{id}",
            RandomState::new().hash_one((self.nonce, id))
        );
        state.refresh.insert(
            token.clone(),
            RefreshRecord {
                client_id: client_id.to_owned(),
                family,
                scope,
                used_at: None,
            },
        );
        token
    }
}

fn with_retry_after(mut answer: Answer, retry_after: Option<RetryAfter>) -> Answer {
    match retry_after {
        Some(RetryAfter::Seconds(s)) => answer.headers.push(("Retry-After", s.to_string())),
        Some(RetryAfter::Date(at)) => answer
            .headers
            .push(("Retry-After", httpdate::fmt_http_date(at.to_system_time()))),
        None => {}
    }
    answer
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![("Content-Type", "application/json".to_owned())]
}

fn respond(
    request: tiny_http::Request,
    status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    now: Timestamp,
) {
    let mut response = tiny_http::Response::from_data(body).with_status_code(status);
    let date = ("Date", httpdate::fmt_http_date(now.to_system_time()));
    for (name, value) in headers.iter().chain(std::iter::once(&date)) {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    // The client may have gone away (a timeout); nothing to do about it.
    let _ = request.respond(response);
}

fn header(request: &tiny_http::Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_owned())
}

/// The client id and secret of a `Basic` header, form-decoded (RFC 6749 2.3.1).
fn basic_credentials(value: String) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form::decode(id), form::decode(secret)))
}

/// A JSON body as parameters: strings as they are, arrays of strings as
/// repeated parameters, anything else ignored.
fn json_params(body: &[u8]) -> Params {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Params::default();
    };
    let mut values = Vec::new();
    for (name, value) in map {
        match value {
            Value::String(s) => values.push((name, s)),
            Value::Array(items) => values.extend(items.into_iter().filter_map(|v| match v {
                Value::String(s) => Some((name.clone(), s)),
                _ => None,
            })),
            _ => {}
        }
    }
    Params { values }
}

/// Compares secrets without an early exit, as a real authority should.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
