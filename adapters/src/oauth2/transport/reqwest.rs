//! [`ReqwestTransport`]: the async transport over the application's reqwest
//! (feature `reqwest-transport`).

use std::fmt;
use std::time::Duration;

use freshtoken_core::oauth2::{HttpRequest, HttpResponse};
use freshtoken_core::FetchError;

use super::{
    append_capped, checked_uri, header_pairs, request_timeout, root_cause, AsyncHttpTransport,
};

/// An [`AsyncHttpTransport`] over [reqwest] 0.13: the HTTP stack, TLS
/// backend and crypto provider are the ones the application's reqwest is
/// built with (freshtoken turns on none of reqwest's features), so a
/// service that already has reqwest adds no second HTTP client and no
/// second TLS library. It needs a tokio runtime (reqwest's); outside one a
/// request is a permanent error, never a panic.
///
/// Whatever the client builder says, the transport:
///
/// * follows no redirect (`redirect::Policy::none()`: a `307` would resend
///   the client secret to another URL; the parser reports the redirect);
/// * reads at most the cap plus one byte of an answer;
/// * bounds each request by its overall timeout (default 30 s, and below
///   the refresh machine's deadline), connection included;
/// * keeps no idle connection (token requests are minutes apart);
/// * refuses, whoever built the request, a URL that
///   [`check_token_url`](crate::oauth2::check_token_url) rejects (plain
///   http beyond loopback), checked on the URL reqwest connects to.
///
/// [`new`](Self::new) builds a client with reqwest's defaults (and a 10 s
/// connect timeout); [`from_builder`](Self::from_builder) builds one from
/// the application's own `ClientBuilder` (its proxies, root certificates,
/// client certificate, TLS backend). A built `reqwest::Client` is not
/// accepted: its redirect policy cannot be checked.
///
/// Proxies are reqwest's: the `HTTPS_PROXY` family and `NO_PROXY` from
/// the environment unless the builder says otherwise. Unlike
/// `UreqTransport`, it does not exempt
/// loopback authorities by itself: list them in `NO_PROXY`, or pass a
/// builder with `.no_proxy()`.
///
/// ```no_run
/// use freshtoken::oauth2::{ClientCredentials, ReqwestTransport};
/// use std::time::Duration;
///
/// let transport = ReqwestTransport::from_builder(
///     reqwest::Client::builder().connect_timeout(Duration::from_secs(3)),
/// )?
/// .timeout(Duration::from_secs(10));
/// let source = ClientCredentials::builder("https://login.example.com/oauth2/token", "my-app", "secret")
///     .async_transport(transport)
///     .build()?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// [reqwest]: https://docs.rs/reqwest
#[derive(Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
    timeout: Duration,
}

impl fmt::Debug for ReqwestTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestTransport")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ReqwestTransport {
    /// A client with reqwest's defaults, a 10 s connect timeout and a 30 s
    /// overall timeout. Fails only if reqwest cannot build a client (its
    /// TLS backend failed to start).
    pub fn new() -> Result<Self, reqwest::Error> {
        Self::from_builder(reqwest::Client::builder().connect_timeout(Duration::from_secs(10)))
    }

    /// A client from the application's own builder, with no redirects and
    /// no idle connections (set here, over the builder's own choice), and
    /// a 30 s overall timeout per request (see [`timeout`](Self::timeout)).
    pub fn from_builder(builder: reqwest::ClientBuilder) -> Result<Self, reqwest::Error> {
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .user_agent(concat!("freshtoken/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ReqwestTransport {
            client,
            timeout: Duration::from_secs(30),
        })
    }

    /// Sets the overall timeout of each request, from connecting to the
    /// last byte of the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl AsyncHttpTransport for ReqwestTransport {
    async fn send(
        &self,
        request: &HttpRequest,
        max_body: usize,
    ) -> Result<HttpResponse, FetchError> {
        let uri = checked_uri(request)?;
        // reqwest parses URLs its own way (WHATWG): the URL it connects to
        // is checked too.
        let url = reqwest::Url::parse(&uri.to_string())
            .map_err(|_| FetchError::permanent("the token endpoint URL is not a valid URL"))?;
        freshtoken_core::oauth2::check_token_url(url.as_str())
            .map_err(|e| FetchError::permanent(e.to_string()))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(FetchError::permanent(
                "the reqwest transport runs only inside a tokio runtime",
            ));
        }
        let method = if request.method() == "GET" {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let mut builder = self
            .client
            .request(method, url)
            .timeout(request_timeout(request, self.timeout).unwrap_or(self.timeout));
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        if request.method() != "GET" {
            builder = builder.body(request.body().to_vec());
        }
        let mut response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = header_pairs(response.headers());
        let limit = max_body.saturating_add(1);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(e).with_status(status))?
        {
            if append_capped(&mut body, &chunk, limit) {
                break;
            }
        }
        Ok(HttpResponse::new(status, headers, body))
    }
}

/// A reqwest failure as a fetch error. reqwest's own message names the URL
/// (which may hold a query): the message here names the kind of failure
/// and the innermost cause (an I/O or TLS error), and the source is the
/// error without its URL.
fn transport_error(e: reqwest::Error) -> FetchError {
    let e = e.without_url();
    let cause = root_cause(&e);
    let error = if e.is_timeout() {
        FetchError::transient(format!("the token request timed out ({cause})"))
    } else if e.is_builder() {
        FetchError::permanent("the token request could not be built (invalid header)")
    } else if e.is_connect() {
        FetchError::transient(format!("could not connect to the token endpoint: {cause}"))
    } else if e.is_body() || e.is_decode() {
        FetchError::transient(format!(
            "reading the token endpoint's answer failed: {cause}"
        ))
    } else {
        FetchError::transient(format!(
            "network error talking to the token endpoint: {cause}"
        ))
    };
    error.with_source(e)
}
