//! The OAuth2 token sources: client credentials and refresh token.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::oauth2::{BodyFormat, ClientAuth, TokenRequest};
use freshtoken_core::{ClientSecret, Clock, FetchError, FetchRequest, TokenResponse};

use super::transport::{HttpTransport, UreqTransport};
use super::url::{check_token_url, UrlError};
use crate::clock::SystemClock;
use crate::source::TokenSource;

/// A token request and the transport that sends it.
#[derive(Clone)]
struct Endpoint {
    request: TokenRequest,
    transport: Arc<dyn HttpTransport>,
}

impl Endpoint {
    fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        let grant = self.request.grant();
        let http = self.request.build(fetch)?;
        tracing::debug!(
            grant = grant.as_str(),
            client_id = self.request.client_id(),
            attempt = fetch.attempt,
            "requesting a token"
        );
        let result = self
            .transport
            .send(&http, self.request.response_size_cap())
            .and_then(|response| self.request.parse(&response, SystemClock.now()));
        match &result {
            Ok(answer) => tracing::debug!(
                grant = grant.as_str(),
                expires_in = answer.expires_in,
                rotated = answer.refresh_token.is_some(),
                "token received"
            ),
            Err(e) => tracing::debug!(
                grant = grant.as_str(),
                kind = %e.kind(),
                status = e.status(),
                error = %e,
                "token request failed"
            ),
        }
        result
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // TokenRequest's Debug already hides the secret and extra values.
        f.debug_struct("Endpoint")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// The OAuth2 client credentials grant (RFC 6749 4.4): a service gets
/// tokens for itself with its client id and secret.
///
/// ```no_run
/// use freshtoken::oauth2::ClientCredentials;
/// use freshtoken::source::TokenSource;
/// use freshtoken::FetchRequest;
///
/// let source = ClientCredentials::builder(
///     "https://auth.example.com/oauth2/token",
///     "my-service",
///     std::env::var("CLIENT_SECRET").unwrap(),
/// )
/// .scope("orders:read")
/// .resource("https://orders.example.com/")
/// .build()?;
///
/// // A driver calls this; shown here by hand.
/// let answer = source.fetch(&FetchRequest::first())?;
/// println!("token for {:?} s", answer.expires_in);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// `Debug` never shows the secret:
///
/// ```
/// use freshtoken::oauth2::ClientCredentials;
///
/// let source = ClientCredentials::builder("https://auth.example.com/token", "id", "hunter2").build()?;
/// assert!(!format!("{source:?}").contains("hunter2"));
/// # Ok::<_, freshtoken::oauth2::UrlError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    endpoint: Endpoint,
}

impl ClientCredentials {
    /// Starts a builder for the token endpoint `url` and a confidential
    /// client. Defaults: `client_secret_basic`, form body, no scope, 64 KiB
    /// answer cap, [`UreqTransport`] with its default timeouts.
    pub fn builder(
        url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<ClientSecret>,
    ) -> SourceBuilder<ClientCredentials> {
        SourceBuilder::new(TokenRequest::client_credentials(
            url,
            client_id,
            client_secret.into(),
        ))
    }

    /// The request template this source sends.
    pub fn request(&self) -> &TokenRequest {
        &self.endpoint.request
    }
}

impl TokenSource for ClientCredentials {
    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.endpoint.fetch(request)
    }
}

/// The OAuth2 refresh-token grant (RFC 6749 6): keeps a user's grant alive
/// by trading the refresh token for new tokens.
///
/// The source holds no refresh token: the machine hands the newest one to
/// every fetch (from the last answer, the shared cache, or the initial one
/// given in `MachineConfig::refresh_token`), and stores a rotated one before
/// it publishes the new access token. A refresh token the authority no
/// longer accepts (`invalid_grant`) ends refreshing with
/// [`FetchErrorKind::GrantRevoked`](freshtoken_core::FetchErrorKind::GrantRevoked).
///
/// ```no_run
/// use freshtoken::oauth2::RefreshTokenSource;
/// use freshtoken::source::TokenSource;
/// use freshtoken::{FetchRequest, RefreshToken};
///
/// let source = RefreshTokenSource::builder("https://auth.example.com/oauth2/token", "desktop-app")
///     .client_secret("s3cret") // omit for a public client
///     .build()?;
///
/// let request = FetchRequest::new(1, Some(RefreshToken::new("the-refresh-token")));
/// let answer = source.fetch(&request)?;
/// let rotated = answer.refresh_token.is_some();
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RefreshTokenSource {
    endpoint: Endpoint,
}

