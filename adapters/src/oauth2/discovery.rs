//! Reading an issuer's metadata (RFC 8414, OpenID Connect Discovery) over
//! HTTP, cached.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use freshtoken_core::oauth2::discovery::{
    check_issuer, parse_metadata_response, well_known_urls, AuthorityMetadata, DiscoveryError,
    DEFAULT_MAX_METADATA_BYTES,
};
use freshtoken_core::oauth2::HttpRequest;
use freshtoken_core::FetchError;

#[cfg(feature = "ureq-transport")]
use super::transport::UreqTransport;
use super::transport::{
    poll_once, AsyncHttp, AsyncHttpTransport, HttpTransport, SyncHttp, Transport,
};

/// How long metadata is used before it is read again: 24 hours. Token
/// endpoints move about never; a day bounds how long a move goes unseen.
pub const DEFAULT_METADATA_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// After a failed re-read, how long the last good metadata is used before
/// the next try: 5 minutes.
pub const DEFAULT_METADATA_RETRY: Duration = Duration::from_secs(300);

struct Cached {
    metadata: Arc<AuthorityMetadata>,
    /// When it was read, or when a re-read last failed.
    checked: Instant,
    retry: bool,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// An async read is under way (async readers wait for it instead of
    /// reading too; blocking readers hold the lock while they read).
    reading: bool,
}

pub(crate) struct Inner {
    issuer: String,
    urls: [String; 2],
    transport: Transport,
    max_age: Duration,
    retry: Duration,
    max_bytes: usize,
    state: Mutex<State>,
    /// Notified when an async read ends.
    read_done: Event,
}

/// An issuer's metadata, read from its well-known document and cached.
///
/// [`metadata`](Self::metadata) returns the cached document while it is
/// younger than the max age (default 24 h), and reads it again after that.
/// A failed re-read keeps the last good document (and tries again after
/// 5 minutes); only while no document has ever been read does a failure
/// reach the caller, as a typed [`DiscoveryError`].
///
/// The document is looked for at `{issuer}/.well-known/openid-configuration`,
/// then, if that answers 4xx, at the RFC 8414 location. Its `issuer` must be
/// identical to the one given, and its `token_endpoint` must be https (or
/// http to loopback): anything else is refused, never used.
///
/// A `Discovery` is cheap to clone (clones share the cache), so several
/// sources for one authority read the document once.
///
/// Like the sources, a `Discovery` is blocking ([`SyncHttp`], the default:
/// `new` with ureq, [`with_transport`](Discovery::with_transport)) or
/// async ([`AsyncHttp`]:
/// [`with_async_transport`](Discovery::with_async_transport), whose
/// `metadata` and `read` are `async`); a source from
/// `ClientCredentials::from_issuer` is of the same kind, and sends its
/// token requests over the discovery's transport unless given another.
///
/// ```no_run
/// use freshtoken::oauth2::Discovery;
///
/// let discovery = Discovery::new("https://login.microsoftonline.com/my-tenant-id/v2.0")?;
/// let metadata = discovery.metadata()?;
/// println!("token endpoint: {}", metadata.token_endpoint());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct Discovery<M = SyncHttp> {
    inner: Arc<Inner>,
    mode: PhantomData<fn() -> M>,
}

impl<M> Clone for Discovery<M> {
    fn clone(&self) -> Self {
        Discovery {
            inner: self.inner.clone(),
            mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for Discovery<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("issuer", &self.issuer)
            .field("max_age", &self.max_age)
            .field("blocking", &self.transport.is_blocking())
            .finish_non_exhaustive()
    }
}

impl Discovery<SyncHttp> {
    /// Discovery for `issuer` (an https URL, or http to loopback, without
    /// query or fragment), with [`UreqTransport`]'s defaults.
    #[cfg(feature = "ureq-transport")]
    pub fn new(issuer: impl Into<String>) -> Result<Self, DiscoveryError> {
        Self::with_transport(issuer, UreqTransport::new())
    }

    /// Discovery over another blocking transport.
    pub fn with_transport(
        issuer: impl Into<String>,
        transport: impl HttpTransport,
    ) -> Result<Self, DiscoveryError> {
        Self::build(
            issuer.into(),
            Transport::Blocking(Arc::new(transport)),
            DEFAULT_METADATA_MAX_AGE,
            DEFAULT_METADATA_RETRY,
        )
    }

    /// The metadata: cached, or read now (see the type's docs).
    pub fn metadata(&self) -> Result<Arc<AuthorityMetadata>, DiscoveryError> {
        self.inner.metadata_blocking()
    }

