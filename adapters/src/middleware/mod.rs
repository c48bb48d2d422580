//! Middleware for the HTTP clients services use: each one attaches the
//! current token to every request and, when the API rejects it, replays the
//! request once with a newer one.
//!
//! | feature | client | what it is |
//! | --- | --- | --- |
//! | `tower` | anything tower-based (hyper-util's client, tonic channels) | [`tower::AuthLayer`] |
//! | `reqwest-middleware` | reqwest through reqwest-middleware | [`reqwest::AuthMiddleware`] |
//! | `ureq-middleware` | ureq 3 | [`ureq::AuthHeader`] and [`ureq::AuthAgent`] |
//! | `tonic` | tonic (gRPC) | [`tonic::AuthInterceptor`], and the tower layer |
//!
//! They share one [`Authorizer`], which is also the piece to build on for a
//! client that is not listed. What every one of them does:
//!
//! * **Attach.** Each request gets `Authorization: <token_type> <token>`
//!   (or a configured header and scheme) from the current valid token. The
//!   read is the handle's lock-free load; the header value is built once per
//!   token and cached by [`TokenId`], so a 1 KB JWT is not re-validated as a
//!   header value on every request. No request ever waits for a refresh it
//!   does not need.
//! * **No token yet.** When there is no valid token (a cold start, an
//!   authority that has been down past expiry), the request waits up to
//!   [`Authorizer::token_wait`] (default 10 s) for one, then fails with
//!   [`AuthError::NoValidToken`], which says why. A request is never sent
//!   without credentials by accident.
//! * **Rejected.** On a `401` (whatever its `WWW-Authenticate` says, except
//!   a Bearer `error="insufficient_scope"` or `"invalid_request"`, which a
//!   new token does not fix), or a `403` whose Bearer challenge says
//!   `error="invalid_token"`, it invalidates exactly the token that was
//!   sent ([`TokenHandle::invalidate`]), waits up to
//!   [`Authorizer::refresh_wait`] (default 10 s) for a different valid
//!   token, and replays the request **once** with it, if its body can be
//!   replayed. The answer to the replay goes to the caller whatever it is
//!   (a second `401` included); there is no loop. A `403`
//!   `insufficient_scope` is never retried. See [`is_token_rejected`].
//! * **Which bodies replay.** Bodies that are already in memory: for tower,
//!   body types that implement [`tower::ReplayBody`] (`Full`, `Empty`,
//!   `String`, `Vec<u8>`, `Bytes`, `()`, and the buffered side of an
//!   `Either`); for reqwest, what `reqwest::Request::try_clone` can copy
//!   (everything but streams); for ureq, whatever the request-building
//!   closure builds again. Streaming bodies are sent once and never replayed:
//!   the caller gets the `401` (and the token is still invalidated, so the
//!   caller's own retry finds a new one).
//!
//! * **DPoP.** With [`Authorizer::dpop`] (feature `dpop`) and a
//!   DPoP-bound token, tower, reqwest and ureq also attach a fresh proof
//!   per request and answer a resource server's `use_dpop_nonce` `401` with
//!   one replay that carries its nonce, without invalidating the token
//!   (ureq: [`ureq::AuthAgent`], on an agent with
//!   `http_status_as_error(false)`). Nonces are kept per origin. tonic:
//!   the tower layer in the channel presents the proofs, and the
//!   interceptor refuses to send a DPoP-bound token (see
//!   [tonic's DPoP](tonic#dpop)).
//!
//! # Which requests get the token
//!
//! **By default every request sent through the client carries the token**,
//! whatever its host: the middleware knows nothing of the API it is meant
//! for. When a client may also reach other hosts, scope the authorizer to
//! the API with [`Authorizer::scope`] (one base URL, e.g.
//! `https://api.example.com/v1/`; call it again for more): only requests
//! for that origin (scheme, host and port) and path prefix get the token,
//! every other request is sent as the caller built it, and its answers are
//! never taken as a rejection of the token (no invalidation, no replay).
//!
//! # Redirects
//!
//! The token never reaches an origin other than the one it was attached
//! for, whatever header carries it, and a `401` from an origin that never
//! saw it is no rejection:
//!
//! * **reqwest** and **ureq** follow redirects inside the client, below
//!   the middleware, and strip only `Authorization` when a redirect leaves
//!   the origin. So with another header ([`Authorizer::header`], e.g.
//!   `x-api-key`) the client must not follow redirects to other origins:
//!   for reqwest, build it with [`reqwest::redirect_policy`] (same-origin
//!   redirects only) or `Policy::none()` and say so with
//!   [`AuthMiddleware::redirects_checked`](reqwest::AuthMiddleware::redirects_checked);
//!   [`ureq::AuthAgent`] turns ureq's redirects off itself for such a
//!   header, and a bare [`ureq::AuthHeader`] needs an agent with
//!   `max_redirects(0)` and [`AuthHeader::redirects_checked`](ureq::AuthHeader::redirects_checked).
//!   Without that, a request that would carry the token in such a header
//!   fails with [`AuthError::RedirectsUnchecked`] before anything is sent.
//! * A rejection counts only when the answer came from the origin the
//!   token was sent to: reqwest's final URL, and for ureq the last entry
//!   of the redirect history that [`ureq::AuthAgent`] turns on (with
//!   ureq's default `http_status_as_error(true)` a `401` is an error that
//!   no longer says where it came from, and counts; so does one through a
//!   bare [`ureq::AuthHeader`] on an agent that saves no history).
//! * **tower** services do not follow redirects unless a
//!   `FollowRedirect` layer does: put it *outside* a scoped
//!   [`tower::AuthLayer`], so every hop passes through the layer and its
//!   scope (unscoped, every hop gets the token, as every request does).
//!   **tonic** (gRPC) has no redirects.
//!
//! # Many 401s, one refresh
//!
//! Concurrent requests that were rejected with the same token each report
//! it, but the driver collapses them: reports of a token that is no longer
//! the current one are ignored, and a report while a refresh is under way
//! joins it. So fifty requests hitting a revoked token cause one request to
//! the authority, and all fifty are replayed with the one new token.
//!
//! A second revocation (of the new token, after it arrived) causes a second
//! refresh, shaped by the driver's invalidation interval
//! ([`Builder::invalidate_interval`](crate::driver::Builder::invalidate_interval),
//! default 5 s): reports are honoured at most once per interval, and one
//! that comes sooner is deferred to the end of the interval, not dropped. A
//! request waits for it only as long as its `refresh_wait`: with the
//! defaults (5 s interval, 10 s wait) a request rejected 1 s after the
//! previous refresh is replayed about 4 s later; with a `refresh_wait`
//! shorter than what is left of the interval, it gets its `401` back.
//!
//! # Secrets
//!
//! The header values are marked sensitive (`HeaderValue::set_sensitive`),
//! so HTTP/2 never indexes them and their `Debug` prints nothing.
//! [`Credential`], [`Authorizer`] and every error here print token ids at
//! most, never a token.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::handle::{Closed, NoValidToken, TokenHandle, TokenRef};
use arc_swap::ArcSwapOption;
use freshtoken_core::{Now, Snapshot, TokenId};
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::StatusCode;

