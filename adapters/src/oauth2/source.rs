//! The OAuth2 token sources: client credentials and refresh token, with
//! every client authentication method, optionally from discovery.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;
use std::path::PathBuf;

use freshtoken_core::oauth2::assertion::{expiry, reclassify_supplied_assertion_error};
use freshtoken_core::oauth2::{BodyFormat, ClientAuth, FetchCredentials, TokenRequest};
use freshtoken_core::{
    ClientSecret, Clock, FetchError, FetchRequest, RefreshToken, Timestamp, TokenResponse,
};

use super::assertion::{
    AssertionContext, AssertionFile, AssertionProvider, AssertionSigner, Audience, JtiGenerator,
};
use super::discovery::{self, Discovery};
use super::grants::GrantSetup;
use super::signing::SigningKey;
#[cfg(all(doc, feature = "ureq-transport"))]
use super::transport::UreqTransport;
use super::transport::{
    run_blocking, AsyncHttp, AsyncHttpTransport, HttpTransport, SyncHttp, Transport, TransportKind,
};
use super::url::{check_token_url, UrlError};
use crate::clock::SystemClock;
use crate::source::{AsyncTokenSource, TokenSource};

/// A grant credential made by someone else (a supplied JWT-bearer
/// assertion, a subject token): its `exp`, and whether it has been renewed
/// since it was sent.
#[derive(Clone, Copy)]
pub(crate) struct SuppliedGrant<'a> {
    pub(crate) sent_exp: Option<Timestamp>,
    pub(crate) renewed: &'a (dyn Fn(Timestamp) -> bool + Sync),
}

/// A token request, the transport that sends it, and what makes the
/// per-request credentials.
#[derive(Clone)]
pub(crate) struct Endpoint {
    request: TokenRequest,
    transport: Transport,
    discovery: Option<Arc<discovery::Inner>>,
    issuer: Option<String>,
    assertion: Option<AssertionProvider>,
    auth_explicit: bool,
    signer: SignerSettings,
    /// Whether the unlisted-method warning was given (once per source).
    warned: Arc<std::sync::atomic::AtomicBool>,
    /// The DPoP key and the latest nonce, when requests carry proofs.
    #[cfg(feature = "dpop")]
    dpop: Option<super::dpop::DpopState>,
}

/// The builder's settings for assertions signed here.
#[derive(Clone)]
struct SignerSettings {
    audience: Audience,
    lifetime: Option<Duration>,
    jti: Option<JtiGenerator>,
}

impl Endpoint {
    /// What this endpoint's tokens are for: its token URL (the issuer's,
    /// until discovery finds the endpoint), client id, scope, audience and
    /// resources.
    pub(crate) fn token_key(&self) -> crate::TokenKey {
        let r = &self.request;
        let mut key = crate::TokenKey::new(r.client_id()).with_token_url(r.url());
        if let Some(scope) = r.requested_scope() {
            key = key.with_scope(scope);
        }
        if let Some(audience) = r.requested_audience() {
            key = key.with_audience(audience);
        }
        for resource in r.requested_resources() {
            key = key.with_resource(resource.as_str());
        }
        // A DPoP-bound token serves only the holder of its key.
        #[cfg(feature = "dpop")]
        if let Some(dpop) = &self.dpop {
            key = key.with_dpop_jkt(dpop.key().thumbprint());
            if dpop.key().is_generated() {
                key = key.instance_only();
            }
        }
        key
    }

    /// Applies the builder's assertion settings to a signer.
    pub(crate) fn apply_signer_settings(&self, signer: &mut AssertionSigner) {
        signer.audience = self.signer.audience.clone();
        if let Some(lifetime) = self.signer.lifetime {
            signer.lifetime = lifetime;
        }
        signer.jti = self.signer.jti.clone();
    }

    /// The request for this fetch (see `current_request`), owned.
    pub(crate) async fn request_for_fetch(&self) -> Result<TokenRequest, FetchError> {
        Ok(self.current_request().await?.into_owned())
    }

