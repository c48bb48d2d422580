//! Sending an [`HttpRequest`] and reading the answer: the transport traits,
//! and the clients behind features.
//!
//! The OAuth2 protocol (building requests, parsing and classifying
//! answers) is pure and needs no HTTP client; a transport only moves bytes.
//! A source is blocking ([`SyncHttp`], over an [`HttpTransport`]) or async
//! ([`AsyncHttp`], over an [`AsyncHttpTransport`]), and its type says
//! which, so a blocking client never runs on an executor's threads and an
//! async one never needs a blocking pool.
//!
//! | transport | feature | kind |
//! | --- | --- | --- |
//! | `UreqTransport` | `ureq-transport` (in `oauth2`) | [`HttpTransport`] |
//! | `ReqwestTransport` | `reqwest-transport` | [`AsyncHttpTransport`] |
//! | `HyperTransport` | `hyper-transport` | [`AsyncHttpTransport`] |
//!
//! Each built-in transport follows no redirect, reads at most the cap
//! plus one byte of an answer, applies its timeouts (and the refresh
//! machine's deadline, [`HttpRequest::timeout`]), and refuses, whoever
//! built the request, a URL that
//! [`check_token_url`](super::check_token_url) rejects (plain http beyond
//! loopback).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::oauth2::{HttpRequest, HttpResponse};
use freshtoken_core::FetchError;

#[cfg(feature = "hyper-transport")]
mod hyper;
#[cfg(feature = "reqwest-transport")]
mod reqwest;
#[cfg(feature = "ureq-transport")]
mod ureq;

#[cfg(feature = "hyper-transport")]
pub use self::hyper::HyperTransport;
#[cfg(feature = "reqwest-transport")]
pub use self::reqwest::ReqwestTransport;
#[cfg(feature = "ureq-transport")]
pub use self::ureq::{ProxyError, UreqTransport};

/// An HTTP client that can send a token request, blocking the caller.
///
/// `UreqTransport` (feature `ureq-transport`, part of `oauth2`) is the
/// built-in one; implement this trait to use another client (one your
/// application already configures for proxies or mTLS, say). An
/// implementation must:
///
/// * send `request` as is (a `POST` for token requests, a `GET` for
///   discovery documents), and not follow redirects (a redirect is
///   returned as an answer like any other);
/// * read at most `max_body + 1` bytes of the body (the parser refuses an
///   answer longer than `max_body`), and apply its own timeouts;
/// * return every HTTP status as an [`HttpResponse`], and report only
///   failures to get one (network, TLS, timeout) as a [`FetchError`], almost
///   always [`FetchError::transient`], without secrets in the message.
///
/// ```
/// use freshtoken::oauth2::HttpTransport;
/// use freshtoken::oauth2::{HttpRequest, HttpResponse};
/// use freshtoken::FetchError;
///
/// /// Answers every request with the same token; handy in unit tests.
/// struct Canned;
///
/// impl HttpTransport for Canned {
///     fn send(&self, _request: &HttpRequest, _max_body: usize) -> Result<HttpResponse, FetchError> {
///         Ok(HttpResponse::new(200, vec![], br#"{"access_token":"t","expires_in":60}"#.to_vec()))
///     }
/// }
/// ```
pub trait HttpTransport: Send + Sync + 'static {
    /// Sends `request` and returns the answer, whatever its status.
    fn send(&self, request: &HttpRequest, max_body: usize) -> Result<HttpResponse, FetchError>;
}

/// An async HTTP client that can send a token request: what a source
/// built with [`SourceBuilder::async_transport`](super::SourceBuilder::async_transport)
/// sends through, polled in the driver's own task (no blocking pool).
///
/// `ReqwestTransport` (feature `reqwest-transport`) and `HyperTransport`
/// (feature `hyper-transport`) are built in. An implementation has the
/// duties of an [`HttpTransport`] (no redirects followed, at most
/// `max_body + 1` bytes read, its own timeouts, every status an answer,
/// no secret in an error), and its future must be `Send`.
///
/// ```
/// use freshtoken::oauth2::AsyncHttpTransport;
/// use freshtoken::oauth2::{HttpRequest, HttpResponse};
/// use freshtoken::FetchError;
///
/// /// Answers every request with the same token; handy in unit tests.
/// struct Canned;
///
/// impl AsyncHttpTransport for Canned {
///     async fn send(&self, _request: &HttpRequest, _max_body: usize) -> Result<HttpResponse, FetchError> {
///         Ok(HttpResponse::new(200, vec![], br#"{"access_token":"t","expires_in":60}"#.to_vec()))
///     }
/// }
///
/// let request = HttpRequest::get("https://auth.example.com/.well-known/openid-configuration");
/// let answer = futures::executor::block_on(Canned.send(&request, 1024)).unwrap();
/// assert_eq!(answer.status(), 200);
/// ```
pub trait AsyncHttpTransport: Send + Sync + 'static {
    /// Sends `request` and returns the answer, whatever its status.
    fn send(
        &self,
        request: &HttpRequest,
        max_body: usize,
    ) -> impl Future<Output = Result<HttpResponse, FetchError>> + Send;
}