/// The header a DPoP proof goes in (RFC 9449 4.1).
#[cfg(feature = "dpop")]
const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The header a server gives a DPoP nonce in (RFC 9449 8).
#[cfg(feature = "dpop")]
const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

#[cfg(any(
    feature = "blocking",
    feature = "tokio",
    feature = "async-std",
    feature = "smol"
))]
use crate::manager::ManagedHandle;

#[cfg(feature = "reqwest-middleware")]
pub mod reqwest;
#[cfg(feature = "tonic")]
pub mod tonic;
#[cfg(feature = "tower")]
pub mod tower;
#[cfg(feature = "ureq-middleware")]
pub mod ureq;

/// Where a middleware takes its tokens from: a [`TokenHandle`], or a
/// [`TokenManager`](crate::manager::TokenManager) key
/// ([`ManagedHandle`]). Both convert into it with `From`.
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::middleware::Tokens;
/// use freshtoken::source::ConstTokenSource;
///
/// let (handle, driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
/// let tokens = Tokens::from(handle);
/// # drop(tokens); driver.shutdown_blocking();
/// # Ok::<_, std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tokens(Source);

#[derive(Clone, Debug)]
enum Source {
    Handle(TokenHandle),
    #[cfg(any(
        feature = "blocking",
        feature = "tokio",
        feature = "async-std",
        feature = "smol"
    ))]
    Managed(ManagedHandle),
}

impl From<TokenHandle> for Tokens {
    fn from(handle: TokenHandle) -> Self {
        Tokens(Source::Handle(handle))
    }
}

#[cfg(any(
    feature = "blocking",
    feature = "tokio",
    feature = "async-std",
    feature = "smol"
))]
impl From<ManagedHandle> for Tokens {
    fn from(handle: ManagedHandle) -> Self {
        Tokens(Source::Managed(handle))
    }
}

impl Tokens {
    /// The current token if it is valid now.
    pub fn valid_token(&self) -> Result<TokenRef, NoValidToken> {
        match &self.0 {
            Source::Handle(h) => h.valid_token(),
            #[cfg(any(
                feature = "blocking",
                feature = "tokio",
                feature = "async-std",
                feature = "smol"
            ))]
            Source::Managed(m) => m.valid_token(),
        }
    }

    /// The current token, valid or not.
    pub fn token(&self) -> Option<TokenRef> {
        match &self.0 {
            Source::Handle(h) => h.token(),
            #[cfg(any(
                feature = "blocking",
                feature = "tokio",
                feature = "async-std",
                feature = "smol"
            ))]
            Source::Managed(m) => m.token(),
        }
    }

    /// Reports that the token with this id was rejected, if it is still the
    /// current one (a token that was already replaced needs no report).
    pub fn invalidate_id(&self, id: TokenId) {
        if let Some(current) = self.token() {
            if current.id() == id {
                match &self.0 {
                    Source::Handle(h) => h.invalidate(&current),
                    #[cfg(any(
                        feature = "blocking",
                        feature = "tokio",
                        feature = "async-std",
                        feature = "smol"
                    ))]
                    Source::Managed(m) => m.invalidate(&current),
                }
            }
        }
    }

    /// [`version`](Self::version), counted as a read for a managed key.
    fn read_version(&self) -> u64 {
        match &self.0 {
            Source::Handle(h) => h.version(),
            #[cfg(any(
                feature = "blocking",
                feature = "tokio",
                feature = "async-std",
                feature = "smol"
            ))]
            Source::Managed(m) => m.read_version(),
        }
    }

    /// The clocks the tokens are judged by (the driver's); `None` for a
    /// managed key whose refresher is not running.
    fn now(&self) -> Option<Now> {
        match &self.0 {
            Source::Handle(h) => Some(h.now()),
            #[cfg(any(
                feature = "blocking",
                feature = "tokio",
                feature = "async-std",
                feature = "smol"
            ))]
            Source::Managed(m) => m.now(),
        }
    }

    /// A number that grows with every publication.
    pub fn version(&self) -> u64 {
        match &self.0 {
            Source::Handle(h) => h.version(),
            #[cfg(any(
                feature = "blocking",
                feature = "tokio",
                feature = "async-std",
                feature = "smol"
            ))]
            Source::Managed(m) => m.version(),
        }
    }

    /// Resolves on the next publication (or when the refresher stopped).
    pub async fn changed(&self) -> Result<(), Closed> {
        match &self.0 {
            Source::Handle(h) => h.changed().await,
            #[cfg(any(
                feature = "blocking",
                feature = "tokio",
                feature = "async-std",
                feature = "smol"
            ))]
            Source::Managed(m) => m.changed().await,
        }
    }

    /// Blocks until the next publication or `timeout`.
    pub fn wait_changed(&self, timeout: Duration) -> Result<bool, Closed> {
        match &self.0 {
            Source::Handle(h) => h.wait_changed(timeout),
            #[cfg(any(
                feature = "blocking",
                feature = "tokio",
                feature = "async-std",
                feature = "smol"
            ))]
            Source::Managed(m) => m.wait_changed(timeout),
        }
    }
}

/// The header value built from one token, with the token's id. Cheap to
/// clone; its `Debug` shows the id only.
#[derive(Clone)]
pub struct Credential {
    id: TokenId,
    value: HeaderValue,
    /// For a DPoP token presented with the authorizer's key: the token's
    /// hash (`ath`), which every proof carries.
    #[cfg(feature = "dpop")]
    ath: Option<Arc<str>>,
}

impl Credential {
    /// The id of the token inside.
    pub fn token_id(&self) -> TokenId {
        self.id
    }

    /// The header value (sensitive: it holds the token).
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// Whether requests with this credential carry a DPoP proof: the token
    /// is DPoP-bound and the authorizer has a key ([`Authorizer::dpop`]).
    pub fn needs_proof(&self) -> bool {
        #[cfg(feature = "dpop")]
        return self.ath.is_some();
        #[cfg(not(feature = "dpop"))]
        false
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("token", &self.id)
            .field("dpop", &self.needs_proof())
            .finish()
    }
}