    async fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.fetch_with(fetch, FetchCredentials::new(), None).await
    }

    /// The request for this fetch: the template, or, with discovery, the
    /// template sent to the discovered token endpoint (and, when no method
    /// was chosen, with the secret method the authority supports).
    async fn current_request(&self) -> Result<Cow<'_, TokenRequest>, FetchError> {
        let Some(discovery) = &self.discovery else {
            return Ok(Cow::Borrowed(&self.request));
        };
        let metadata = discovery.metadata().await?;
        let mut auth = self.request.auth_method();
        if !self.auth_explicit
            && auth == ClientAuth::Basic
            && !metadata.supports_auth_method(ClientAuth::Basic)
            && metadata.supports_auth_method(ClientAuth::Post)
        {
            auth = ClientAuth::Post;
        }
        if !metadata.supports_auth_method(auth)
            && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                issuer = discovery.issuer(),
                client_auth = auth.as_str(),
                "the authority's metadata does not list this client authentication method; \
                 trying it anyway"
            );
        }
        let url = metadata.token_endpoint_for(auth).to_owned();
        Ok(Cow::Owned(
            self.request.clone().with_url(url).client_auth(auth),
        ))
    }

    pub(crate) fn issuer(&self) -> Option<&str> {
        self.issuer
            .as_deref()
            .or(self.discovery.as_deref().map(discovery::Inner::issuer))
    }

    /// Sends one request. `grant` holds the grant's own credentials, and
    /// `supplied` the expiry of a grant assertion made by someone else
    /// (whose refusal may mean it went stale).
    ///
    /// With DPoP, an authority's `use_dpop_nonce` with a nonce is answered
    /// at once by one more request with it (a fresh proof and client
    /// assertion); that second answer is the fetch's.
    pub(crate) async fn fetch_with(
        &self,
        fetch: &FetchRequest,
        grant: FetchCredentials<'_>,
        supplied: Option<SuppliedGrant<'_>>,
    ) -> Result<TokenResponse, FetchError> {
        let mut nonce_given = false;
        let result = self
            .fetch_once(fetch, grant, supplied, &mut nonce_given)
            .await;
        #[cfg(feature = "dpop")]
        if self.dpop.is_some() {
            if let Err(e) = &result {
                if e.error_code() == Some(super::dpop::USE_DPOP_NONCE) {
                    if !nonce_given {
                        return Err(super::dpop::nonce_refusal(
                            e,
                            "the authority asked for a DPoP nonce (use_dpop_nonce) without \
                             giving one in a DPoP-Nonce header",
                        ));
                    }
                    tracing::debug!("the authority asked for a DPoP nonce; sending again with it");
                    crate::metrics::dpop_nonce_retry(crate::metrics::DpopServer::Authority);
                    let again = self.fetch_once(fetch, grant, supplied, &mut false).await;
                    // A nonce this answer gives is kept for the next fetch:
                    // a refusal now is the nonce's, not the grant's.
                    return again.map_err(|e| {
                        if e.error_code() == Some(super::dpop::USE_DPOP_NONCE) {
                            super::dpop::nonce_refusal(
                                &e,
                                "the authority refused the DPoP nonce it had just given \
                                 (use_dpop_nonce twice)",
                            )
                        } else {
                            e
                        }
                    });
                }
            }
        }
        result
    }

    /// One request and its answer; `nonce_given` is set when the answer
    /// gave a DPoP nonce.
    async fn fetch_once(
        &self,
        fetch: &FetchRequest,
        grant: FetchCredentials<'_>,
        supplied: Option<SuppliedGrant<'_>>,
        nonce_given: &mut bool,
    ) -> Result<TokenResponse, FetchError> {
        #[cfg(not(feature = "dpop"))]
        let _ = nonce_given;
        let request = self.current_request().await?;
        let auth = request.auth_method();
        let now = SystemClock.now();
        let client_assertion = if auth.uses_client_assertion() {
            let ctx = AssertionContext {
                client_id: request.client_id(),
                token_endpoint: request.url(),
                issuer: self.issuer(),
                now,
            };
            Some(match &self.assertion {
                Some(provider) => provider.assertion(&ctx, request.secret())?,
                None => {
                    return Err(FetchError::permanent(format!(
                        "{} needs a signing key or an assertion file",
                        auth.as_str()
                    )))
                }
            })
        } else {
            None
        };
        let mut credentials = grant;
        if let Some(a) = &client_assertion {
            credentials = credentials.client_assertion(a);
        }
        let grant_kind = request.grant();
        let http = request.build_with(fetch, &credentials)?;
        #[cfg(feature = "dpop")]
        let http = match &self.dpop {
            Some(dpop) => {
                let proof = dpop.proof(http.method(), http.url())?;
                http.with_header("DPoP", proof.expose_secret())
            }
            None => http,
        };
        tracing::debug!(
            grant = grant_kind.as_str(),
            client_id = request.client_id(),
            client_auth = auth.as_str(),
            attempt = fetch.attempt,
            "requesting a token"
        );
        let result = self
            .transport
            .send(&http, request.response_size_cap())
            .await
            .and_then(|response| {
                #[cfg(feature = "dpop")]
                if let Some(dpop) = &self.dpop {
                    *nonce_given = dpop.take_nonce(&response);
                }
                request.parse(&response, SystemClock.now())
            });
        drop(http);
        let result = result.map_err(|e| {
            let now = SystemClock.now();
            match (&self.assertion, &client_assertion) {
                (Some(provider), Some(sent)) if provider.is_supplied() => {
                    let renewed = provider.renewed_since(sent, now);
                    reclassify_supplied_assertion_error(e, expiry(sent), now, renewed)
                }
                // The grant's own assertion, made by someone else: stale
                // if it expired or was renewed since.
                _ => match supplied {
                    Some(grant) => {
                        let renewed = (grant.renewed)(now);
                        reclassify_supplied_assertion_error(e, grant.sent_exp, now, renewed)
                    }
                    None => e,
                },
            }
        });
        match &result {
            Ok(answer) => tracing::debug!(
                grant = grant_kind.as_str(),
                expires_in = answer.expires_in,
                rotated = answer.refresh_token.is_some(),
                "token received"
            ),
            Err(e) => tracing::debug!(
                grant = grant_kind.as_str(),
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
        // TokenRequest's Debug already hides the secret and extra values;
        // the assertion provider shows the key's algorithm and id only.
        f.debug_struct("Endpoint")
            .field("request", &self.request)
            .field("discovery", &self.discovery)
            .field("issuer", &self.issuer)
            .field("assertion", &self.assertion)
            .field("dpop", &self.dpop_debug())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    #[cfg(feature = "dpop")]
    fn dpop_debug(&self) -> &dyn fmt::Debug {
        &self.dpop
    }

    #[cfg(not(feature = "dpop"))]
    fn dpop_debug(&self) -> &dyn fmt::Debug {
        &None::<()>
    }
}

/// The OAuth2 client credentials grant (RFC 6749 4.4): a service gets
/// tokens for itself with its client id and secret.
///
/// ```no_run
/// use freshtoken::oauth2::ClientCredentials;
/// use freshtoken::source::TokenSource;
/// use freshtoken::source::FetchRequest;
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
///
/// `M` is the transport kind: [`SyncHttp`] (the default; a
/// [`TokenSource`]) or, after
/// [`SourceBuilder::async_transport`], [`AsyncHttp`] (an
/// [`AsyncTokenSource`]).
#[derive(Clone, Debug)]
pub struct ClientCredentials<M = SyncHttp> {
    endpoint: Endpoint,
    mode: PhantomData<fn() -> M>,
}

impl ClientCredentials<SyncHttp> {
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

    /// Starts a builder for a client that does not authenticate with a
    /// secret: add a method with [`SourceBuilder::private_key_jwt`],
    /// [`SourceBuilder::client_assertion_file`] or an mTLS transport and
    /// [`ClientAuth::TlsClientAuth`].
    ///
    /// ```
    /// use freshtoken::oauth2::{ClientCredentials, SigningKey};
    ///
    /// let key = SigningKey::hs256(&[7; 32])?; // in real use: SigningKey::from_pem_file(..)
    /// let source = ClientCredentials::builder_without_secret("https://auth.example.com/token", "svc")
    ///     .private_key_jwt(key)
    ///     .build()?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder_without_secret(
        url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> SourceBuilder<ClientCredentials> {
        SourceBuilder::new(
            TokenRequest::client_credentials(url, client_id, ClientSecret::new(""))
                .client_secret(None),
        )
    }

    /// Starts a builder whose token endpoint comes from the issuer's
    /// metadata (RFC 8414 / OpenID Connect Discovery), read at the first
    /// fetch and then about daily. Add the client's credentials (a secret,
    /// a key, an assertion file) to the builder. With a secret and no
    /// method set, `client_secret_basic` is used unless the metadata lists
    /// only `client_secret_post`.
    ///
    /// ```
    /// use freshtoken::oauth2::{ClientCredentials, Discovery};
    ///
    /// let discovery = Discovery::new("https://login.example.com/tenant-1")?;
    /// let source = ClientCredentials::from_issuer(discovery, "svc")
    ///     .client_secret("s3cret")
    ///     .scope("api://orders/.default")
    ///     .build()?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// With a [`Discovery`] over an async transport, the source is async
    /// too, and sends its token requests over the discovery's transport.
    pub fn from_issuer<M>(
        discovery: Discovery<M>,
        client_id: impl Into<String>,
    ) -> SourceBuilder<ClientCredentials<M>> {
        SourceBuilder::new(
            TokenRequest::client_credentials(
                discovery.issuer().to_owned(),
                client_id,
                ClientSecret::new(""),
            )
            .client_secret(None),
        )
        .with_discovery(&discovery)
    }
}

impl<M> ClientCredentials<M> {
    /// The request template this source sends.
    pub fn request(&self) -> &TokenRequest {
        &self.endpoint.request
    }
}

impl TokenSource for ClientCredentials<SyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        run_blocking(self.endpoint.fetch(request))
    }
}