/// The transport kind of a source whose transport blocks (an
/// [`HttpTransport`]): the source is a
/// [`TokenSource`](crate::source::TokenSource), which the async drivers run
/// on their blocking pool. The default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncHttp;

/// The transport kind of a source whose transport is async (an
/// [`AsyncHttpTransport`]): the source is an
/// [`AsyncTokenSource`](crate::source::AsyncTokenSource), polled in the
/// driver's task (pass it to `Builder::spawn` as
/// `AsyncSource(source)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AsyncHttp;

/// [`SyncHttp`] or [`AsyncHttp`]: the transport kind a source's type
/// carries. Implemented by those two only.
pub trait TransportKind: sealed::Sealed + Send + Sync + 'static {
    /// Whether sources of this kind are async.
    #[doc(hidden)]
    const ASYNC: bool;
}

impl TransportKind for SyncHttp {
    const ASYNC: bool = false;
}

impl TransportKind for AsyncHttp {
    const ASYNC: bool = true;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::SyncHttp {}
    impl Sealed for super::AsyncHttp {}
}

/// An [`AsyncHttpTransport`] behind a pointer: its future boxed (one
/// allocation per token request, minutes apart).
pub(crate) trait ErasedAsyncTransport: Send + Sync + 'static {
    fn send_boxed<'a>(
        &'a self,
        request: &'a HttpRequest,
        max_body: usize,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, FetchError>> + Send + 'a>>;
}

impl<T: AsyncHttpTransport> ErasedAsyncTransport for T {
    fn send_boxed<'a>(
        &'a self,
        request: &'a HttpRequest,
        max_body: usize,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, FetchError>> + Send + 'a>> {
        Box::pin(self.send(request, max_body))
    }
}

/// The transport a source or a discovery holds: blocking or async. The
/// source's type ([`SyncHttp`] or [`AsyncHttp`]) says which; the protocol
/// code is written once, as async code, and a blocking source runs it with
/// [`run_blocking`] (its only awaits are on the blocking arm, which is
/// ready at once).
#[derive(Clone)]
pub(crate) enum Transport {
    Blocking(Arc<dyn HttpTransport>),
    Async(Arc<dyn ErasedAsyncTransport>),
}

impl Transport {
    pub(crate) async fn send(
        &self,
        request: &HttpRequest,
        max_body: usize,
    ) -> Result<HttpResponse, FetchError> {
        match self {
            Transport::Blocking(t) => t.send(request, max_body),
            Transport::Async(t) => t.send_boxed(request, max_body).await,
        }
    }

    /// Whether it blocks.
    pub(crate) fn is_blocking(&self) -> bool {
        matches!(self, Transport::Blocking(_))
    }

    /// The transport for an async source: a blocking one (set with
    /// `SourceBuilder::transport` on an async builder) sends each request
    /// from a thread of its own, so the driver's task never blocks.
    pub(crate) fn into_async(self) -> Transport {
        match self {
            Transport::Blocking(t) => Transport::Async(Arc::new(OnThread(t))),
            async_transport => async_transport,
        }
    }

    /// A transport for a source built without one: ureq's, with the
    /// builder's timeouts, when the crate has it.
    #[cfg(feature = "ureq-transport")]
    pub(crate) fn default_blocking(
        connect_timeout: Option<Duration>,
        timeout: Option<Duration>,
    ) -> Transport {
        let mut t = UreqTransport::new();
        if let Some(d) = connect_timeout {
            t = t.connect_timeout(d);
        }
        if let Some(d) = timeout {
            t = t.timeout(d);
        }
        Transport::Blocking(Arc::new(t))
    }

    /// Without the `ureq-transport` feature there is no built-in blocking
    /// transport: each request fails with an error that says so.
    #[cfg(not(feature = "ureq-transport"))]
    pub(crate) fn default_blocking(
        _connect_timeout: Option<Duration>,
        _timeout: Option<Duration>,
    ) -> Transport {
        Transport::Blocking(Arc::new(NoTransport))
    }
}

/// The blocking transport of a client built without one (device login):
/// ureq's when the crate has it, else one whose every request fails with
/// an error that names the missing feature.
pub(crate) fn default_http_transport() -> Arc<dyn HttpTransport> {
    #[cfg(feature = "ureq-transport")]
    return Arc::new(UreqTransport::new());
    #[cfg(not(feature = "ureq-transport"))]
    return Arc::new(NoTransport);
}