/// Why a middleware did not send a request.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// There was no valid token, and none came within the wait.
    #[error("no valid token after waiting {waited:?}: {reason}")]
    NoValidToken {
        /// How long the request waited.
        waited: Duration,
        /// Why there is none (the last refresh error, if any).
        reason: NoValidToken,
    },
    /// The token cannot be sent as a header value (the driver refuses such
    /// tokens, so this points at a custom scheme with bad characters).
    #[error("token {token} cannot be sent in a header")]
    InvalidHeaderValue {
        /// The token's id.
        token: TokenId,
    },
    /// The token goes in a header that the client keeps when it follows a
    /// redirect to another origin (anything but `Authorization`), and
    /// nothing says that this client never does: nothing was sent. See
    /// [Redirects](self#redirects).
    #[error(
        "not sending the token in {header}: the HTTP client keeps that header on redirects to \
         other origins; make the client stop at those redirects and say so \
         (redirects_checked), see freshtoken::middleware's docs on redirects"
    )]
    RedirectsUnchecked {
        /// The header.
        header: HeaderName,
    },
    /// The DPoP proof for the request could not be signed.
    #[cfg(feature = "dpop")]
    #[error("cannot sign a DPoP proof for token {token}: {reason}")]
    DpopProof {
        /// The token's id.
        token: TokenId,
        /// Why (never key material).
        reason: String,
    },
}

/// Why [`Authorizer::scope`] refused a base URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid middleware scope: {0}")]
pub struct InvalidScope(String);

/// An origin (and path prefix) the token is attached for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    https: bool,
    /// Lower case.
    host: String,
    port: u16,
    /// Without a trailing `/`; empty for every path.
    path: String,
}

impl Origin {
    fn parse(base: &str) -> Result<Self, InvalidScope> {
        let uri: http::Uri = base
            .parse()
            .map_err(|_| InvalidScope("not a URL".to_owned()))?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => {
                return Err(InvalidScope(
                    "the URL must start with https:// or http://".to_owned(),
                ))
            }
        };
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            return Err(InvalidScope("the URL has no host".to_owned()));
        };
        if uri.query().is_some() {
            return Err(InvalidScope("a base URL has no query".to_owned()));
        }
        Ok(Origin {
            https,
            // As `Target` keeps it: an IPv6 literal without brackets.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Whether a request to these parts is for this origin and under its
    /// path.
    fn covers(&self, target: &Target<'_>) -> bool {
        self.same_origin(target)
            && (self.path.is_empty()
                || target
                    .path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
    }

    fn same_origin(&self, target: &Target<'_>) -> bool {
        target.https == Some(self.https)
            && target.port == Some(self.port)
            && target.host.eq_ignore_ascii_case(&self.host)
    }
}

/// Where a request goes, in the parts every client's URL type gives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// `Some(true)` for https, `Some(false)` for http, `None` for anything
    /// else (never in scope).
    https: Option<bool>,
    host: &'a str,
    /// The port, explicit or the scheme's default.
    port: Option<u16>,
    path: &'a str,
}

impl<'a> Target<'a> {
    /// From the parts of a URL.
    pub(crate) fn new(scheme: &str, host: &'a str, port: Option<u16>, path: &'a str) -> Self {
        let https = if scheme.eq_ignore_ascii_case("https") {
            Some(true)
        } else if scheme.eq_ignore_ascii_case("http") {
            Some(false)
        } else {
            None
        };
        let port = port.or(match https {
            Some(true) => Some(443),
            Some(false) => Some(80),
            None => None,
        });
        // An IPv6 literal is bracketed in some URL types and not others.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Target {
            https,
            host,
            port,
            path,
        }
    }

    /// From an `http::Uri` (tower, ureq).
    pub(crate) fn of_uri(uri: &'a http::Uri) -> Self {
        Target::new(
            uri.scheme_str().unwrap_or(""),
            uri.host().unwrap_or(""),
            uri.port_u16(),
            uri.path(),
        )
    }

    /// Whether `other` is the same origin (scheme, host, port).
    pub(crate) fn same_origin(&self, other: &Target<'_>) -> bool {
        self.https.is_some()
            && self.https == other.https
            && self.port == other.port
            && self.host.eq_ignore_ascii_case(other.host)
    }
}

/// How the header value is formed.
#[derive(Clone, Debug)]
enum Scheme {
    /// `<token_type> <token>`, with `bearer` in any case sent as `Bearer`.
    TokenType,
    /// `<scheme> <token>`.
    Fixed(String),
    /// The token alone (an `X-Api-Token`-style header).
    Raw,
}

/// What every middleware here is built on: the token source, the header to
/// set, the waits, and the per-token cache of header values.
///
/// Cheap to clone (one `Arc`); clones share the cache.
///
/// ```
/// use freshtoken::driver::Builder;
/// use freshtoken::middleware::Authorizer;
/// use freshtoken::source::ConstTokenSource;
/// use std::time::Duration;
///
/// let (handle, driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
/// let auth = Authorizer::new(handle).token_wait(Duration::from_secs(5));
/// let credential = auth.credential_blocking()?;
/// assert_eq!(credential.header_value(), "Bearer key");
/// assert_eq!(auth.header_name(), "authorization");
/// # drop(auth); driver.shutdown_blocking();
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    tokens: Tokens,
    header: HeaderName,
    scheme: Scheme,
    token_wait: Duration,
    refresh_wait: Duration,
    /// Empty: every request.
    scope: Vec<Origin>,
    cache: ArcSwapOption<Cached>,
    /// The key DPoP tokens are presented with, and the latest nonce of
    /// each resource server.
    #[cfg(feature = "dpop")]
    dpop: Option<ResourceDpop>,
}

/// The most resource servers (origins) whose DPoP nonce an authorizer
/// keeps; a new one beyond that drops the one heard from least recently.
#[cfg(feature = "dpop")]
const MAX_NONCE_ORIGINS: usize = 32;

/// An authorizer's DPoP key and the latest nonce of each origin (scheme,
/// host, port) it sends proofs to: RFC 9449 9 makes a nonce the server's,
/// so a nonce from one API is never sent to another. Clones share the
/// nonces.
#[cfg(feature = "dpop")]
#[derive(Clone)]
struct ResourceDpop {
    key: crate::oauth2::DpopKey,
    /// Most recently heard from last; at most [`MAX_NONCE_ORIGINS`].
    nonces: Arc<std::sync::Mutex<std::collections::VecDeque<(String, crate::oauth2::DpopState)>>>,
}

