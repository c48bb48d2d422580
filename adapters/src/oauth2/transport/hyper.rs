//! [`HyperTransport`]: the async transport over the application's
//! hyper-util legacy client (feature `hyper-transport`).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use freshtoken_core::oauth2::{HttpRequest, HttpResponse};
use freshtoken_core::FetchError;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;

use super::{
    append_capped, checked_uri, header_pairs, request_timeout, root_cause, AsyncHttpTransport,
};

/// An [`AsyncHttpTransport`] over hyper-util's legacy [`Client`], with the
/// application's connector (`hyper-rustls`' or `hyper-tls`' HTTPS
/// connector, with its TLS configuration and provider, or a plain
/// `HttpConnector` for loopback authorities), so the service keeps one
/// HTTP stack and one TLS library. The body type `B` is any that a
/// [`Bytes`] converts into (`http_body_util::Full<Bytes>` by default).
///
/// The transport:
///
/// * follows no redirect (hyper's client never does; the parser reports
///   one);
/// * reads at most the cap plus one byte of an answer;
/// * bounds each request by its overall timeout (default 30 s, and below
///   the refresh machine's deadline), connection included, with tokio's
///   timer: it runs inside a tokio runtime with its time driver (as the
///   tokio driver's is); outside a runtime a request is a permanent error;
/// * refuses, whoever built the request, a URL that
///   [`check_token_url`](crate::oauth2::check_token_url) rejects (plain
///   http beyond loopback): the URI checked is the URI sent.
///
/// Connect timeouts and pooling are the connector's and the client's
/// settings (`HttpConnector::set_connect_timeout`,
/// `Builder::pool_max_idle_per_host(0)` for a client that only fetches
/// tokens).
///
/// ```no_run
/// use bytes::Bytes;
/// use freshtoken::oauth2::{ClientCredentials, HyperTransport};
/// use http_body_util::Full;
/// use hyper_util::client::legacy::{connect::HttpConnector, Client};
/// use hyper_util::rt::TokioExecutor;
///
/// // An https connector (hyper-rustls, hyper-tls) in a real service.
/// let client: Client<HttpConnector, Full<Bytes>> =
///     Client::builder(TokioExecutor::new()).build(HttpConnector::new());
/// let source = ClientCredentials::builder("http://127.0.0.1:8080/token", "my-app", "secret")
///     .async_transport(HyperTransport::new(client))
///     .build()?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct HyperTransport<C, B = http_body_util::Full<Bytes>> {
    client: Client<C, B>,
    timeout: Duration,
}

impl<C: Clone, B> Clone for HyperTransport<C, B> {
    fn clone(&self) -> Self {
        HyperTransport {
            client: self.client.clone(),
            timeout: self.timeout,
        }
    }
}

impl<C, B> fmt::Debug for HyperTransport<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperTransport")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C, B> HyperTransport<C, B> {
    /// Sends over `client`, with a 30 s overall timeout per request.
    pub fn new(client: Client<C, B>) -> Self {
        HyperTransport {
            client,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the overall timeout of each request, from connecting to the
    /// last byte of the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl<C, B> AsyncHttpTransport for HyperTransport<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: http_body::Body + From<Bytes> + Send + Sync + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn send(
        &self,
        request: &HttpRequest,
        max_body: usize,
    ) -> Result<HttpResponse, FetchError> {
        // The URI checked is the URI sent.
        let uri = checked_uri(request)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(FetchError::permanent(
                "the hyper transport runs only inside a tokio runtime (its timer is tokio's)",
            ));
        }
        let mut builder = http::Request::builder()
            .method(request.method())
            .uri(uri)
            .header(
                http::header::USER_AGENT,
                concat!("freshtoken/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        let body = B::from(Bytes::copy_from_slice(request.body()));
        let http_request = builder.body(body).map_err(|_| {
            FetchError::permanent("the token request could not be built (invalid header)")
        })?;
        let timeout = request_timeout(request, self.timeout).unwrap_or(self.timeout);
        match tokio::time::timeout(timeout, self.exchange(http_request, max_body)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::transient(format!(
                "the token request timed out (after {timeout:?})"
            ))),
        }
    }
}

impl<C, B> HyperTransport<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends the request and reads the answer up to the cap.
    async fn exchange(
        &self,
        request: http::Request<B>,
        max_body: usize,
    ) -> Result<HttpResponse, FetchError> {
        let response = self.client.request(request).await.map_err(|e| {
            let cause = root_cause(&e);
            let error = if e.is_connect() {
                FetchError::transient(format!("could not connect to the token endpoint: {cause}"))
            } else {
                FetchError::transient(format!(
                    "network error talking to the token endpoint: {cause}"
                ))
            };
            error.with_source(e)
        })?;
        let (parts, mut body) = response.into_parts();
        let status = parts.status.as_u16();
        let headers = header_pairs(&parts.headers);
        let limit = max_body.saturating_add(1);
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                FetchError::transient(format!(
                    "reading the token endpoint's answer failed: {}",
                    root_cause(&e)
                ))
                .with_status(status)
                .with_source(e)
            })?;
            if let Some(data) = frame.data_ref() {
                if append_capped(&mut bytes, data, limit) {
                    break;
                }
            }
        }
        Ok(HttpResponse::new(status, headers, bytes))
    }
}