    /// Reads the document now, bypassing (and not touching) the cache.
    pub fn read(&self) -> Result<AuthorityMetadata, DiscoveryError> {
        run_discovery_blocking(self.inner.read())
    }
}

impl Discovery<AsyncHttp> {
    /// Discovery over an async transport: [`metadata`](Self::metadata) and
    /// [`read`](Self::read) are `async`, and a source built with
    /// `from_issuer(discovery, ..)` is an async source over the same
    /// transport.
    ///
    /// ```
    /// use freshtoken::oauth2::{AsyncHttpTransport, Discovery, HttpRequest, HttpResponse};
    /// use freshtoken::FetchError;
    ///
    /// struct Canned;
    /// impl AsyncHttpTransport for Canned {
    ///     async fn send(&self, _: &HttpRequest, _: usize) -> Result<HttpResponse, FetchError> {
    ///         let doc = r#"{"issuer":"https://auth.example.com","token_endpoint":"https://auth.example.com/token"}"#;
    ///         Ok(HttpResponse::new(200, vec![], doc.as_bytes().to_vec()))
    ///     }
    /// }
    ///
    /// let discovery = Discovery::with_async_transport("https://auth.example.com", Canned)?;
    /// let metadata = futures::executor::block_on(discovery.metadata())?;
    /// assert_eq!(metadata.token_endpoint(), "https://auth.example.com/token");
    /// # Ok::<_, freshtoken::oauth2::DiscoveryError>(())
    /// ```
    pub fn with_async_transport(
        issuer: impl Into<String>,
        transport: impl AsyncHttpTransport,
    ) -> Result<Self, DiscoveryError> {
        Self::build(
            issuer.into(),
            Transport::Async(Arc::new(transport)),
            DEFAULT_METADATA_MAX_AGE,
            DEFAULT_METADATA_RETRY,
        )
    }

    /// The metadata: cached, or read now (see the type's docs). Concurrent
    /// callers wait for one read.
    pub async fn metadata(&self) -> Result<Arc<AuthorityMetadata>, DiscoveryError> {
        self.inner.metadata_async().await
    }

    /// Reads the document now, bypassing (and not touching) the cache.
    pub async fn read(&self) -> Result<AuthorityMetadata, DiscoveryError> {
        self.inner.read().await
    }
}

impl<M> Discovery<M> {
    fn build(
        issuer: String,
        transport: Transport,
        max_age: Duration,
        retry: Duration,
    ) -> Result<Self, DiscoveryError> {
        Ok(Discovery {
            inner: Arc::new(Inner::new(issuer, transport, max_age, retry)?),
            mode: PhantomData,
        })
    }

    /// Sets how long a document is used before it is read again, and how
    /// long the last good one is used after a failed re-read. Call it
    /// before the first read (it starts a new, empty cache).
    pub fn max_age(self, max_age: Duration, retry_after_failure: Duration) -> Self {
        let inner = &self.inner;
        Discovery::build(
            inner.issuer.clone(),
            inner.transport.clone(),
            max_age,
            retry_after_failure,
        )
        .unwrap_or(self)
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The shared state, for a source (which reads it blocking or async as
    /// its transport is).
    pub(crate) fn shared(&self) -> Arc<Inner> {
        self.inner.clone()
    }
}

impl Inner {
    fn new(
        issuer: String,
        transport: Transport,
        max_age: Duration,
        retry: Duration,
    ) -> Result<Self, DiscoveryError> {
        check_issuer(&issuer)?;
        let urls = well_known_urls(&issuer)?;
        Ok(Inner {
            issuer,
            urls,
            transport,
            max_age,
            retry,
            max_bytes: DEFAULT_MAX_METADATA_BYTES,
            state: Mutex::new(State::default()),
            read_done: Event::new(),
        })
    }

    /// The same issuer and ages over another transport, with a cache of
    /// its own.
    pub(crate) fn with_transport(&self, transport: Transport) -> Result<Self, DiscoveryError> {
        Inner::new(self.issuer.clone(), transport, self.max_age, self.retry)
    }

    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport.clone()
    }

    pub(crate) fn transport_is_blocking(&self) -> bool {
        self.transport.is_blocking()
    }

    /// The metadata, read as the transport reads: blocking (one poll) or
    /// async.
    pub(crate) async fn metadata(&self) -> Result<Arc<AuthorityMetadata>, DiscoveryError> {
        if self.transport.is_blocking() {
            self.metadata_blocking()
        } else {
            self.metadata_async().await
        }
    }

    /// The cached document if it is still to be used.
    fn fresh(&self, state: &State) -> Option<Arc<AuthorityMetadata>> {
        let cached = state.cached.as_ref()?;
        let wait = if cached.retry {
            self.retry
        } else {
            self.max_age
        };
        (cached.checked.elapsed() < wait).then(|| cached.metadata.clone())
    }

    /// Records the outcome of a read: the new document, or the failure
    /// (the last good document kept, if any).
    fn record(
        &self,
        state: &mut State,
        read: Result<AuthorityMetadata, DiscoveryError>,
    ) -> Result<Arc<AuthorityMetadata>, DiscoveryError> {
        match read {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                tracing::debug!(
                    issuer = %self.issuer,
                    token_endpoint = metadata.token_endpoint(),
                    "read the authority's metadata"
                );
                state.cached = Some(Cached {
                    metadata: metadata.clone(),
                    checked: Instant::now(),
                    retry: false,
                });
                Ok(metadata)
            }
            Err(e) => match state.cached.as_mut() {
                Some(cached) => {
                    tracing::warn!(
                        issuer = %self.issuer,
                        error = %e,
                        "re-reading the authority's metadata failed; keeping the last good one"
                    );
                    cached.checked = Instant::now();
                    cached.retry = true;
                    Ok(cached.metadata.clone())
                }
                None => Err(e),
            },
        }
    }