#[cfg(feature = "dpop")]
impl fmt::Debug for ResourceDpop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origins = self.nonces.lock().map(|n| n.len()).unwrap_or_default();
        f.debug_struct("ResourceDpop")
            .field("key", &self.key)
            .field("nonce_origins", &origins)
            .finish()
    }
}

#[cfg(feature = "dpop")]
impl ResourceDpop {
    fn new(key: crate::oauth2::DpopKey) -> Self {
        ResourceDpop {
            key,
            nonces: Arc::default(),
        }
    }

    /// The origin of `url` (`scheme://host:port`, lower case), `None` for a
    /// URL without an http(s) scheme and a host (a relative one).
    fn origin(url: &str) -> Option<String> {
        let uri: http::Uri = url.parse().ok()?;
        let target = Target::of_uri(&uri);
        match (target.https, target.port) {
            (Some(https), Some(port)) if !target.host.is_empty() => Some(format!(
                "{}://{}:{port}",
                if https { "https" } else { "http" },
                target.host.to_ascii_lowercase()
            )),
            _ => None,
        }
    }

    /// A fresh proof for a request to `url` with `method` and the token
    /// hash `ath`, with the nonce `url`'s origin gave, if any.
    fn proof(
        &self,
        method: &str,
        url: &str,
        ath: &str,
    ) -> Result<freshtoken_core::Assertion, String> {
        let Some(origin) = Self::origin(url) else {
            return Err(
                "the request URI has no http(s) scheme and host to build htu from (a tonic \
                        client: make it with `with_origin` and the endpoint's URI, see \
                        freshtoken::middleware::tonic)"
                    .to_owned(),
            );
        };
        let known = self.nonces.lock().ok().and_then(|n| {
            n.iter()
                .find(|(o, _)| *o == origin)
                .map(|(_, state)| state.clone())
        });
        known
            .unwrap_or_else(|| crate::oauth2::DpopState::new(self.key.clone()))
            .proof_for(method, url, Some(ath))
            .map_err(|e| e.to_string())
    }

    /// Keeps `nonce` as `url`'s origin's, if it is a usable one, and says
    /// whether it was.
    fn keep_nonce(&self, url: &str, nonce: &str) -> bool {
        let (Some(origin), Ok(mut nonces)) = (Self::origin(url), self.nonces.lock()) else {
            return false;
        };
        let state = match nonces.iter().position(|(o, _)| *o == origin) {
            Some(i) => nonces.remove(i).map(|(_, state)| state),
            None => None,
        }
        .unwrap_or_else(|| crate::oauth2::DpopState::new(self.key.clone()));
        let kept = state.keep_nonce(Some(nonce));
        nonces.push_back((origin, state));
        if nonces.len() > MAX_NONCE_ORIGINS {
            nonces.pop_front();
        }
        kept
    }
}

/// A credential, the publication it was checked at, and the snapshot its
/// token came from (to tell when the token goes stale).
struct Cached {
    version: u64,
    credential: Credential,
    snapshot: Arc<Snapshot>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Authorizer");
        f.field("tokens", &self.inner.tokens)
            .field("header", &self.inner.header)
            .field("scheme", &self.inner.scheme)
            .field("token_wait", &self.inner.token_wait)
            .field("refresh_wait", &self.inner.refresh_wait)
            .field("scope", &self.inner.scope);
        #[cfg(feature = "dpop")]
        f.field("dpop", &self.inner.dpop);
        f.finish()
    }
}

/// Default for both waits.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest a blocking wait sleeps before looking again (it cannot
/// register interest before it reads, so a publication in between would
/// otherwise be seen only at the end of the wait).
const BLOCKING_SLICE: Duration = Duration::from_millis(50);

impl Authorizer {
    /// Sets `Authorization: <token_type> <token>` from `tokens`, waiting up
    /// to 10 s for a first token and 10 s for a replacement.
    pub fn new(tokens: impl Into<Tokens>) -> Self {
        Authorizer {
            inner: Arc::new(AuthInner {
                tokens: tokens.into(),
                header: AUTHORIZATION,
                scheme: Scheme::TokenType,
                token_wait: DEFAULT_WAIT,
                refresh_wait: DEFAULT_WAIT,
                scope: Vec::new(),
                cache: ArcSwapOption::empty(),
                #[cfg(feature = "dpop")]
                dpop: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut AuthInner)) -> Self {
        let inner = Arc::make_mut_or_rebuild(&mut self.inner);
        f(inner);
        self
    }

    /// Sends the token in this header instead of `Authorization`.
    pub fn header(self, name: HeaderName) -> Self {
        self.with(|i| i.header = name)
    }

    /// Uses this scheme instead of the token's type (`DPoP`, `token`...).
    pub fn scheme(self, scheme: impl Into<String>) -> Self {
        let scheme = scheme.into();
        self.with(|i| i.scheme = Scheme::Fixed(scheme))
    }

    /// Sends the token alone, without a scheme (for `X-Api-Key`-style
    /// headers set with [`header`](Self::header)).
    pub fn raw(self) -> Self {
        self.with(|i| i.scheme = Scheme::Raw)
    }

    /// How long a request waits for a valid token when there is none
    /// (default 10 s). Zero fails at once.
    pub fn token_wait(self, wait: Duration) -> Self {
        self.with(|i| i.token_wait = wait)
    }

    /// How long a rejected request waits for a newer token before it gives
    /// up on the replay and returns the rejection (default 10 s).
    pub fn refresh_wait(self, wait: Duration) -> Self {
        self.with(|i| i.refresh_wait = wait)
    }

    /// Attaches the token only to requests for this base URL: its origin
    /// (scheme, host, port: `https://api.example.com` is port 443) and,
    /// if it has one, its path prefix (`https://api.example.com/v1/`
    /// covers `/v1` and `/v1/...`, not `/v10`). Call it again to add more.
    /// Other requests are sent as they are, and their answers never
    /// invalidate the token. Without a scope, every request carries the
    /// token (see [Which requests get the token](self#which-requests-get-the-token)).
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// use freshtoken::middleware::Authorizer;
    /// use freshtoken::source::ConstTokenSource;
    ///
    /// let (handle, driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
    /// let auth = Authorizer::new(handle.clone()).scope("https://api.example.com/v1/")?;
    /// assert!(auth.attaches_to(&"https://api.example.com/v1/orders".parse()?));
    /// assert!(auth.attaches_to(&"https://API.example.com:443/v1".parse()?));
    /// assert!(!auth.attaches_to(&"https://api.example.com/v10".parse()?));
    /// assert!(!auth.attaches_to(&"http://api.example.com/v1/orders".parse()?));
    /// assert!(!auth.attaches_to(&"https://evil.example/v1/orders".parse()?));
    /// let local = Authorizer::new(handle.clone()).scope("http://[::1]:8080")?;
    /// assert!(local.attaches_to(&"http://[::1]:8080/any".parse()?));
    /// assert!(!local.attaches_to(&"http://[::1]:8081/any".parse()?));
    /// assert!(Authorizer::new(handle).scope("api.example.com").is_err());
    /// # drop(auth); driver.shutdown_blocking();
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn scope(self, base_url: &str) -> Result<Self, InvalidScope> {
        let origin = Origin::parse(base_url)?;
        Ok(self.with(|i| i.scope.push(origin)))
    }

    /// Presents DPoP-bound tokens (`token_type: DPoP`) with a proof of
    /// possession of `key` (RFC 9449 7): every request gets `Authorization:
    /// DPoP <token>` and a fresh `DPoP` proof (`htm`, `htu` without query
    /// and fragment, `ath` = the token's hash, and the resource server's
    /// latest `DPoP-Nonce`). A `401` whose DPoP challenge says
    /// `error="use_dpop_nonce"` with a `DPoP-Nonce` is answered by one
    /// replay with that nonce, without invalidating the token (a body that
    /// cannot be replayed gets the `401` back, and the next request
    /// carries the nonce). Give it the key the source was built with
    /// ([`SourceBuilder::dpop`](crate::oauth2::SourceBuilder::dpop)):
    /// tokens are bound to that key. Bearer tokens are sent as before,
    /// without a proof. Nonces are kept per origin (scheme, host and
    /// port; RFC 9449 9 makes a nonce the server's): a proof carries only
    /// the nonce its own resource server gave. The authorizer (shared by
    /// its clones) keeps those of the 32 origins heard from most recently.
    /// A request with a relative URI (no scheme and host to form `htu`)
    /// is not sent: [`AuthError::DpopProof`].
    ///
    /// ```
    /// use freshtoken::driver::Builder;
    /// use freshtoken::middleware::Authorizer;
    /// use freshtoken::oauth2::DpopKey;
    /// use freshtoken::source::ConstTokenSource;
    ///
    /// let key = DpopKey::generate()?;
    /// let (handle, driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
    /// let auth = Authorizer::new(handle).dpop(key);
    /// // A Bearer token: no proof.
    /// assert!(!auth.credential_blocking()?.needs_proof());
    /// # drop(auth); driver.shutdown_blocking();
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "dpop")]
    pub fn dpop(self, key: crate::oauth2::DpopKey) -> Self {
        self.with(|i| i.dpop = Some(ResourceDpop::new(key)))
    }