impl AsyncTokenSource for ClientCredentials<AsyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    async fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.endpoint.fetch(request).await
    }
}

/// The OAuth2 refresh-token grant (RFC 6749 6): keeps a user's grant alive
/// by trading the refresh token for new tokens.
///
/// The refresh token to start from is given to the builder
/// ([`SourceBuilder::refresh_token`]); after that the machine hands the
/// newest one to every fetch (from the last answer or the shared cache,
/// whichever is newer), and stores a rotated one before it publishes the
/// new access token. A refresh token the authority no
/// longer accepts (`invalid_grant`) ends refreshing with
/// [`FetchErrorKind::GrantRevoked`](freshtoken_core::FetchErrorKind::GrantRevoked).
///
/// ```no_run
/// use freshtoken::oauth2::RefreshTokenSource;
/// use freshtoken::source::TokenSource;
/// use freshtoken::RefreshToken;
/// use freshtoken::source::FetchRequest;
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
pub struct RefreshTokenSource<M = SyncHttp> {
    endpoint: Endpoint,
    initial: Option<RefreshToken>,
    mode: PhantomData<fn() -> M>,
}

impl RefreshTokenSource<SyncHttp> {
    /// Starts a builder for the token endpoint `url` and a public client
    /// (add a secret with [`SourceBuilder::client_secret`]).
    pub fn builder(
        url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> SourceBuilder<RefreshTokenSource> {
        SourceBuilder::new(TokenRequest::refresh_token(url, client_id, None))
    }

    /// Starts a builder whose token endpoint comes from the issuer's
    /// metadata (see [`ClientCredentials::from_issuer`]).
    pub fn from_issuer<M>(
        discovery: Discovery<M>,
        client_id: impl Into<String>,
    ) -> SourceBuilder<RefreshTokenSource<M>> {
        SourceBuilder::new(TokenRequest::refresh_token(
            discovery.issuer().to_owned(),
            client_id,
            None,
        ))
        .with_discovery(&discovery)
    }
}

impl<M> RefreshTokenSource<M> {
    /// The request template this source sends.
    pub fn request(&self) -> &TokenRequest {
        &self.endpoint.request
    }
}

impl TokenSource for RefreshTokenSource<SyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        run_blocking(self.endpoint.fetch(request))
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.initial.clone()
    }
}