    fn metadata_blocking(&self) -> Result<Arc<AuthorityMetadata>, DiscoveryError> {
        // One reader at a time: sources share the lock only around a
        // request that happens once a day.
        let mut state = crate::sync::lock(&self.state);
        if let Some(metadata) = self.fresh(&state) {
            return Ok(metadata);
        }
        let read = run_discovery_blocking(self.read());
        self.record(&mut state, read)
    }

    async fn metadata_async(&self) -> Result<Arc<AuthorityMetadata>, DiscoveryError> {
        loop {
            let listener = {
                let mut state = crate::sync::lock(&self.state);
                if let Some(metadata) = self.fresh(&state) {
                    return Ok(metadata);
                }
                if !state.reading {
                    state.reading = true;
                    break;
                }
                self.read_done.listen()
            };
            listener.await;
        }
        // Whatever happens to this future (dropped mid-read included), the
        // next reader may read.
        let _reading = ReadingGuard(self);
        let read = self.read().await;
        let mut state = crate::sync::lock(&self.state);
        self.record(&mut state, read)
    }

    async fn read(&self) -> Result<AuthorityMetadata, DiscoveryError> {
        let mut first_error = None;
        for url in &self.urls {
            let answer = match self
                .transport
                .send(&HttpRequest::get(url.clone()), self.max_bytes)
                .await
            {
                Ok(answer) => answer,
                Err(e) => return Err(transport_error(e)),
            };
            match parse_metadata_response(&answer, &self.issuer, self.max_bytes) {
                Ok(metadata) => return Ok(metadata),
                // Not there: try the other location.
                Err(DiscoveryError::Status { status }) if (400..500).contains(&status) => {
                    first_error.get_or_insert(DiscoveryError::Status { status });
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or(DiscoveryError::Status { status: 404 }))
    }
}

/// Ends an async read: clears the flag and wakes the waiting readers.
struct ReadingGuard<'a>(&'a Inner);

impl Drop for ReadingGuard<'_> {
    fn drop(&mut self) {
        crate::sync::lock(&self.0.state).reading = false;
        self.0.read_done.notify(usize::MAX);
    }
}

/// Runs a read for a blocking discovery (see `run_blocking`).
fn run_discovery_blocking<T>(
    future: impl std::future::Future<Output = Result<T, DiscoveryError>>,
) -> Result<T, DiscoveryError> {
    poll_once(future).unwrap_or_else(|| {
        Err(DiscoveryError::Unreachable(
            "a blocking discovery reached an async transport (freshtoken bug)".into(),
        ))
    })
}

/// A network failure while reading the document (the transport's
/// messages hold no secrets).
fn transport_error(e: FetchError) -> DiscoveryError {
    DiscoveryError::Unreachable(e.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshtoken_core::oauth2::HttpResponse;
    use std::future::Future as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ISS: &str = "https://auth.example.com/tenant";

    /// Serves the document at one location; fails (503 or a network
    /// error) while `down` says so; counts requests.
    struct Fake {
        at: &'static str,
        token_endpoint: Mutex<&'static str>,
        down: Mutex<Option<Result<u16, ()>>>,
        requests: Arc<AtomicUsize>,
    }

    impl HttpTransport for Fake {
        fn send(&self, r: &HttpRequest, _max: usize) -> Result<HttpResponse, FetchError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            assert_eq!(r.method(), "GET");
            match *self.down.lock().unwrap() {
                Some(Ok(status)) => return Ok(HttpResponse::new(status, vec![], vec![])),
                Some(Err(())) => return Err(FetchError::transient("connection refused")),
                None => {}
            }
            if r.url() != self.at {
                return Ok(HttpResponse::new(404, vec![], b"not here".to_vec()));
            }
            let doc = format!(
                r#"{{"issuer":"{ISS}","token_endpoint":"{}"}}"#,
                self.token_endpoint.lock().unwrap()
            );
            Ok(HttpResponse::new(200, vec![], doc.into_bytes()))
        }
    }

    fn fake(at: &'static str) -> (Arc<Fake>, Arc<AtomicUsize>) {
        let requests = Arc::new(AtomicUsize::new(0));
        let f = Arc::new(Fake {
            at,
            token_endpoint: Mutex::new("https://auth.example.com/tenant/token"),
            down: Mutex::new(None),
            requests: requests.clone(),
        });
        (f, requests)
    }

    struct Shared(Arc<Fake>);
    impl HttpTransport for Shared {
        fn send(&self, r: &HttpRequest, max: usize) -> Result<HttpResponse, FetchError> {
            self.0.send(r, max)
        }
    }

    #[test]
    fn cached_then_reread_and_the_last_good_kept_through_failures() {
        let (f, requests) =
            fake("https://auth.example.com/tenant/.well-known/openid-configuration");
        let d = Discovery::with_transport(ISS, Shared(f.clone())).unwrap();
        assert_eq!(
            d.metadata().unwrap().token_endpoint(),
            "https://auth.example.com/tenant/token"
        );
        d.metadata().unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 1, "cached");

        // Max age zero: every call re-reads.
        let d = d.max_age(Duration::ZERO, Duration::ZERO);
        d.metadata().unwrap();
        *f.token_endpoint.lock().unwrap() = "https://auth.example.com/tenant/token2";
        assert_eq!(
            d.metadata().unwrap().token_endpoint(),
            "https://auth.example.com/tenant/token2"
        );
        // Down (503, then a network error): the last good one is kept.
        for down in [Ok(503), Err(())] {
            *f.down.lock().unwrap() = Some(down);
            assert_eq!(
                d.metadata().unwrap().token_endpoint(),
                "https://auth.example.com/tenant/token2"
            );
        }
        // A fresh discovery with no good document: the typed error.
        let fresh = Discovery::with_transport(ISS, Shared(f.clone())).unwrap();
        assert!(matches!(
            fresh.metadata(),
            Err(DiscoveryError::Unreachable(_))
        ));
        *f.down.lock().unwrap() = Some(Ok(503));
        let e = fresh.metadata().unwrap_err();
        assert_eq!(
            e.fetch_error_kind(),
            freshtoken_core::FetchErrorKind::Transient
        );
        // An insecure endpoint is never used, and is not "last good".
        *f.down.lock().unwrap() = None;
        *f.token_endpoint.lock().unwrap() = "http://auth.example.com/token";
        assert!(matches!(
            fresh.metadata(),
            Err(DiscoveryError::Endpoint { .. })
        ));
    }