    /// Sets the credential's header on a request with `method` for `url`
    /// and, when it [needs a proof](Credential::needs_proof), a fresh
    /// `DPoP` proof (replacing any the request had).
    pub(crate) fn attach(
        &self,
        headers: &mut HeaderMap,
        credential: &Credential,
        method: &str,
        url: &dyn fmt::Display,
    ) -> Result<(), AuthError> {
        #[cfg(feature = "dpop")]
        if let (Some(ath), Some(dpop)) = (&credential.ath, &self.inner.dpop) {
            let refusal = |reason: String| AuthError::DpopProof {
                token: credential.id,
                reason,
            };
            let proof = dpop.proof(method, &url.to_string(), ath).map_err(refusal)?;
            let mut value = HeaderValue::try_from(proof.expose_secret())
                .map_err(|_| refusal("the proof is not a header value".to_owned()))?;
            value.set_sensitive(true);
            headers.insert(DPOP, value);
        }
        #[cfg(not(feature = "dpop"))]
        let _ = (method, url);
        headers.insert(self.inner.header.clone(), credential.value.clone());
        Ok(())
    }

    /// Looks at an answer to a request sent with `credential` to `url`:
    /// keeps the `DPoP-Nonce` its origin gave, if any, and says whether the
    /// answer asks for a replay with it (a `401`, or `unauthorized` for
    /// another protocol's equivalent, whose DPoP challenge is
    /// `error="use_dpop_nonce"`, with a usable nonce). Such an answer says
    /// nothing about the token.
    pub(crate) fn nonce_requested(
        &self,
        credential: &Credential,
        url: &dyn fmt::Display,
        unauthorized: bool,
        headers: &HeaderMap,
    ) -> bool {
        #[cfg(feature = "dpop")]
        if let (Some(_), Some(dpop)) = (&credential.ath, &self.inner.dpop) {
            let nonce = headers.get(DPOP_NONCE).and_then(|v| v.to_str().ok());
            let kept = nonce.is_some_and(|n| dpop.keep_nonce(&url.to_string(), n));
            return kept && unauthorized && nonce_challenge(headers);
        }
        let _ = (credential, url, unauthorized, headers);
        false
    }

    /// Logs and counts the replay of a request the resource server asked a
    /// DPoP nonce for.
    pub(crate) fn replaying_with_nonce(&self, token: TokenId) {
        tracing::debug!(token = %token, "the resource server asks for a DPoP nonce; replaying once with it");
        #[cfg(feature = "dpop")]
        crate::metrics::dpop_nonce_retry(crate::metrics::DpopServer::Resource);
    }

    /// Whether a request for `uri` gets the token (see [`scope`](Self::scope)).
    pub fn attaches_to(&self, uri: &http::Uri) -> bool {
        self.covers(|| Target::of_uri(uri))
    }

