//! Assertion grants: JWT-bearer (RFC 7523 2.1) and token exchange (RFC
//! 8693), as token sources.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use freshtoken_core::oauth2::assertion::{expiry, AssertionClaims};
use freshtoken_core::oauth2::{FetchCredentials, TokenRequest};
use freshtoken_core::{Assertion, Clock, FetchError, FetchRequest, Timestamp, TokenResponse};
use serde_json::Value;

use super::assertion::{AssertionContext, AssertionFile, AssertionFn, AssertionSigner};
use super::signing::SigningKey;
use super::source::{Endpoint, SourceBuilder, SuppliedGrant};
use super::transport::{run_blocking, AsyncHttp, SyncHttp, TransportKind};
use crate::clock::SystemClock;
use crate::handle::TokenHandle;
use crate::source::{AsyncTokenSource, TokenSource};

/// The RFC 8693 token type of an OAuth2 access token.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The RFC 8693 token type of a JWT (a Kubernetes service-account token).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The RFC 8693 token type of an OpenID Connect id token.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// A JWT-bearer grant's assertion: signed here, or made by someone else.
#[derive(Clone)]
pub(crate) enum GrantAssertion {
    Signed {
        signer: AssertionSigner,
        issuer: String,
        subject: Option<String>,
        claims: serde_json::Map<String, Value>,
    },
    Supplied(Credential),
}

/// A credential made by someone else: a file, a closure, another handle.
#[derive(Clone)]
pub(crate) enum Credential {
    File(AssertionFile),
    Fn(AssertionFn),
    Handle(TokenHandle),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::File(file) => f.debug_tuple("File").field(&file.path()).finish(),
            Credential::Fn(_) => f.write_str("Fn"),
            Credential::Handle(_) => f.write_str("Handle"),
        }
    }
}

impl Credential {
    fn get(&self, ctx: &AssertionContext<'_>) -> Result<Assertion, FetchError> {
        match self {
            Credential::File(file) => Ok(file.read(ctx.now)?),
            Credential::Fn(f) => f(ctx),
            Credential::Handle(handle) => {
                let token = handle.valid_token().map_err(|e| {
                    FetchError::transient(format!("the subject token is not available: {e}"))
                })?;
                if token.expires_at() <= ctx.now {
                    return Err(FetchError::transient(
                        "the subject token has expired; waiting for its refresh",
                    ));
                }
                Ok(Assertion::new(token.access_token().expose_secret()))
            }
        }
    }

    /// The credential's expiry: the JWT `exp`, or the handle's token's.
    fn expiry(&self, sent: &Assertion) -> Option<Timestamp> {
        match self {
            Credential::Handle(handle) => handle
                .token()
                .filter(|t| t.access_token().fingerprint() == sent.fingerprint())
                .map(|t| t.expires_at())
                .or_else(|| expiry(sent)),
            _ => expiry(sent),
        }
    }

    /// Whether the credential has changed since `sent` was read.
    fn renewed_since(&self, sent: &Assertion, now: Timestamp) -> bool {
        let current = match self {
            Credential::File(file) => file.read(now).ok(),
            Credential::Fn(_) => None,
            Credential::Handle(handle) => handle
                .token()
                .map(|t| Assertion::new(t.access_token().expose_secret())),
        };
        current.is_some_and(|c| c.fingerprint() != sent.fingerprint())
    }
}

impl fmt::Debug for GrantAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantAssertion::Signed {
                signer,
                issuer,
                subject,
                claims,
            } => f
                .debug_struct("Signed")
                .field("signer", signer)
                .field("issuer", issuer)
                .field("subject", subject)
                .field("claims", &claims.keys().collect::<Vec<_>>())
                .finish(),
            GrantAssertion::Supplied(c) => f.debug_tuple("Supplied").field(c).finish(),
        }
    }
}

/// What a grant source adds to the builder.
#[derive(Clone, Debug)]
pub(crate) enum GrantSetup {
    JwtBearer(GrantAssertion),
    TokenExchange(Exchange),
}

#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    pub(crate) subject: Credential,
    pub(crate) subject_type: String,
    pub(crate) actor: Option<(Credential, String)>,
    pub(crate) follow_subject_expiry: bool,
}

fn context<'a>(request: &'a TokenRequest, issuer: Option<&'a str>) -> AssertionContext<'a> {
    AssertionContext {
        client_id: request.client_id(),
        token_endpoint: request.url(),
        issuer,
        now: SystemClock.now(),
    }
}