    /// The blocking fake as an async transport that yields once before
    /// answering, so concurrent readers overlap.
    struct Yielding(Arc<Fake>);
    impl crate::oauth2::AsyncHttpTransport for Yielding {
        async fn send(&self, r: &HttpRequest, max: usize) -> Result<HttpResponse, FetchError> {
            let mut yielded = false;
            std::future::poll_fn(|cx| {
                if std::mem::replace(&mut yielded, true) {
                    std::task::Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            })
            .await;
            self.0.send(r, max)
        }
    }

    #[test]
    fn concurrent_async_readers_share_one_read() {
        let (f, requests) =
            fake("https://auth.example.com/tenant/.well-known/openid-configuration");
        let d = Discovery::with_async_transport(ISS, Yielding(f)).unwrap();
        let reads = (0..8).map(|_| d.metadata());
        let all = futures::executor::block_on(futures::future::join_all(reads));
        assert!(all.iter().all(|m| m
            .as_ref()
            .is_ok_and(|m| m.token_endpoint() == "https://auth.example.com/tenant/token")));
        assert_eq!(requests.load(Ordering::SeqCst), 1, "one read for all");
        // A read dropped halfway lets the next reader read.
        let d = d.max_age(Duration::ZERO, Duration::ZERO);
        let mut first = Box::pin(d.metadata());
        let waker = std::task::Waker::noop();
        assert!(first
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_pending());
        drop(first);
        assert!(futures::executor::block_on(d.metadata()).is_ok());
    }

    #[test]
    fn the_rfc_8414_location_is_tried_after_a_404() {
        let (f, requests) =
            fake("https://auth.example.com/.well-known/oauth-authorization-server/tenant");
        let d = Discovery::with_transport(ISS, Shared(f)).unwrap();
        assert_eq!(d.metadata().unwrap().issuer(), ISS);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        let (f, _) = fake("https://nowhere.example/");
        let d = Discovery::with_transport(ISS, Shared(f)).unwrap();
        assert_eq!(
            d.metadata().unwrap_err(),
            DiscoveryError::Status { status: 404 }
        );
        assert!(matches!(
            Discovery::new("http://auth.example.com"),
            Err(DiscoveryError::InvalidIssuer(_))
        ));
    }
}