/// A blocking transport used by an async source: each request on a
/// thread of its own (token requests are minutes apart), its answer
/// awaited.
struct OnThread(Arc<dyn HttpTransport>);

impl AsyncHttpTransport for OnThread {
    async fn send(
        &self,
        request: &HttpRequest,
        max_body: usize,
    ) -> Result<HttpResponse, FetchError> {
        use event_listener::Event;
        use std::sync::Mutex;

        struct Slot {
            answer: Mutex<Option<Result<HttpResponse, FetchError>>>,
            done: Event,
        }
        let slot = Arc::new(Slot {
            answer: Mutex::new(None),
            done: Event::new(),
        });
        let (transport, request, theirs) = (self.0.clone(), request.clone(), slot.clone());
        std::thread::Builder::new()
            .name("freshtoken-http".into())
            .spawn(move || {
                let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    transport.send(&request, max_body)
                }))
                .unwrap_or_else(|_| Err(FetchError::transient("the HTTP transport panicked")));
                *crate::sync::lock(&theirs.answer) = Some(answer);
                theirs.done.notify(usize::MAX);
            })
            .map_err(|e| FetchError::transient(format!("could not start the HTTP thread: {e}")))?;
        loop {
            let listener = slot.done.listen();
            if let Some(answer) = crate::sync::lock(&slot.answer).take() {
                return answer;
            }
            listener.await;
        }
    }
}

/// The blocking transport of a source built without one in a build without
/// `ureq-transport`.
#[cfg(not(feature = "ureq-transport"))]
struct NoTransport;

#[cfg(not(feature = "ureq-transport"))]
impl HttpTransport for NoTransport {
    fn send(&self, _request: &HttpRequest, _max_body: usize) -> Result<HttpResponse, FetchError> {
        Err(FetchError::permanent(
            "no HTTP transport: this build of freshtoken has no `ureq-transport` feature; \
             set one with SourceBuilder::transport or SourceBuilder::async_transport",
        ))
    }
}

/// Runs protocol code written as async for a blocking source: with a
/// blocking transport it never waits, so one poll completes it. Should it
/// not (an async transport reached through a blocking source, which the
/// source types rule out), the fetch fails instead of blocking or
/// panicking.
pub(crate) fn run_blocking<T>(
    future: impl Future<Output = Result<T, FetchError>>,
) -> Result<T, FetchError> {
    poll_once(future).unwrap_or_else(|| {
        Err(FetchError::permanent(
            "a blocking source reached an async transport (freshtoken bug)",
        ))
    })
}

/// Polls `future` once; `None` if it is not ready.
pub(crate) fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// The overall timeout for `request`: slightly below the time its caller
/// waits for it ([`HttpRequest::timeout`], the refresh machine's
/// deadline), so the two do not race, and never above `configured`.
/// `None`: the configured timeout applies as it is.
#[cfg_attr(
    not(any(
        feature = "ureq-transport",
        feature = "reqwest-transport",
        feature = "hyper-transport"
    )),
    allow(dead_code)
)]
pub(crate) fn request_timeout(request: &HttpRequest, configured: Duration) -> Option<Duration> {
    let waited = request.timeout()?;
    let margin = (waited / 20).max(Duration::from_millis(200));
    let below = waited
        .saturating_sub(margin)
        .max(Duration::from_millis(100));
    (below < configured).then_some(below)
}

/// Header names and values as the parser takes them (a value that is not
/// UTF-8 is read lossily; the parser only reads ASCII ones).
#[cfg(any(
    feature = "ureq-transport",
    feature = "reqwest-transport",
    feature = "hyper-transport"
))]
pub(crate) fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Appends `chunk` to `body` without letting it grow past `limit` bytes;
/// `true` once it is full (the rest of the answer is not read).
#[cfg(any(feature = "reqwest-transport", feature = "hyper-transport"))]
pub(crate) fn append_capped(body: &mut Vec<u8>, chunk: &[u8], limit: usize) -> bool {
    let room = limit.saturating_sub(body.len());
    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    body.len() >= limit
}

/// The checked URI a request goes to, or the permanent error that refuses
/// it (plain http beyond loopback, not a URL).
#[cfg(any(
    feature = "ureq-transport",
    feature = "reqwest-transport",
    feature = "hyper-transport"
))]
pub(crate) fn checked_uri(request: &HttpRequest) -> Result<http::Uri, FetchError> {
    freshtoken_core::oauth2::parse_token_url(request.url())
        .map_err(|e| FetchError::permanent(e.to_string()))
}

/// The innermost cause of an error, for messages: HTTP clients wrap the
/// I/O or TLS error that says what happened in several layers of "error
/// sending request".
#[cfg(any(feature = "reqwest-transport", feature = "hyper-transport"))]
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