    /// Whether the request `target` gives the parts of gets the token;
    /// without a scope the parts are not even looked at (the hot path).
    pub(crate) fn covers<'a>(&self, target: impl FnOnce() -> Target<'a>) -> bool {
        let scope = &self.inner.scope;
        if scope.is_empty() {
            return true;
        }
        let target = target();
        scope.iter().any(|o| o.covers(&target))
    }

    /// Whether HTTP clients keep this authorizer's header when they follow
    /// a redirect to another origin (they strip `Authorization` only).
    pub(crate) fn header_survives_redirects(&self) -> bool {
        self.inner.header != AUTHORIZATION
    }

    /// The refusal for a header that would survive a cross-origin redirect.
    pub(crate) fn redirects_unchecked(&self) -> AuthError {
        AuthError::RedirectsUnchecked {
            header: self.inner.header.clone(),
        }
    }

    /// The header this sets.
    pub fn header_name(&self) -> &HeaderName {
        &self.inner.header
    }

    /// Where the tokens come from.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// The publication counter [`current`](Self::current) keys its cache
    /// by (a read, for a managed key).
    #[cfg(feature = "tower")]
    pub(crate) fn read_version(&self) -> u64 {
        self.inner.tokens.read_version()
    }

    /// The credential for the current valid token, without waiting: the
    /// hot path.
    ///
    /// While nothing was published since the cached credential was checked
    /// and its token is not stale by the driver's clocks (the wall clock
    /// and the monotonic one, [`Snapshot::is_stale_at`]), it is returned as
    /// it is: one atomic load of the publication counter, one of the cache
    /// and the two clock readings. Otherwise the token is read again
    /// through [`Tokens::valid_token`], which judges it by both clocks and,
    /// when it is stale or expired, wakes the driver (once per token): so
    /// after a resume from suspend or a wall clock stepped forward, the
    /// first request starts the refresh and no request carries a token
    /// the clocks say has expired. The header value is rebuilt only for a
    /// new token.
    pub fn current(&self) -> Result<Credential, AuthError> {
        let tokens = &self.inner.tokens;
        let version = tokens.read_version();
        let cached = self.inner.cache.load();
        if let Some(cached) = &*cached {
            if cached.version == version
                && tokens
                    .now()
                    .is_some_and(|now| !cached.snapshot.is_stale_at(now))
            {
                return Ok(cached.credential.clone());
            }
        }
        let token = tokens
            .valid_token()
            .map_err(|reason| AuthError::NoValidToken {
                waited: Duration::ZERO,
                reason,
            })?;
        let id = token.id();
        let credential = match &*cached {
            // Stale but still valid, and nothing new: the read woke the
            // driver; serve it without touching the cache.
            Some(c) if c.credential.id == id && c.version == version => {
                return Ok(c.credential.clone())
            }
            Some(c) if c.credential.id == id => c.credential.clone(),
            _ => self.build(&token)?,
        };
        self.inner.cache.store(Some(Arc::new(Cached {
            version,
            credential: credential.clone(),
            snapshot: token.into_snapshot(),
        })));
        Ok(credential)
    }

    fn build(&self, token: &TokenRef) -> Result<Credential, AuthError> {
        let secret = token.access_token().expose_secret();
        let text = match &self.inner.scheme {
            Scheme::TokenType if token.token_type().eq_ignore_ascii_case("bearer") => {
                format!("Bearer {secret}")
            }
            Scheme::TokenType => format!("{} {secret}", token.token_type()),
            Scheme::Fixed(s) => format!("{s} {secret}"),
            Scheme::Raw => secret.to_owned(),
        };
        let mut value = HeaderValue::try_from(text)
            .map_err(|_| AuthError::InvalidHeaderValue { token: token.id() })?;
        value.set_sensitive(true);
        Ok(Credential {
            id: token.id(),
            value,
            #[cfg(feature = "dpop")]
            ath: (self.inner.dpop.is_some() && token.token_type().eq_ignore_ascii_case("dpop"))
                .then(|| crate::oauth2::token_hash(secret).into()),
        })
    }

    /// The credential for a valid token, waiting up to the
    /// [`token_wait`](Self::token_wait) when there is none yet. Works under
    /// any executor.
    #[cfg(any(feature = "tower", feature = "reqwest-middleware", feature = "tonic"))]
    pub async fn credential(&self) -> Result<Credential, AuthError> {
        if let Ok(c) = self.current() {
            return Ok(c);
        }
        let wait = self.inner.token_wait;
        let start = Instant::now();
        match wait_async(&self.inner.tokens, wait, || self.current().ok()).await {
            Some(c) => Ok(c),
            None => Err(self.timed_out(start)),
        }
    }

    /// [`credential`](Self::credential), blocking the calling thread.
    pub fn credential_blocking(&self) -> Result<Credential, AuthError> {
        if let Ok(c) = self.current() {
            return Ok(c);
        }
        let start = Instant::now();
        match wait_blocking(&self.inner.tokens, self.inner.token_wait, || {
            self.current().ok()
        }) {
            Some(c) => Ok(c),
            None => Err(self.timed_out(start)),
        }
    }

    fn timed_out(&self, start: Instant) -> AuthError {
        match self.current() {
            Err(AuthError::NoValidToken { reason, .. }) => AuthError::NoValidToken {
                waited: start.elapsed(),
                reason,
            },
            Err(e) => e,
            // A token arrived just now; the caller gave up all the same.
            Ok(_) => AuthError::NoValidToken {
                waited: start.elapsed(),
                reason: NoValidToken::NotYetFetched { last_error: None },
            },
        }
    }

    /// Reports that the API rejected `credential`: the driver refreshes at
    /// once if that token is still the current one.
    pub fn rejected(&self, credential: &Credential) {
        self.rejected_id(credential.id);
    }

    fn rejected_id(&self, id: TokenId) {
        tracing::debug!(token = %id, "the API rejected the token; invalidating it");
        self.inner.tokens.invalidate_id(id);
    }

    /// A credential for a valid token other than `rejected`, waiting up to
    /// the [`refresh_wait`](Self::refresh_wait); `None` if none came.
    #[cfg(any(feature = "tower", feature = "reqwest-middleware", feature = "tonic"))]
    pub async fn replacement(&self, rejected: &Credential) -> Option<Credential> {
        self.replacement_for(rejected.id).await
    }

    #[cfg(any(feature = "tower", feature = "reqwest-middleware", feature = "tonic"))]
    async fn replacement_for(&self, rejected: TokenId) -> Option<Credential> {
        let check = || self.current().ok().filter(|c| c.id != rejected);
        wait_async(&self.inner.tokens, self.inner.refresh_wait, check).await
    }

    /// [`replacement`](Self::replacement), blocking the calling thread.
    pub fn replacement_blocking(&self, rejected: &Credential) -> Option<Credential> {
        let check = || self.current().ok().filter(|c| c.id != rejected.id);
        wait_blocking(&self.inner.tokens, self.inner.refresh_wait, check)
    }
}

/// `Arc::make_mut` without requiring `Clone` on the inside: the builder
/// methods are called before the authorizer is shared, so the `Arc` is
/// unique and this never rebuilds in practice; if it is shared, the
/// settings are copied into a fresh one (with an empty header cache).
trait MakeMutOrRebuild {
    fn make_mut_or_rebuild(this: &mut Self) -> &mut AuthInner;
}