/// The JWT-bearer grant (RFC 7523 2.1) as a source: a signed JWT is the
/// grant. Google service accounts use it (`iss` the service account's
/// email, `scope` as a claim, `aud` `https://oauth2.googleapis.com/token`),
/// as do Salesforce, Okta service apps and many internal STSs.
///
/// The assertion is signed here for each request (fresh `jti`, `iat` now,
/// `exp` 60 s later, `aud` the token endpoint unless set), or supplied by
/// a file or a closure. A supplied assertion that is refused after it went
/// stale or was renewed is a transient error, never a revoked grant: the
/// next assertion starts afresh.
///
/// ```
/// use freshtoken::oauth2::{JwtBearer, SigningKey};
/// use serde_json::json;
///
/// # let key = SigningKey::hs256(&[1; 32])?;
/// // key = SigningKey::from_pem(JwsAlgorithm::Rs256, service_account_private_key_pem)?.with_kid(private_key_id)
/// let source = JwtBearer::builder("https://oauth2.googleapis.com/token", "robot@my-project.iam.gserviceaccount.com", key)
///     .claim("scope", json!("https://www.googleapis.com/auth/cloud-platform"))
///     .build()?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// Like [`ClientCredentials`](super::ClientCredentials), blocking
/// ([`SyncHttp`]) or async ([`AsyncHttp`], after
/// [`SourceBuilder::async_transport`]).
#[derive(Clone, Debug)]
pub struct JwtBearer<M = SyncHttp> {
    endpoint: Endpoint,
    assertion: GrantAssertion,
    mode: PhantomData<fn() -> M>,
}

impl JwtBearer<SyncHttp> {
    /// A source whose assertions are signed with `key`, with `iss`
    /// `issuer` (and `sub` the same, unless [`SourceBuilder::subject`]
    /// sets one). No `client_id` is sent unless
    /// [`SourceBuilder::client_id`] sets one.
    pub fn builder(
        url: impl Into<String>,
        issuer: impl Into<String>,
        key: SigningKey,
    ) -> SourceBuilder<JwtBearer> {
        SourceBuilder::with_grant(
            TokenRequest::jwt_bearer(url, ""),
            GrantSetup::JwtBearer(GrantAssertion::Signed {
                signer: AssertionSigner::new(key),
                issuer: issuer.into(),
                subject: None,
                claims: serde_json::Map::new(),
            }),
        )
    }

    /// A source whose assertion is read from `path` for each request (see
    /// [`AssertionFile`]).
    pub fn with_assertion_file(
        url: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> SourceBuilder<JwtBearer> {
        SourceBuilder::with_grant(
            TokenRequest::jwt_bearer(url, ""),
            GrantSetup::JwtBearer(GrantAssertion::Supplied(Credential::File(
                AssertionFile::new(path),
            ))),
        )
    }

    /// A source whose assertion is made by `f` for each request.
    pub fn with_assertion_fn(
        url: impl Into<String>,
        f: impl Fn(&AssertionContext<'_>) -> Result<Assertion, FetchError> + Send + Sync + 'static,
    ) -> SourceBuilder<JwtBearer> {
        SourceBuilder::with_grant(
            TokenRequest::jwt_bearer(url, ""),
            GrantSetup::JwtBearer(GrantAssertion::Supplied(Credential::Fn(Arc::new(f)))),
        )
    }
}

impl<M> JwtBearer<M> {
    pub(crate) fn from_parts(endpoint: Endpoint, assertion: GrantAssertion) -> Self {
        JwtBearer {
            endpoint,
            assertion,
            mode: PhantomData,
        }
    }

    async fn fetch_any(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        let request = self.endpoint.request_for_fetch().await?;
        let ctx = context(&request, self.endpoint.issuer());
        match &self.assertion {
            GrantAssertion::Signed {
                signer,
                issuer,
                subject,
                claims,
            } => {
                let mut c: AssertionClaims = signer.claims(&ctx, subject.as_deref())?;
                c.issuer = issuer.clone();
                if subject.is_none() {
                    c.subject = issuer.clone();
                }
                c.extra = claims.clone();
                let assertion = signer.sign(&c, request.secret())?;
                self.endpoint
                    .fetch_with(fetch, FetchCredentials::new().assertion(&assertion), None)
                    .await
            }
            GrantAssertion::Supplied(credential) => {
                let assertion = credential.get(&ctx)?;
                let renewed = |now| credential.renewed_since(&assertion, now);
                let supplied = SuppliedGrant {
                    sent_exp: credential.expiry(&assertion),
                    renewed: &renewed,
                };
                self.endpoint
                    .fetch_with(
                        fetch,
                        FetchCredentials::new().assertion(&assertion),
                        Some(supplied),
                    )
                    .await
            }
        }
    }
}

impl TokenSource for JwtBearer<SyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        run_blocking(self.fetch_any(fetch))
    }
}

