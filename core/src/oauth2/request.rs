//! Building token requests (RFC 6749 sections 2.3, 4.4 and 6; RFC 8707).

use std::fmt;

use base64::Engine as _;
use zeroize::Zeroizing;

use super::form;
use super::redact::redacted_url;
use super::response::{parse_response, HttpResponse};
use crate::error::FetchError;
use crate::machine::FetchRequest;
use crate::secret::{Assertion, ClientSecret};
use crate::time::Timestamp;
use crate::token::TokenResponse;

/// The default cap on the size of a token endpoint's answer: 64 KiB, far
/// more than any real token answer and small enough that a hostile or
/// broken endpoint cannot make the refresher hold megabytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How the client proves its identity to the token endpoint (RFC 6749 2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: an `Authorization: Basic` header with the
    /// form-encoded client id and secret (RFC 6749 2.3.1). The default, and
    /// the method every authorization server must support.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the body.
    Post,
    /// `none`: a public client; only `client_id` is sent, in the body.
    None,
    /// `private_key_jwt` (RFC 7523 2.2, OpenID Connect Core 9): a JWT
    /// signed with the client's private key, sent as `client_assertion`
    /// with `client_assertion_type`
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, plus
    /// `client_id`. A federated workload identity token (a Kubernetes
    /// service-account token, the Azure workload-identity file) is sent the
    /// same way. The assertion comes with each build
    /// ([`FetchCredentials::client_assertion`]).
    PrivateKeyJwt,
    /// `client_secret_jwt` (OpenID Connect Core 9): like
    /// [`PrivateKeyJwt`](Self::PrivateKeyJwt), with a JWT signed with the
    /// client secret (HMAC).
    ClientSecretJwt,
    /// `tls_client_auth` (RFC 8705 2.1): the client authenticates with a
    /// certificate from a CA the authority trusts, at the TLS layer; only
    /// `client_id` is sent, in the body.
    TlsClientAuth,
    /// `self_signed_tls_client_auth` (RFC 8705 2.2): a self-signed client
    /// certificate registered with the authority; only `client_id` in the
    /// body.
    SelfSignedTlsClientAuth,
}

impl ClientAuth {
    /// The method's registered name, as in `token_endpoint_auth_method`
    /// and a discovery document's `token_endpoint_auth_methods_supported`.
    ///
    /// ```
    /// use freshtoken_core::oauth2::ClientAuth;
    /// assert_eq!(ClientAuth::PrivateKeyJwt.as_str(), "private_key_jwt");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
            ClientAuth::None => "none",
            ClientAuth::PrivateKeyJwt => "private_key_jwt",
            ClientAuth::ClientSecretJwt => "client_secret_jwt",
            ClientAuth::TlsClientAuth => "tls_client_auth",
            ClientAuth::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        }
    }

    /// Whether the method sends a `client_assertion` JWT.
    pub fn uses_client_assertion(self) -> bool {
        matches!(
            self,
            ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt
        )
    }

    /// Whether the method authenticates at the TLS layer (RFC 8705).
    pub fn uses_mtls(self) -> bool {
        matches!(
            self,
            ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth
        )
    }
}

/// The `client_assertion_type` of RFC 7523 2.2 client assertions.
pub const CLIENT_ASSERTION_TYPE_JWT_BEARER: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The credentials that change with every fetch and that a
/// [`TokenRequest`] cannot make itself, because making them needs a key, a
/// file or another token: a client assertion, a JWT-bearer grant's
/// assertion, a token exchange's subject and actor tokens.
///
/// ```
/// use freshtoken_core::oauth2::FetchCredentials;
/// use freshtoken_core::Assertion;
///
/// let jwt = Assertion::new("eyJ...");
/// let creds = FetchCredentials::new().client_assertion(&jwt);
/// assert!(!format!("{creds:?}").contains("eyJ"));
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct FetchCredentials<'a> {
    /// The client assertion for [`ClientAuth::PrivateKeyJwt`] and
    /// [`ClientAuth::ClientSecretJwt`].
    pub client_assertion: Option<&'a Assertion>,
    /// The `assertion` of a [`GrantKind::JwtBearer`] request.
    pub assertion: Option<&'a Assertion>,
    /// The `subject_token` and its `subject_token_type` of a
    /// [`GrantKind::TokenExchange`] request.
    pub subject_token: Option<(&'a Assertion, &'a str)>,
    /// The optional `actor_token` and its `actor_token_type`.
    pub actor_token: Option<(&'a Assertion, &'a str)>,
    /// The `device_code` of a [`GrantKind::DeviceCode`] request.
    pub device_code: Option<&'a Assertion>,
}