impl RefreshTokenSource {
    /// Starts a builder for the token endpoint `url` and a public client
    /// (add a secret with [`SourceBuilder::client_secret`]).
    pub fn builder(
        url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> SourceBuilder<RefreshTokenSource> {
        SourceBuilder::new(TokenRequest::refresh_token(url, client_id, None))
    }

    /// The request template this source sends.
    pub fn request(&self) -> &TokenRequest {
        &self.endpoint.request
    }
}

impl TokenSource for RefreshTokenSource {
    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.endpoint.fetch(request)
    }
}

/// Builds a [`ClientCredentials`] or a [`RefreshTokenSource`].
///
/// ```
/// use freshtoken::oauth2::{BodyFormat, ClientAuth, ClientCredentials};
/// use std::time::Duration;
///
/// let source = ClientCredentials::builder("http://127.0.0.1:8080/token", "id", "secret")
///     .client_auth(ClientAuth::Post)
///     .audience("https://api.example.com")
///     .param("tenant", "acme")
///     .body_format(BodyFormat::Json)
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// # Ok::<_, freshtoken::oauth2::UrlError>(())
/// ```
#[must_use]
pub struct SourceBuilder<S> {
    request: TokenRequest,
    transport: Option<Arc<dyn HttpTransport>>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    source: PhantomData<fn() -> S>,
}

impl<S> fmt::Debug for SourceBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceBuilder")
            .field("request", &self.request)
            .field("custom_transport", &self.transport.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S> SourceBuilder<S> {
    fn new(request: TokenRequest) -> Self {
        SourceBuilder {
            request,
            transport: None,
            connect_timeout: None,
            timeout: None,
            source: PhantomData,
        }
    }

    fn map(mut self, f: impl FnOnce(TokenRequest) -> TokenRequest) -> Self {
        self.request = f(self.request);
        self
    }

    /// Sets (or replaces) the client secret.
    pub fn client_secret(self, secret: impl Into<ClientSecret>) -> Self {
        self.map(|r| r.client_secret(Some(secret.into())))
    }

    /// Sets the client authentication method (default `client_secret_basic`
    /// when there is a secret).
    pub fn client_auth(self, auth: ClientAuth) -> Self {
        self.map(|r| r.client_auth(auth))
    }

    /// Sets the `scope` (space-separated).
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.map(|r| r.scope(scope))
    }

    /// Sets the `audience`.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.map(|r| r.audience(audience))
    }

    /// Adds an RFC 8707 `resource` indicator (repeatable).
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.map(|r| r.resource(resource))
    }

    /// Adds another body parameter (its value is hidden in `Debug`).
    pub fn param(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.map(|r| r.param(name, value))
    }

    /// Sets the body encoding (default: form, as RFC 6749 requires).
    pub fn body_format(self, format: BodyFormat) -> Self {
        self.map(|r| r.body_format(format))
    }

    /// Sets the cap on the answer's size (default 64 KiB).
    pub fn max_response_bytes(self, max: usize) -> Self {
        self.map(|r| r.max_response_bytes(max))
    }

    /// Sets the connect timeout of the built-in transport (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sets the overall timeout of the built-in transport (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Uses another HTTP client. The timeouts set on this builder then do
    /// not apply: the transport has its own.
    pub fn transport(mut self, transport: impl HttpTransport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    fn endpoint(self) -> Result<Endpoint, UrlError> {
        check_token_url(self.request.url())?;
        let transport = match self.transport {
            Some(t) => t,
            None => {
                let mut t = UreqTransport::new();
                if let Some(d) = self.connect_timeout {
                    t = t.connect_timeout(d);
                }
                if let Some(d) = self.timeout {
                    t = t.timeout(d);
                }
                Arc::new(t)
            }
        };
        Ok(Endpoint {
            request: self.request,
            transport,
        })
    }
}

impl SourceBuilder<ClientCredentials> {
    /// Checks the URL (https, or http to a loopback address) and builds the
    /// source.
    pub fn build(self) -> Result<ClientCredentials, UrlError> {
        Ok(ClientCredentials {
            endpoint: self.endpoint()?,
        })
    }
}

impl SourceBuilder<RefreshTokenSource> {
    /// Checks the URL (https, or http to a loopback address) and builds the
    /// source.
    pub fn build(self) -> Result<RefreshTokenSource, UrlError> {
        Ok(RefreshTokenSource {
            endpoint: self.endpoint()?,
        })
    }
}