impl AsyncTokenSource for JwtBearer<AsyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    async fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.fetch_any(fetch).await
    }
}

/// Token exchange (RFC 8693) as a source: a subject token (and maybe an
/// actor token) traded for a token for another audience, resource or
/// scope.
///
/// The subject token comes from another freshtoken [`TokenHandle`] (the
/// exchange then follows the subject's refresh: each exchange presents the
/// subject's current token, an exchanged token is not kept past the
/// subject's expiry unless [`SourceBuilder::follow_subject_expiry`] says
/// otherwise, and a refusal after the subject renewed is retried with the
/// new one), from a file (a Kubernetes service-account token), or from a
/// closure.
///
/// ```
/// use freshtoken::oauth2::{TOKEN_TYPE_JWT, TokenExchange};
///
/// let source = TokenExchange::from_file(
///     "https://sts.example.com/oauth2/token",
///     "my-workload",
///     "/var/run/secrets/tokens/sts-token",
/// )
/// .subject_token_type(TOKEN_TYPE_JWT)
/// .audience("https://orders.example.com")
/// .build()?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// Like [`ClientCredentials`](super::ClientCredentials), blocking
/// ([`SyncHttp`]) or async ([`AsyncHttp`], after
/// [`SourceBuilder::async_transport`]).
#[derive(Clone, Debug)]
pub struct TokenExchange<M = SyncHttp> {
    endpoint: Endpoint,
    exchange: Exchange,
    mode: PhantomData<fn() -> M>,
}

impl TokenExchange<SyncHttp> {
    fn builder(
        url: impl Into<String>,
        client_id: impl Into<String>,
        subject: Credential,
    ) -> SourceBuilder<TokenExchange> {
        SourceBuilder::with_grant(
            TokenRequest::token_exchange(url, client_id),
            GrantSetup::TokenExchange(Exchange {
                subject,
                subject_type: TOKEN_TYPE_ACCESS_TOKEN.to_owned(),
                actor: None,
                follow_subject_expiry: true,
            }),
        )
    }

    /// Exchanges the current token of `subject` (another freshtoken handle;
    /// type `access_token`).
    pub fn from_handle(
        url: impl Into<String>,
        client_id: impl Into<String>,
        subject: TokenHandle,
    ) -> SourceBuilder<TokenExchange> {
        Self::builder(url, client_id, Credential::Handle(subject))
    }

    /// Exchanges the token in a file, read for each request (see
    /// [`AssertionFile`]); set its type with
    /// [`SourceBuilder::subject_token_type`] (default `access_token`).
    pub fn from_file(
        url: impl Into<String>,
        client_id: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> SourceBuilder<TokenExchange> {
        Self::builder(url, client_id, Credential::File(AssertionFile::new(path)))
    }

    /// Exchanges the token `f` makes for each request.
    pub fn from_fn(
        url: impl Into<String>,
        client_id: impl Into<String>,
        f: impl Fn(&AssertionContext<'_>) -> Result<Assertion, FetchError> + Send + Sync + 'static,
    ) -> SourceBuilder<TokenExchange> {
        Self::builder(url, client_id, Credential::Fn(Arc::new(f)))
    }
}

impl<M> TokenExchange<M> {
    pub(crate) fn from_parts(endpoint: Endpoint, exchange: Exchange) -> Self {
        TokenExchange {
            endpoint,
            exchange,
            mode: PhantomData,
        }
    }

    async fn fetch_any(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        let request = self.endpoint.request_for_fetch().await?;
        let ctx = context(&request, self.endpoint.issuer());
        let ex = &self.exchange;
        let subject = ex.subject.get(&ctx)?;
        let subject_exp = ex.subject.expiry(&subject);
        let actor = match &ex.actor {
            Some((credential, kind)) => Some((credential.get(&ctx)?, kind.as_str())),
            None => None,
        };
        let mut credentials = FetchCredentials::new().subject_token(&subject, &ex.subject_type);
        if let Some((token, kind)) = &actor {
            credentials = credentials.actor_token(token, kind);
        }
        let renewed = |now| ex.subject.renewed_since(&subject, now);
        let supplied = SuppliedGrant {
            sent_exp: subject_exp,
            renewed: &renewed,
        };
        let mut answer = self
            .endpoint
            .fetch_with(fetch, credentials, Some(supplied))
            .await?;
        if ex.follow_subject_expiry {
            if let Some(exp) = subject_exp {
                let left = exp.saturating_duration_since(SystemClock.now()).as_secs();
                let left = i64::try_from(left).unwrap_or(i64::MAX);
                if answer.expires_in.is_none_or(|e| e > left) {
                    tracing::debug!(
                        subject_left_s = left,
                        "the exchanged token is kept only as long as its subject"
                    );
                    answer.expires_in = Some(left);
                }
            }
        }
        Ok(answer)
    }
}

impl TokenSource for TokenExchange<SyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        run_blocking(self.fetch_any(fetch))
    }
}