impl<'a> FetchCredentials<'a> {
    /// No credentials.
    pub fn new() -> Self {
        Self::default()
    }

    /// With a client assertion.
    pub fn client_assertion(mut self, assertion: &'a Assertion) -> Self {
        self.client_assertion = Some(assertion);
        self
    }

    /// With a JWT-bearer grant assertion.
    pub fn assertion(mut self, assertion: &'a Assertion) -> Self {
        self.assertion = Some(assertion);
        self
    }

    /// With a token exchange's subject token and its type URI.
    pub fn subject_token(mut self, token: &'a Assertion, token_type: &'a str) -> Self {
        self.subject_token = Some((token, token_type));
        self
    }

    /// With a token exchange's actor token and its type URI.
    pub fn actor_token(mut self, token: &'a Assertion, token_type: &'a str) -> Self {
        self.actor_token = Some((token, token_type));
        self
    }

    /// With the device code of a device authorization grant.
    pub fn device_code(mut self, code: &'a Assertion) -> Self {
        self.device_code = Some(code);
        self
    }
}

/// The grant the request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantKind {
    /// `client_credentials` (RFC 6749 4.4): the client acts for itself.
    ClientCredentials,
    /// `refresh_token` (RFC 6749 6): renews a user's grant; the refresh
    /// token comes from the [`FetchRequest`].
    RefreshToken,
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 2.1): a
    /// signed JWT is the grant (Google service accounts); the assertion
    /// comes with each build ([`FetchCredentials::assertion`]).
    JwtBearer,
    /// `urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693): a
    /// subject token (and maybe an actor token) traded for another token;
    /// they come with each build ([`FetchCredentials::subject_token`]).
    TokenExchange,
    /// `urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 3.4): the
    /// device code a device authorization request returned; it comes with
    /// each build ([`FetchCredentials::device_code`]).
    DeviceCode,
}

impl GrantKind {
    /// The `grant_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::RefreshToken => "refresh_token",
            GrantKind::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
            GrantKind::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
            GrantKind::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }
}

/// The encoding of the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`, as RFC 6749 requires.
    #[default]
    Form,
    /// `application/json`, for authorities that want it (aliri_tokens'
    /// default; some Auth0-style endpoints accept both).
    Json,
}

/// An HTTP request as plain data, for any HTTP client to send.
///
/// Its headers and body hold the client secret or the refresh token, so its
/// `Debug` shows header names and the body length only, and the body is
/// wiped from memory on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, Zeroizing<String>)>,
    body: Zeroizing<Vec<u8>>,
    timeout: Option<std::time::Duration>,
}