impl AsyncTokenSource for RefreshTokenSource<AsyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    async fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.endpoint.fetch(request).await
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.initial.clone()
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
    transport: Option<Transport>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    discovery: Option<Arc<discovery::Inner>>,
    issuer: Option<String>,
    assertion: Option<AssertionProvider>,
    audience: Audience,
    assertion_lifetime: Option<Duration>,
    jti: Option<JtiGenerator>,
    auth_explicit: bool,
    grant: Option<GrantSetup>,
    initial_refresh_token: Option<RefreshToken>,
    #[cfg(feature = "dpop")]
    dpop: Option<super::dpop::DpopKey>,
    source: PhantomData<fn() -> S>,
}

impl<S> fmt::Debug for SourceBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceBuilder")
            .field("request", &self.request)
            .field("custom_transport", &self.transport.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("discovery", &self.discovery)
            .field("issuer", &self.issuer)
            .field("assertion", &self.assertion)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl<S> SourceBuilder<S> {
    fn new(request: TokenRequest) -> Self {
        SourceBuilder {
            request,
            transport: None,
            connect_timeout: None,
            timeout: None,
            discovery: None,
            issuer: None,
            assertion: None,
            audience: Audience::TokenEndpoint,
            assertion_lifetime: None,
            jti: None,
            auth_explicit: false,
            grant: None,
            initial_refresh_token: None,
            #[cfg(feature = "dpop")]
            dpop: None,
            source: PhantomData,
        }
    }

    /// The same settings for another source type.
    fn retyped<T>(self) -> SourceBuilder<T> {
        SourceBuilder {
            request: self.request,
            transport: self.transport,
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            discovery: self.discovery,
            issuer: self.issuer,
            assertion: self.assertion,
            audience: self.audience,
            assertion_lifetime: self.assertion_lifetime,
            jti: self.jti,
            auth_explicit: self.auth_explicit,
            grant: self.grant,
            initial_refresh_token: self.initial_refresh_token,
            #[cfg(feature = "dpop")]
            dpop: self.dpop,
            source: PhantomData,
        }
    }

    /// Takes the token endpoint from `discovery` (of the builder's kind).
    fn with_discovery<M>(mut self, discovery: &Discovery<M>) -> Self {
        self.discovery = Some(discovery.shared());
        self
    }

    /// Sends over `transport`. A blocking discovery set before reads its
    /// document over it too when it is async: the builder becomes async,
    /// and nothing of an async source blocks.
    fn set_transport(mut self, transport: Transport) -> Self {
        if let Some(d) = &self.discovery {
            if d.transport_is_blocking() && !transport.is_blocking() {
                // The issuer and ages were checked when it was built.
                if let Ok(inner) = d.with_transport(transport.clone()) {
                    self.discovery = Some(Arc::new(inner));
                }
            }
        }
        self.transport = Some(transport);
        self
    }

    pub(crate) fn with_grant(request: TokenRequest, grant: GrantSetup) -> Self {
        let mut b = Self::new(request);
        b.grant = Some(grant);
        b
    }

    pub(crate) fn map_grant(mut self, f: impl FnOnce(&mut GrantSetup)) -> Self {
        if let Some(g) = &mut self.grant {
            f(g);
        }
        self
    }

    pub(crate) fn into_parts(
        mut self,
        is_async: bool,
    ) -> Result<(Endpoint, Option<GrantSetup>), UrlError> {
        let grant = self.grant.take();
        Ok((self.endpoint(is_async)?, grant))
    }

    /// Sets the client id sent in the body (JWT-bearer sources send none
    /// unless set).
    pub fn client_id(self, client_id: impl Into<String>) -> Self {
        self.map(|r| r.with_client_id(client_id))
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
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.auth_explicit = true;
        self.map(|r| r.client_auth(auth))
    }

    /// Authenticates with `private_key_jwt` (RFC 7523 2.2, OpenID Connect
    /// Core 9): each request carries a client assertion signed with `key`,
    /// with a fresh random `jti`, `iat` now, `exp` 60 s later (see
    /// [`assertion_lifetime`](Self::assertion_lifetime)), `iss` = `sub` =
    /// the client id and `aud` = the token endpoint (see
    /// [`assertion_audience`](Self::assertion_audience)). Any client
    /// secret is dropped.
    pub fn private_key_jwt(mut self, key: SigningKey) -> Self {
        self.assertion = Some(AssertionProvider::Signed(AssertionSigner::new(key)));
        self.map(|r| r.client_secret(None))
            .client_auth(ClientAuth::PrivateKeyJwt)
    }

    /// Authenticates with `client_secret_jwt` (OpenID Connect Core 9): an
    /// HS256 client assertion keyed with the client secret (set with
    /// [`client_secret`](Self::client_secret); RFC 7518 wants at least 32
    /// bytes, and a shorter one fails every fetch with a permanent error).
    /// The secret itself is never sent.
    pub fn client_secret_jwt(mut self) -> Self {
        self.assertion = None;
        self.client_auth(ClientAuth::ClientSecretJwt)
    }

    /// Authenticates with a client assertion read from `path` for every
    /// request (federated workload identity: a Kubernetes projected
    /// service-account token, `AZURE_FEDERATED_TOKEN_FILE`); see
    /// [`AssertionFile`]. It is sent as `private_key_jwt` is. When the
    /// authority refuses it (`invalid_client`, `invalid_grant`) and the file
    /// has been renewed since, or the refused one was about to expire, the
    /// error is transient and the next try uses the new file.
    pub fn client_assertion_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.assertion = Some(AssertionProvider::File(AssertionFile::new(path)));
        self.map(|r| r.client_secret(None))
            .client_auth(ClientAuth::PrivateKeyJwt)
    }

    /// Authenticates with client assertions made by `f` for each request
    /// (from a platform SDK, a sidecar); refusals are treated as for
    /// [`client_assertion_file`](Self::client_assertion_file).
    pub fn client_assertion_fn(
        mut self,
        f: impl Fn(&AssertionContext<'_>) -> Result<freshtoken_core::Assertion, FetchError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.assertion = Some(AssertionProvider::Fn(Arc::new(f)));
        self.map(|r| r.client_secret(None))
            .client_auth(ClientAuth::PrivateKeyJwt)
    }

    /// Sets the `aud` of signed client assertions (default: the token
    /// endpoint).
    pub fn assertion_audience(mut self, audience: Audience) -> Self {
        self.audience = audience;
        self
    }

    /// Sets the lifetime of signed client assertions (default 60 s).
    pub fn assertion_lifetime(mut self, lifetime: Duration) -> Self {
        self.assertion_lifetime = Some(lifetime);
        self
    }

    /// Replaces the random `jti` of signed assertions with `f`'s (which
    /// must be unique per call: authorities refuse a replayed `jti`).
    pub fn assertion_jti(mut self, f: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.jti = Some(Arc::new(f));
        self
    }

    /// Sets the issuer identifier (for [`Audience::Issuer`] without
    /// discovery).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Binds the tokens to `key` with DPoP (RFC 9449; feature `dpop`):
    /// every token request carries a fresh proof in a `DPoP` header, signed
    /// with `key` for this request's method and URL. When the authority
    /// answers `use_dpop_nonce` with a `DPoP-Nonce`, the request is sent
    /// again at once, once, with that nonce (not a failure); the latest
    /// nonce any answer gives is used from then on. A `token_type: DPoP`
    /// answer is kept as such, so the token's
    /// `authorization_header()` is `DPoP <token>`.
    ///
    /// ```
    /// use freshtoken::oauth2::{ClientCredentials, DpopKey};
    ///
    /// let source = ClientCredentials::builder("https://auth.example.com/token", "svc", "s3cret")
    ///     .dpop(DpopKey::generate()?)
    ///     .build()?;
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "dpop")]
    pub fn dpop(mut self, key: super::dpop::DpopKey) -> Self {
        self.dpop = Some(key);
        self
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

    /// Uses another blocking HTTP client. The timeouts set on this builder
    /// then do not apply: the transport has its own. (On a builder made
    /// async by [`async_transport`](SourceBuilder::async_transport), the
    /// async source sends each request through it from a thread of its
    /// own; prefer an async transport there.)
    pub fn transport(self, transport: impl HttpTransport) -> Self {
        self.set_transport(Transport::Blocking(Arc::new(transport)))
    }

    /// The endpoint for a source that is async (`is_async`) or blocking.
    fn endpoint(mut self, is_async: bool) -> Result<Endpoint, UrlError> {
        check_token_url(self.request.url())?;
        // Set on the builder; else the discovery's when it is async (an
        // async source has no default of its own); else the built-in one.
        let mut transport = match (self.transport.take(), &self.discovery) {
            (Some(t), _) => t,
            (None, Some(d)) if !d.transport_is_blocking() => d.transport(),
            (None, _) => Transport::default_blocking(self.connect_timeout, self.timeout),
        };
        if is_async {
            // Nothing blocks an async source's task (a blocking transport
            // set with `transport` sends from a thread).
            transport = transport.into_async();
            if let Some(d) = &self.discovery {
                if d.transport_is_blocking() {
                    if let Ok(inner) = d.with_transport(d.transport().into_async()) {
                        self.discovery = Some(Arc::new(inner));
                    }
                }
            }
        }
        let settings = SignerSettings {
            audience: self.audience,
            lifetime: self.assertion_lifetime,
            jti: self.jti,
        };
        let signer_settings = |mut signer: AssertionSigner| {
            signer.audience = settings.audience.clone();
            if let Some(lifetime) = settings.lifetime {
                signer.lifetime = lifetime;
            }
            signer.jti = settings.jti.clone();
            signer
        };
        let assertion = match self.assertion {
            Some(AssertionProvider::Signed(signer)) => {
                Some(AssertionProvider::Signed(signer_settings(signer)))
            }
            // client_secret_jwt: HS256 keyed with the secret, per request.
            None if self.request.auth_method() == ClientAuth::ClientSecretJwt => Some(
                AssertionProvider::Signed(signer_settings(AssertionSigner::with_client_secret())),
            ),
            other => other,
        };
        Ok(Endpoint {
            request: self.request,
            transport,
            discovery: self.discovery,
            issuer: self.issuer,
            assertion,
            auth_explicit: self.auth_explicit,
            signer: settings,
            warned: Arc::default(),
            #[cfg(feature = "dpop")]
            dpop: self.dpop.map(super::dpop::DpopState::new),
        })
    }
}

