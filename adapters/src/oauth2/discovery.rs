//! Reading an issuer's metadata (RFC 8414, OpenID Connect Discovery) over
//! HTTP, cached.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use freshtoken_core::oauth2::discovery::{
    check_issuer, parse_metadata_response, well_known_urls, AuthorityMetadata, DiscoveryError,
    DEFAULT_MAX_METADATA_BYTES,
};
use freshtoken_core::oauth2::HttpRequest;
use freshtoken_core::FetchError;

use super::transport::{HttpTransport, UreqTransport};

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

struct Inner {
    issuer: String,
    urls: [String; 2],
    transport: Arc<dyn HttpTransport>,
    max_age: Duration,
    retry: Duration,
    max_bytes: usize,
    state: Mutex<Option<Cached>>,
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
/// ```no_run
/// use freshtoken::oauth2::Discovery;
///
/// let discovery = Discovery::new("https://login.microsoftonline.com/my-tenant-id/v2.0")?;
/// let metadata = discovery.metadata()?;
/// println!("token endpoint: {}", metadata.token_endpoint());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("issuer", &self.inner.issuer)
            .field("max_age", &self.inner.max_age)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery for `issuer` (an https URL, or http to loopback, without
    /// query or fragment), with [`UreqTransport`]'s defaults.
    pub fn new(issuer: impl Into<String>) -> Result<Self, DiscoveryError> {
        Self::with_transport(issuer, UreqTransport::new())
    }

    /// Discovery over another transport.
    pub fn with_transport(
        issuer: impl Into<String>,
        transport: impl HttpTransport,
    ) -> Result<Self, DiscoveryError> {
        Self::build(
            issuer.into(),
            Arc::new(transport),
            DEFAULT_METADATA_MAX_AGE,
            DEFAULT_METADATA_RETRY,
        )
    }

    fn build(
        issuer: String,
        transport: Arc<dyn HttpTransport>,
        max_age: Duration,
        retry: Duration,
    ) -> Result<Self, DiscoveryError> {
        check_issuer(&issuer)?;
        let urls = well_known_urls(&issuer)?;
        Ok(Discovery {
            inner: Arc::new(Inner {
                issuer,
                urls,
                transport,
                max_age,
                retry,
                max_bytes: DEFAULT_MAX_METADATA_BYTES,
                state: Mutex::new(None),
            }),
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

    /// The metadata: cached, or read now (see the type's docs).
    pub fn metadata(&self) -> Result<Arc<AuthorityMetadata>, DiscoveryError> {
        let inner = &self.inner;
        // One reader at a time: sources share the lock only around a
        // request that happens once a day.
        let mut state = crate::sync::lock(&inner.state);
        if let Some(cached) = state.as_ref() {
            let wait = if cached.retry {
                inner.retry
            } else {
                inner.max_age
            };
            if cached.checked.elapsed() < wait {
                return Ok(cached.metadata.clone());
            }
        }
        match self.read() {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                tracing::debug!(
                    issuer = %inner.issuer,
                    token_endpoint = metadata.token_endpoint(),
                    "read the authority's metadata"
                );
                *state = Some(Cached {
                    metadata: metadata.clone(),
                    checked: Instant::now(),
                    retry: false,
                });
                Ok(metadata)
            }
            Err(e) => match state.as_mut() {
                Some(cached) => {
                    tracing::warn!(
                        issuer = %inner.issuer,
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

    /// Reads the document now, bypassing (and not touching) the cache.
    pub fn read(&self) -> Result<AuthorityMetadata, DiscoveryError> {
        let inner = &self.inner;
        let mut first_error = None;
        for url in &inner.urls {
            let answer = match inner
                .transport
                .send(&HttpRequest::get(url.clone()), inner.max_bytes)
            {
                Ok(answer) => answer,
                Err(e) => return Err(transport_error(e)),
            };
            match parse_metadata_response(&answer, &inner.issuer, inner.max_bytes) {
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

/// A network failure while reading the document (the transport's
/// messages hold no secrets).
fn transport_error(e: FetchError) -> DiscoveryError {
    DiscoveryError::Unreachable(e.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshtoken_core::oauth2::HttpResponse;
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