impl AsyncTokenSource for TokenExchange<AsyncHttp> {
    fn token_key(&self) -> Option<crate::TokenKey> {
        Some(self.endpoint.token_key())
    }

    async fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        self.fetch_any(fetch).await
    }
}

impl<M: TransportKind> SourceBuilder<JwtBearer<M>> {
    /// Sets the assertion's `sub` (for a signed assertion; Google: the
    /// user to impersonate with domain-wide delegation).
    pub fn subject(self, subject: impl Into<String>) -> Self {
        self.map_grant(|g| {
            if let GrantSetup::JwtBearer(GrantAssertion::Signed { subject: s, .. }) = g {
                *s = Some(subject.into());
            }
        })
    }

    /// Adds a claim to a signed assertion (Google: `scope`). The standard
    /// claims (`iss`, `sub`, `aud`, `jti`, `iat`, `exp`, `nbf`) cannot be
    /// replaced this way.
    pub fn claim(self, name: impl Into<String>, value: Value) -> Self {
        self.map_grant(|g| {
            if let GrantSetup::JwtBearer(GrantAssertion::Signed { claims, .. }) = g {
                claims.insert(name.into(), value);
            }
        })
    }

    /// Checks the URL and builds the source.
    pub fn build(self) -> Result<JwtBearer<M>, super::UrlError> {
        let (endpoint, grant) = self.into_parts(M::ASYNC)?;
        match grant {
            Some(GrantSetup::JwtBearer(mut assertion)) => {
                if let GrantAssertion::Signed { signer, .. } = &mut assertion {
                    endpoint.apply_signer_settings(signer);
                }
                Ok(JwtBearer::from_parts(endpoint, assertion))
            }
            _ => unreachable!("a JwtBearer builder always has its grant"),
        }
    }
}

impl<M: TransportKind> SourceBuilder<TokenExchange<M>> {
    /// Sets the `subject_token_type` (default
    /// [`TOKEN_TYPE_ACCESS_TOKEN`]).
    pub fn subject_token_type(self, token_type: impl Into<String>) -> Self {
        self.map_grant(|g| {
            if let GrantSetup::TokenExchange(ex) = g {
                ex.subject_type = token_type.into();
            }
        })
    }

    /// Sets the `requested_token_type`.
    pub fn requested_token_type(self, token_type: impl Into<String>) -> Self {
        self.param("requested_token_type", token_type)
    }

    /// Adds an actor token (delegation, RFC 8693 1.1), read from `path` for
    /// each request, of type `token_type`.
    pub fn actor_token_file(self, path: impl Into<PathBuf>, token_type: impl Into<String>) -> Self {
        let actor = (
            Credential::File(AssertionFile::new(path)),
            token_type.into(),
        );
        self.map_grant(|g| {
            if let GrantSetup::TokenExchange(ex) = g {
                ex.actor = Some(actor);
            }
        })
    }

    /// Adds an actor token from another handle, of type `token_type`.
    pub fn actor_token_handle(self, actor: TokenHandle, token_type: impl Into<String>) -> Self {
        let actor = (Credential::Handle(actor), token_type.into());
        self.map_grant(|g| {
            if let GrantSetup::TokenExchange(ex) = g {
                ex.actor = Some(actor);
            }
        })
    }

    /// Whether an exchanged token is kept at most as long as the subject
    /// token it came from (default `true`: when the subject is refreshed,
    /// so is the exchange).
    pub fn follow_subject_expiry(self, follow: bool) -> Self {
        self.map_grant(|g| {
            if let GrantSetup::TokenExchange(ex) = g {
                ex.follow_subject_expiry = follow;
            }
        })
    }

    /// Checks the URL and builds the source.
    pub fn build(self) -> Result<TokenExchange<M>, super::UrlError> {
        let (endpoint, grant) = self.into_parts(M::ASYNC)?;
        match grant {
            Some(GrantSetup::TokenExchange(exchange)) => {
                Ok(TokenExchange::from_parts(endpoint, exchange))
            }
            _ => unreachable!("a TokenExchange builder always has its grant"),
        }
    }
}