impl<M: TransportKind> SourceBuilder<ClientCredentials<M>> {
    /// Checks the URL (https, or http to a loopback address) and builds the
    /// source.
    pub fn build(self) -> Result<ClientCredentials<M>, UrlError> {
        Ok(ClientCredentials {
            endpoint: self.endpoint(M::ASYNC)?,
            mode: PhantomData,
        })
    }
}

impl<M: TransportKind> SourceBuilder<RefreshTokenSource<M>> {
    /// Checks the URL (https, or http to a loopback address) and builds the
    /// source.
    pub fn build(self) -> Result<RefreshTokenSource<M>, UrlError> {
        let initial = self.initial_refresh_token.clone();
        Ok(RefreshTokenSource {
            endpoint: self.endpoint(M::ASYNC)?,
            initial,
            mode: PhantomData,
        })
    }

    /// The refresh token to start from (the one the user's consent
    /// produced). A newer one found in the shared cache replaces it, and
    /// each rotation replaces it again, so after a restart with a cache the
    /// stale initial token is never presented.
    pub fn refresh_token(mut self, refresh_token: RefreshToken) -> Self {
        self.initial_refresh_token = Some(refresh_token);
        self
    }
}

/// The builder methods that depend on the transport kind, for each source
/// type: the discovery (of the same kind), and the async transport (which
/// makes a blocking builder async).
macro_rules! transport_kind_methods {
    ($source:ident) => {
        impl<M> SourceBuilder<$source<M>> {
            /// Takes the token endpoint from `discovery` at each fetch
            /// (cached). The discovery is of the source's kind: blocking,
            /// or async after
            /// [`async_transport`](SourceBuilder::async_transport).
            pub fn discovery(self, discovery: Discovery<M>) -> Self {
                self.with_discovery(&discovery)
            }
        }

        impl SourceBuilder<$source<AsyncHttp>> {
            /// Replaces the async HTTP client.
            pub fn async_transport(self, transport: impl AsyncHttpTransport) -> Self {
                self.set_transport(Transport::Async(Arc::new(transport)))
            }
        }

        impl SourceBuilder<$source<SyncHttp>> {
            /// Sends over an async HTTP client: the source built is then an
            /// [`AsyncTokenSource`], polled in the async driver's own task
            /// (`Builder::spawn(runtime, AsyncSource(source))`), with no
            /// blocking pool. The timeouts set on this builder do not
            /// apply: the transport has its own. A discovery set before
            /// reads its document over this transport too.
            pub fn async_transport(
                self,
                transport: impl AsyncHttpTransport,
            ) -> SourceBuilder<$source<AsyncHttp>> {
                self.set_transport(Transport::Async(Arc::new(transport)))
                    .retyped()
            }
        }
    };
}

transport_kind_methods!(ClientCredentials);
transport_kind_methods!(RefreshTokenSource);
transport_kind_methods!(JwtBearer);
transport_kind_methods!(TokenExchange);

use super::grants::{JwtBearer, TokenExchange};