impl HttpRequest {
    /// How long the refresh machine waits for this request's answer
    /// ([`FetchRequest::timeout`]), when it was built for a fetch. A
    /// transport should give up slightly sooner, so its timeout and the
    /// machine's deadline do not race.
    ///
    /// ```
    /// use freshtoken_core::oauth2::HttpRequest;
    /// use std::time::Duration;
    /// let r = HttpRequest::get("https://a.example/x").with_timeout(Some(Duration::from_secs(3)));
    /// assert_eq!(r.timeout(), Some(Duration::from_secs(3)));
    /// ```
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout
    }

    /// Sets the time the caller waits for the answer (see [`timeout`](Self::timeout)).
    pub fn with_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// A `GET` of `url` that accepts JSON, without a body: how a discovery
    /// document is read.
    ///
    /// ```
    /// use freshtoken_core::oauth2::HttpRequest;
    /// let r = HttpRequest::get("https://a.example/.well-known/openid-configuration");
    /// assert_eq!((r.method(), r.body().len()), ("GET", 0));
    /// ```
    pub fn get(url: impl Into<String>) -> Self {
        HttpRequest {
            method: "GET",
            url: url.into(),
            headers: vec![("Accept", Zeroizing::new("application/json".to_owned()))],
            body: Zeroizing::new(Vec::new()),
            timeout: None,
        }
    }

    /// Adds a header (a cloud identity endpoint's `Metadata: true`, say).
    /// Its value is wiped from memory on drop, like the others, and never
    /// shown by `Debug`.
    ///
    /// ```
    /// use freshtoken_core::oauth2::HttpRequest;
    /// let r = HttpRequest::get("http://127.0.0.1:9/token").with_header("Metadata", "true");
    /// assert!(r.headers().any(|(n, v)| n == "Metadata" && v == "true"));
    /// ```
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, Zeroizing::new(value.into())));
        self
    }

    /// The method: `POST` for token requests, `GET` for discovery.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The absolute URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The headers to send, in order. Values may hold secrets.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.headers.iter().map(|(n, v)| (*n, v.as_str()))
    }

    /// The body bytes. They may hold secrets.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| *n).collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            // User-info and query values may be credentials (as in UrlError).
            .field("url", &redacted_url(&self.url))
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A token request template: endpoint, client, grant and parameters. It
/// builds the [`HttpRequest`] for each fetch and parses the answer.
///
/// It is pure data: no I/O, no clock. The `freshtoken` crate's
/// `oauth2` sources wrap it with an HTTP transport.
///
/// ```
/// use freshtoken_core::oauth2::{ClientAuth, TokenRequest};
/// use freshtoken_core::{ClientSecret, FetchRequest};
///
/// let request = TokenRequest::client_credentials(
///     "https://auth.example.com/oauth2/token",
///     "my-client",
///     ClientSecret::new("s3cret"),
/// )
/// .client_auth(ClientAuth::Post)
/// .scope("read write")
/// .resource("https://api.example.com/");
///
/// let http = request.build(&FetchRequest::first()).unwrap();
/// assert_eq!(http.method(), "POST");
/// assert_eq!(
///     std::str::from_utf8(http.body()).unwrap(),
///     "grant_type=client_credentials&scope=read+write&resource=https%3A%2F%2Fapi.example.com%2F\
///      &client_id=my-client&client_secret=s3cret",
/// );
/// assert!(!format!("{request:?} {http:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct TokenRequest {
    url: String,
    grant: GrantKind,
    client_id: String,
    client_secret: Option<ClientSecret>,
    client_auth: ClientAuth,
    scope: Option<String>,
    audience: Option<String>,
    resources: Vec<String>,
    extra: Vec<(String, String)>,
    format: BodyFormat,
    max_response_bytes: usize,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Extra parameters may be credentials too (an `assertion`), so only
        // their names are shown.
        let extra: Vec<&str> = self.extra.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TokenRequest")
            .field("url", &redacted_url(&self.url))
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_auth", &self.client_auth)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("resources", &self.resources)
            .field("extra", &extra)
            .field("format", &self.format)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl TokenRequest {
    fn new(url: impl Into<String>, grant: GrantKind, client_id: impl Into<String>) -> Self {
        TokenRequest {
            url: url.into(),
            grant,
            client_id: client_id.into(),
            client_secret: None,
            client_auth: ClientAuth::Basic,
            scope: None,
            audience: None,
            resources: Vec::new(),
            extra: Vec::new(),
            format: BodyFormat::Form,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// A `client_credentials` request to `url` for a confidential client,
    /// authenticated with `client_secret_basic` unless changed.
    pub fn client_credentials(
        url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
    ) -> Self {
        let mut r = Self::new(url, GrantKind::ClientCredentials, client_id);
        r.client_secret = Some(client_secret);
        r
    }

    /// A `refresh_token` request to `url`. The refresh token itself comes
    /// with each [`FetchRequest`]. Pass `None` as the secret for a public
    /// client (the client auth then becomes [`ClientAuth::None`]).
    pub fn refresh_token(
        url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Option<ClientSecret>,
    ) -> Self {
        let mut r = Self::new(url, GrantKind::RefreshToken, client_id);
        if client_secret.is_none() {
            r.client_auth = ClientAuth::None;
        }
        r.client_secret = client_secret;
        r
    }

    /// A JWT-bearer grant request (RFC 7523 2.1) to `url`. The assertion
    /// comes with each build; client authentication is
    /// [`ClientAuth::None`] (only `client_id` is sent, as Google's
    /// service-account flow wants) unless changed.
    pub fn jwt_bearer(url: impl Into<String>, client_id: impl Into<String>) -> Self {
        let mut r = Self::new(url, GrantKind::JwtBearer, client_id);
        r.client_auth = ClientAuth::None;
        r
    }

    /// A token exchange request (RFC 8693) to `url`. The subject token
    /// comes with each build; add `requested_token_type` with
    /// [`param`](Self::param), and `audience`, `resource` and `scope` with
    /// their setters. Public client ([`ClientAuth::None`]) unless changed.
    pub fn token_exchange(url: impl Into<String>, client_id: impl Into<String>) -> Self {
        let mut r = Self::new(url, GrantKind::TokenExchange, client_id);
        r.client_auth = ClientAuth::None;
        r
    }

    /// A device authorization grant's token request (RFC 8628 3.4) to
    /// `url`, whose device code comes with each build; the same template
    /// builds the device authorization request itself
    /// ([`build_device_authorization`](Self::build_device_authorization)),
    /// which carries the scope, audience, resources and extra parameters
    /// (the token requests carry only the device code and the client).
    /// Public client ([`ClientAuth::None`]) unless changed.
    ///
    /// ```
    /// use freshtoken_core::oauth2::{FetchCredentials, TokenRequest};
    /// use freshtoken_core::{Assertion, FetchRequest};
    ///
    /// let request = TokenRequest::device_code("https://a.example/token", "cli").scope("openid offline_access");
    /// let start = request
    ///     .build_device_authorization("https://a.example/device", &FetchCredentials::new())
    ///     .unwrap();
    /// assert_eq!(std::str::from_utf8(start.body()).unwrap(), "scope=openid+offline_access&client_id=cli");
    /// let code = Assertion::new("dc-1");
    /// let poll = request
    ///     .build_with(&FetchRequest::first(), &FetchCredentials::new().device_code(&code))
    ///     .unwrap();
    /// assert_eq!(
    ///     std::str::from_utf8(poll.body()).unwrap(),
    ///     "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=dc-1\
    ///      &client_id=cli",
    /// );
    /// ```
    pub fn device_code(url: impl Into<String>, client_id: impl Into<String>) -> Self {
        let mut r = Self::new(url, GrantKind::DeviceCode, client_id);
        r.client_auth = ClientAuth::None;
        r
    }

    /// Sets the client id (empty: none is sent by a public client).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The same request to another token endpoint (one that discovery
    /// found).
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The client authentication method.
    pub fn auth_method(&self) -> ClientAuth {
        self.client_auth
    }

    /// The client secret, for a source that signs `client_secret_jwt`
    /// assertions with it.
    pub fn secret(&self) -> Option<&ClientSecret> {
        self.client_secret.as_ref()
    }

    /// Sets (or, with `None`, removes) the client secret. Setting one on a
    /// public client switches it to [`ClientAuth::Basic`]; removing it
    /// makes it public ([`ClientAuth::None`]).
    pub fn client_secret(mut self, secret: Option<ClientSecret>) -> Self {
        match (&secret, self.client_auth) {
            (Some(_), ClientAuth::None) => self.client_auth = ClientAuth::Basic,
            (None, _) => self.client_auth = ClientAuth::None,
            _ => {}
        }
        self.client_secret = secret;
        self
    }

    /// Sets how the client authenticates.
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Sets the `scope` parameter (space-separated scopes).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Sets the `audience` parameter (Auth0, Okta and others use it to pick
    /// the API the token is for).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Adds an RFC 8707 `resource` indicator (may be called several times).
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Adds any other body parameter. Its value is treated as a secret in
    /// `Debug` output.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// Sets the body encoding.
    pub fn body_format(mut self, format: BodyFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets the cap on the answer's size (default
    /// [`DEFAULT_MAX_RESPONSE_BYTES`]). Transports read at most one byte more.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// The token endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The grant.
    pub fn grant(&self) -> GrantKind {
        self.grant
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The `scope` parameter, if set.
    pub fn requested_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The `audience` parameter, if set.
    pub fn requested_audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The RFC 8707 `resource` indicators, in the order they were added.
    pub fn requested_resources(&self) -> &[String] {
        &self.resources
    }

    /// The cap on the answer's size.
    pub fn response_size_cap(&self) -> usize {
        self.max_response_bytes
    }

    /// Builds the HTTP request for one fetch.
    ///
    /// A refresh-token request without a refresh token in `fetch` is a
    /// permanent error: nothing can be sent until one is known (the machine
    /// may still find one in a shared cache later).
    pub fn build(&self, fetch: &FetchRequest) -> Result<HttpRequest, FetchError> {
        self.build_with(fetch, &FetchCredentials::new())
    }

    /// Builds the HTTP request for one fetch with the credentials that
    /// change per fetch: a client assertion for [`ClientAuth::PrivateKeyJwt`]
    /// and [`ClientAuth::ClientSecretJwt`], the grant's assertion or subject
    /// token. A credential the request needs and `credentials` lacks is a
    /// permanent error (a configuration mistake, never sent half-made).
    ///
    /// ```
    /// use freshtoken_core::oauth2::{ClientAuth, FetchCredentials, TokenRequest};
    /// use freshtoken_core::{Assertion, ClientSecret, FetchRequest};
    ///
    /// let request = TokenRequest::client_credentials("https://a.example/token", "app", ClientSecret::new(""))
    ///     .client_secret(None)
    ///     .client_auth(ClientAuth::PrivateKeyJwt);
    /// assert!(request.build(&FetchRequest::first()).is_err());
    /// let jwt = Assertion::new("h.p.s");
    /// let http = request
    ///     .build_with(&FetchRequest::first(), &FetchCredentials::new().client_assertion(&jwt))
    ///     .unwrap();
    /// assert_eq!(
    ///     std::str::from_utf8(http.body()).unwrap(),
    ///     "grant_type=client_credentials&client_id=app&client_assertion_type=\
    ///      urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=h.p.s",
    /// );
    /// ```
    pub fn build_with(
        &self,
        fetch: &FetchRequest,
        credentials: &FetchCredentials<'_>,
    ) -> Result<HttpRequest, FetchError> {
        let mut params: Vec<(&str, &str)> = vec![("grant_type", self.grant.as_str())];
        match self.grant {
            GrantKind::DeviceCode => {
                let code = credentials.device_code.ok_or_else(|| {
                    FetchError::permanent("the device authorization grant needs a device code")
                })?;
                params.push(("device_code", code.expose_secret()));
            }
            GrantKind::ClientCredentials => {}
            GrantKind::RefreshToken => {
                let rt = fetch.refresh_token.as_ref().ok_or_else(|| {
                    FetchError::permanent("no refresh token is known for the refresh-token grant")
                })?;
                params.push(("refresh_token", rt.expose_secret()));
            }
            GrantKind::JwtBearer => {
                let assertion = credentials.assertion.ok_or_else(|| {
                    FetchError::permanent("the JWT-bearer grant needs an assertion")
                })?;
                params.push(("assertion", assertion.expose_secret()));
            }
            GrantKind::TokenExchange => {
                let (token, kind) = credentials.subject_token.ok_or_else(|| {
                    FetchError::permanent("the token exchange grant needs a subject token")
                })?;
                params.push(("subject_token", token.expose_secret()));
                params.push(("subject_token_type", kind));
                if let Some((token, kind)) = credentials.actor_token {
                    params.push(("actor_token", token.expose_secret()));
                    params.push(("actor_token_type", kind));
                }
            }
        }
        // The device grant's polls name only the code: the scope and the
        // rest went with the device authorization request.
        let template = self.grant != GrantKind::DeviceCode;
        self.finish(
            &self.url,
            params,
            credentials,
            Some(fetch.timeout),
            template,
        )
    }

    /// Builds the device authorization request (RFC 8628 3.1) to `url`:
    /// the same client authentication, scope, audience, resources and extra
    /// parameters as the token requests, no `grant_type`.
    pub fn build_device_authorization(
        &self,
        url: &str,
        credentials: &FetchCredentials<'_>,
    ) -> Result<HttpRequest, FetchError> {
        self.finish(url, Vec::new(), credentials, None, true)
    }

    /// The request to `url` with `params` first, then (with `template`)
    /// the template's parameters, and the client authentication.
    fn finish<'s>(
        &'s self,
        url: &str,
        mut params: Vec<(&'s str, &'s str)>,
        credentials: &FetchCredentials<'s>,
        timeout: Option<std::time::Duration>,
        template: bool,
    ) -> Result<HttpRequest, FetchError> {
        if template {
            if let Some(scope) = &self.scope {
                params.push(("scope", scope));
            }
            if let Some(audience) = &self.audience {
                params.push(("audience", audience));
            }
            for r in &self.resources {
                params.push(("resource", r));
            }
            for (n, v) in &self.extra {
                params.push((n, v));
            }
        }

        let mut headers: Vec<(&'static str, Zeroizing<String>)> = Vec::new();
        match (self.client_auth, &self.client_secret) {
            (ClientAuth::Basic, Some(secret)) => {
                // RFC 6749 2.3.1: both parts are form-encoded before they are
                // joined and base64-encoded, so a `:` in the id survives.
                let pair = Zeroizing::new(format!(
                    "{}:{}",
                    form::encode(&self.client_id),
                    form::encode(secret.expose_secret())
                ));
                let b64 = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
                );
                headers.push((
                    "Authorization",
                    Zeroizing::new(format!("Basic {}", b64.as_str())),
                ));
            }
            (ClientAuth::Post, Some(secret)) => {
                params.push(("client_id", &self.client_id));
                params.push(("client_secret", secret.expose_secret()));
            }
            (ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt, _) => {
                let assertion = credentials.client_assertion.ok_or_else(|| {
                    FetchError::permanent(format!(
                        "{} client authentication needs a client assertion",
                        self.client_auth.as_str()
                    ))
                })?;
                // RFC 7521 4.2 makes client_id optional; Entra ID and
                // oidc-provider accept it, and some authorities require it.
                params.push(("client_id", &self.client_id));
                params.push(("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_BEARER));
                params.push(("client_assertion", assertion.expose_secret()));
            }
            // A public client, or an auth method that needs a secret we do
            // not have: identify the client in the body.
            // (An empty client id is not sent: a JWT-bearer grant such as
            // Google's names the client in the assertion alone.)
            _ if self.client_id.is_empty() => {}
            _ => params.push(("client_id", &self.client_id)),
        }

        let body = match self.format {
            BodyFormat::Form => {
                headers.push((
                    "Content-Type",
                    Zeroizing::new("application/x-www-form-urlencoded".to_owned()),
                ));
                Zeroizing::new(form::encode_pairs(params).into_bytes())
            }
            BodyFormat::Json => {
                headers.push((
                    "Content-Type",
                    Zeroizing::new("application/json".to_owned()),
                ));
                Zeroizing::new(json_body(&params))
            }
        };
        headers.push(("Accept", Zeroizing::new("application/json".to_owned())));
        Ok(HttpRequest {
            method: "POST",
            url: url.to_owned(),
            headers,
            body,
            timeout,
        })
    }

    /// Parses the answer to a request built by [`build`](Self::build);
    /// `now` is when it arrived (for a Retry-After given as a date).
    pub fn parse(
        &self,
        response: &HttpResponse,
        now: Timestamp,
    ) -> Result<TokenResponse, FetchError> {
        parse_response(self.grant, response, now, self.max_response_bytes)
    }
}

/// A JSON object of the parameters; a name given several times (`resource`)
/// becomes an array.
fn json_body(params: &[(&str, &str)]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    for (name, value) in params {
        let value = serde_json::Value::String((*value).to_owned());
        match map.get_mut(*name) {
            None => {
                map.insert((*name).to_owned(), value);
            }
            Some(serde_json::Value::Array(values)) => values.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = serde_json::Value::Array(vec![first, value]);
            }
        }
    }
    // Serializing a map of strings cannot fail.
    serde_json::to_vec(&map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::RefreshToken;

    fn body(r: &HttpRequest) -> &str {
        std::str::from_utf8(r.body()).unwrap()
    }

    fn header<'a>(r: &'a HttpRequest, name: &str) -> Option<&'a str> {
        r.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    #[test]
    fn basic_auth_form_encodes_id_and_secret() {
        let r =
            TokenRequest::client_credentials("https://a/t", "id:1", ClientSecret::new("p w+/%"))
                .build(&FetchRequest::first())
                .unwrap();
        let auth = header(&r, "Authorization").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"id%3A1:p+w%2B%2F%25");
        assert_eq!(body(&r), "grant_type=client_credentials");
        assert_eq!(
            header(&r, "Content-Type"),
            Some("application/x-www-form-urlencoded")
        );
    }

    #[test]
    fn refresh_grant_uses_the_fetch_requests_token() {
        let req = TokenRequest::refresh_token("https://a/t", "app", None).scope("openid");
        let err = req.build(&FetchRequest::first()).unwrap_err();
        assert_eq!(err.kind(), crate::FetchErrorKind::Permanent);
        let r = req
            .build(&FetchRequest::new(2, Some(RefreshToken::new("rt/1"))))
            .unwrap();
        assert_eq!(
            body(&r),
            "grant_type=refresh_token&refresh_token=rt%2F1&scope=openid&client_id=app"
        );
        assert!(header(&r, "Authorization").is_none());
        assert!(!format!("{r:?}").contains("rt/1"));
    }

    #[test]
    fn json_body_with_repeated_resource_and_extras() {
        let req = TokenRequest::client_credentials("https://a/t", "c", ClientSecret::new("s"))
            .client_auth(ClientAuth::Post)
            .audience("api")
            .resource("r1")
            .resource("r2")
            .param("assertion", "very-secret")
            .body_format(BodyFormat::Json);
        let r = req.build(&FetchRequest::first()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "grant_type": "client_credentials", "audience": "api",
                "resource": ["r1", "r2"], "assertion": "very-secret",
                "client_id": "c", "client_secret": "s"
            })
        );
        assert_eq!(header(&r, "Content-Type"), Some("application/json"));
        assert!(!format!("{req:?}").contains("very-secret"));
    }
}