impl MakeMutOrRebuild for Arc<AuthInner> {
    fn make_mut_or_rebuild(this: &mut Self) -> &mut AuthInner {
        if Arc::get_mut(this).is_none() {
            let i = &**this;
            *this = Arc::new(AuthInner {
                tokens: i.tokens.clone(),
                header: i.header.clone(),
                scheme: i.scheme.clone(),
                token_wait: i.token_wait,
                refresh_wait: i.refresh_wait,
                scope: i.scope.clone(),
                cache: ArcSwapOption::empty(),
                #[cfg(feature = "dpop")]
                dpop: i.dpop.clone(),
            });
        }
        match Arc::get_mut(this) {
            Some(inner) => inner,
            None => unreachable!("a freshly built Arc is unique"),
        }
    }
}

/// Waits until `check` gives `Some`, for at most `timeout`, waking on every
/// publication. Works under any executor: the timer is async-io's, which
/// runs its own timer thread when the executor is not async-io's.
#[cfg(any(feature = "tower", feature = "reqwest-middleware", feature = "tonic"))]
async fn wait_async<T>(
    tokens: &Tokens,
    timeout: Duration,
    check: impl Fn() -> Option<T>,
) -> Option<T> {
    let Some(deadline) = Instant::now().checked_add(timeout) else {
        // "Forever": wait without a timer.
        loop {
            let seen = tokens.version();
            if let Some(v) = check() {
                return Some(v);
            }
            if wait_for_change(tokens, seen, None).await == Change::Closed {
                return check();
            }
        }
    };
    let mut timer = async_io::Timer::at(deadline);
    loop {
        let seen = tokens.version();
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        match wait_for_change(tokens, seen, Some(&mut timer)).await {
            Change::Changed => {}
            Change::Closed | Change::TimedOut => return check(),
        }
    }
}

#[cfg(any(feature = "tower", feature = "reqwest-middleware", feature = "tonic"))]
#[derive(PartialEq, Eq)]
enum Change {
    Changed,
    Closed,
    TimedOut,
}

/// Waits for a publication after `seen`, or the timer.
#[cfg(any(feature = "tower", feature = "reqwest-middleware", feature = "tonic"))]
async fn wait_for_change(
    tokens: &Tokens,
    seen: u64,
    mut timer: Option<&mut async_io::Timer>,
) -> Change {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::task::Poll;

    let mut changed = pin!(tokens.changed());
    let mut first = true;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(r) = changed.as_mut().poll(cx) {
            return Poll::Ready(match r {
                Ok(()) => Change::Changed,
                Err(Closed) => Change::Closed,
            });
        }
        // `changed()` compares against the version at its first poll; a
        // publication between our read of `seen` and that poll is caught
        // here.
        if std::mem::take(&mut first) && tokens.version() != seen {
            return Poll::Ready(Change::Changed);
        }
        if let Some(timer) = timer.as_deref_mut() {
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Change::TimedOut);
            }
        }
        Poll::Pending
    })
    .await
}

/// The blocking twin of [`wait_async`].
fn wait_blocking<T>(
    tokens: &Tokens,
    timeout: Duration,
    check: impl Fn() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let seen = tokens.version();
        if let Some(v) = check() {
            return Some(v);
        }
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => BLOCKING_SLICE,
        };
        if left.is_zero() {
            return None;
        }
        if tokens.version() != seen {
            continue;
        }
        match tokens.wait_changed(left.min(BLOCKING_SLICE)) {
            Ok(_) => {}
            Err(Closed) => return check(),
        }
    }
}

/// Whether a response says that the token it carried was not accepted, so
/// that a new token may fix it:
///
/// * `401`, unless its Bearer challenge says `error="insufficient_scope"` or
///   `error="invalid_request"` (a new token of the same kind fixes neither);
/// * `403` whose Bearer challenge says `error="invalid_token"` (RFC 6750
///   wants a 401 there, but some APIs answer 403).
///
/// A plain `403` (and `insufficient_scope` above all) is not a token
/// problem: never retried.
///
/// ```
/// use freshtoken::middleware::is_token_rejected;
/// use http::{HeaderMap, HeaderValue, StatusCode};
///
/// let mut headers = HeaderMap::new();
/// assert!(is_token_rejected(StatusCode::UNAUTHORIZED, &headers));
/// headers.insert("www-authenticate", HeaderValue::from_static(r#"Bearer realm="api", error="insufficient_scope""#));
/// assert!(!is_token_rejected(StatusCode::FORBIDDEN, &headers));
/// assert!(!is_token_rejected(StatusCode::UNAUTHORIZED, &headers));
/// headers.insert("www-authenticate", HeaderValue::from_static(r#"Bearer error="invalid_token""#));
/// assert!(is_token_rejected(StatusCode::FORBIDDEN, &headers));
/// assert!(!is_token_rejected(StatusCode::OK, &headers));
/// ```
pub fn is_token_rejected(status: StatusCode, headers: &HeaderMap) -> bool {
    match status.as_u16() {
        401 => !headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| bearer_error(v.as_bytes()))
            .any(|e| e == "insufficient_scope" || e == "invalid_request"),
        403 => headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| bearer_error(v.as_bytes()))
            .any(|e| e == "invalid_token"),
        _ => false,
    }
}

/// The `error` parameter of the first Bearer challenge in a
/// `WWW-Authenticate` value (RFC 9110 11.6.1 syntax, leniently parsed; any
/// input is fine).
pub fn bearer_error(value: &[u8]) -> Option<String> {
    challenge_error(value, "bearer")
}

/// The `error` parameter of the first challenge of `scheme` (lower case)
/// in a `WWW-Authenticate` value.
fn challenge_error(value: &[u8], scheme: &str) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let mut in_bearer = false;
    for item in split_unquoted(text, ',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        // A challenge starts with a scheme: a token followed by a space (or
        // nothing), not by `=`.
        let (first, rest) = match item.find([' ', '\t', '=']) {
            Some(i) if item[i..].trim_start().starts_with('=') => ("", item),
            Some(i) => (&item[..i], item[i..].trim_start()),
            None => (item, ""),
        };
        if !first.is_empty() {
            in_bearer = first.eq_ignore_ascii_case(scheme);
        }
        if !in_bearer || rest.is_empty() {
            continue;
        }
        if let Some((name, value)) = rest.split_once('=') {
            if name.trim().eq_ignore_ascii_case("error") {
                let v = value.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                return Some(v.replace("\\\"", "\"").replace("\\\\", "\\"));
            }
        }
    }
    None
}

/// Whether a `WWW-Authenticate` in `headers` is a DPoP challenge with
/// `error="use_dpop_nonce"` (RFC 9449 9).
#[cfg(feature = "dpop")]
pub(crate) fn nonce_challenge(headers: &HeaderMap) -> bool {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| challenge_error(v.as_bytes(), "dpop"))
        .any(|e| e == crate::oauth2::USE_DPOP_NONCE)
}

/// Splits at `sep` outside double quotes (with backslash escapes).
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_errors_are_found_in_any_challenge_list() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"Bearer error="invalid_token""#, Some("invalid_token")),
            (
                r#"Bearer realm="a, b", error="invalid_token", error_description="expired""#,
                Some("invalid_token"),
            ),
            (
                r#"Basic realm="x", Bearer realm="y", error=insufficient_scope"#,
                Some("insufficient_scope"),
            ),
            (r#"Basic realm="x", error="invalid_token""#, None),
            (r#"Bearer realm="x""#, None),
            ("Bearer", None),
            ("", None),
            ("=,=,\"", None),
            (r#"bearer ERROR = "a\"b""#, Some("a\"b")),
        ];
        for (value, expected) in cases {
            assert_eq!(
                bearer_error(value.as_bytes()).as_deref(),
                *expected,
                "{value}"
            );
        }
        // Arbitrary bytes never panic.
        for bytes in [&b"\xff\xfe"[..], b"Bearer \"", b"\\", b", , ,", b"Bearer ="] {
            let _ = bearer_error(bytes);
        }
    }

    #[test]
    fn rejections_are_told_from_other_failures() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.append(WWW_AUTHENTICATE, HeaderValue::from_static(v));
            h
        };
        let none = HeaderMap::new();
        assert!(is_token_rejected(StatusCode::UNAUTHORIZED, &none));
        assert!(is_token_rejected(
            StatusCode::UNAUTHORIZED,
            &with(r#"Bearer error="invalid_token""#)
        ));
        assert!(!is_token_rejected(
            StatusCode::UNAUTHORIZED,
            &with(r#"Bearer error="invalid_request""#)
        ));
        assert!(!is_token_rejected(
            StatusCode::FORBIDDEN,
            &with(r#"Bearer error="insufficient_scope""#)
        ));
        assert!(!is_token_rejected(StatusCode::FORBIDDEN, &none));
        assert!(is_token_rejected(
            StatusCode::FORBIDDEN,
            &with(r#"Bearer error="invalid_token""#)
        ));
        assert!(!is_token_rejected(StatusCode::INTERNAL_SERVER_ERROR, &none));
    }

    /// Nonces are kept per origin (scheme, host, port), for at most
    /// [`MAX_NONCE_ORIGINS`] of them, the least recently heard from
    /// dropped first; a relative URL has no origin and gets no proof.
    #[cfg(feature = "dpop")]
    #[test]
    fn nonces_are_kept_per_origin_and_bounded() {
        let dpop = ResourceDpop::new(crate::oauth2::DpopKey::generate().unwrap());
        let nonce_in = |url: &str| -> Option<String> {
            let proof = dpop.proof("GET", url, "ath").unwrap();
            let claims = proof.expose_secret().split('.').nth(1).unwrap().to_owned();
            let claims =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
                    .unwrap();
            let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
            claims["nonce"].as_str().map(str::to_owned)
        };
        assert!(dpop.keep_nonce("https://a.example/x?q", "na"));
        assert!(dpop.keep_nonce("https://B.example:8443/", "nb"));
        assert!(!dpop.keep_nonce("https://c.example/", "not a nonce\""));
        assert!(!dpop.keep_nonce("/relative", "nr"));
        assert_eq!(nonce_in("https://a.example:443/y").as_deref(), Some("na"));
        assert_eq!(nonce_in("https://b.example:8443/z").as_deref(), Some("nb"));
        assert_eq!(nonce_in("http://a.example/y"), None, "another scheme");
        assert_eq!(nonce_in("https://a.example:444/y"), None, "another port");
        assert!(dpop.proof("GET", "/relative", "ath").is_err());
        // b heard from again, then 31 more origins: a, the oldest, goes.
        assert!(dpop.keep_nonce("https://b.example:8443/", "nb2"));
        for i in 0..MAX_NONCE_ORIGINS - 1 {
            assert!(dpop.keep_nonce(&format!("https://h{i}.example/"), "n"));
        }
        assert_eq!(dpop.nonces.lock().unwrap().len(), MAX_NONCE_ORIGINS);
        assert_eq!(nonce_in("https://a.example/"), None);
        assert_eq!(nonce_in("https://b.example:8443/").as_deref(), Some("nb2"));
        assert!(!format!("{dpop:?}").contains("nb2"));
    }

    /// The hot path serves the cached credential only while the token is
    /// fresh by both clocks: a wall clock stepped forward (a resume from
    /// suspend) or back never gets an expired token sent, and the first
    /// request after the step wakes the driver.
    #[test]
    fn the_cached_credential_is_judged_by_both_clocks() {
        use crate::driver::{Command, Publisher};
        use crate::handle::RefreshState;
        use freshtoken_core::{AccessToken, Clock, ManualClock, MonoLife, Timestamp, Token};

        let clock = ManualClock::new(Timestamp::from_secs(100));
        let (publisher, handle) = Publisher::new(Arc::new(clock.clone()));
        let publish = |secret: &str| {
            let at = clock.read();
            let mut s = Snapshot::initial();
            s.token = Some(Arc::new(Token::new(
                AccessToken::new(secret),
                at.wall,
                at.wall + Duration::from_secs(30),
                at.wall + Duration::from_secs(60),
            )));
            s.state = RefreshState::Healthy;
            s.life = Some(MonoLife {
                stale_at: at.mono + Duration::from_secs(30),
                expires_at: at.mono + Duration::from_secs(60),
            });
            publisher.publish(s);
        };
        let auth = Authorizer::new(handle);
        let expired = |auth: &Authorizer| {
            matches!(
                auth.current(),
                Err(AuthError::NoValidToken {
                    reason: NoValidToken::Expired { .. },
                    ..
                })
            )
        };

        publish("one");
        assert_eq!(auth.current().unwrap().header_value(), "Bearer one");
        assert_eq!(auth.current().unwrap().header_value(), "Bearer one");
        assert_eq!(publisher.try_recv(), None, "fresh: nothing sent");

        // A 120 s suspend the driver's timer did not see: the wall clock
        // moved, the driver published nothing.
        clock.set(Timestamp::from_secs(220));
        assert!(expired(&auth), "an expired token was served");
        assert_eq!(publisher.try_recv(), Some(Command::Stale));

        // The driver's new token; then 70 s pass with the wall clock
        // stepped back 120 s meanwhile.
        publish("two");
        assert_eq!(auth.current().unwrap().header_value(), "Bearer two");
        clock.advance(Duration::from_secs(70));
        clock.set(Timestamp::from_secs(170));
        assert!(
            expired(&auth),
            "a wall clock stepped back stretched the token"
        );
    }
}
