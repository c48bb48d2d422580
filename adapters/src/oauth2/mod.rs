//! OAuth2 token sources over HTTP (feature `oauth2`, or `oauth2-sources`
//! with a transport of your choice).
//!
//! [`ClientCredentials`] and [`RefreshTokenSource`] are the pure protocol
//! from [`freshtoken_core::oauth2`] plus a transport. By default that is
//! `UreqTransport` (ureq 3 with rustls, timeouts, no redirects, a 64 KiB
//! answer cap; feature `ureq-transport`, part of `oauth2`), and the source
//! is a [`TokenSource`](crate::source::TokenSource), which async drivers
//! run on their blocking pool.
//!
//! # Your own HTTP client
//!
//! [`SourceBuilder::async_transport`] sends over an async client instead:
//! the source is then an [`AsyncTokenSource`](crate::source::AsyncTokenSource)
//! (its type says so: `ClientCredentials<AsyncHttp>`), polled in the
//! driver's task, with no blocking pool and no ureq. `ReqwestTransport`
//! (feature `reqwest-transport`) and `HyperTransport` (feature
//! `hyper-transport`) are built in, each over the client and the TLS your
//! service already uses; [`AsyncHttpTransport`] is the trait for others.
//! A tokio service with reqwest then has one HTTP stack and one TLS
//! provider, its own:
//!
//! ```no_run
//! # #[cfg(all(feature = "tokio", feature = "reqwest-transport"))]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use freshtoken::driver::AsyncSource;
//! use freshtoken::oauth2::{ClientCredentials, ReqwestTransport};
//! use freshtoken::runtime::Tokio;
//! use freshtoken::Builder;
//!
//! let source = ClientCredentials::builder("https://login.example.com/oauth2/token", "my-app", "secret")
//!     .async_transport(ReqwestTransport::new()?)
//!     .build()?;
//! let (tokens, driver) = Builder::new().spawn(Tokio::current()?, AsyncSource(source));
//! # drop(tokens); driver.shutdown().await; Ok(())
//! # }
//! ```
//!
//! Token endpoint URLs must be https, except for loopback hosts
//! (127.0.0.0/8, ::1, `localhost`) so that local test authorities work;
//! [`check_token_url`] is the rule, applied when a source is built and again
//! before each request.
//!
//! Failures come back as [`FetchError`](crate::FetchError)s classified for
//! the machine: network trouble, timeouts, 5xx and 408 are transient; 429 and
//! `slow_down` are rate limits (with the `Retry-After`); a wrong secret,
//! scope or resource is permanent; `invalid_grant` on a refresh is a revoked
//! grant. Messages name the status, the RFC 6749 error code and description,
//! or a short excerpt of the answer with every secret redacted.
//!
//! # Credentials beyond a client secret
//!
//! * **`private_key_jwt`** ([`SourceBuilder::private_key_jwt`] with a
//!   [`SigningKey`]: RS256, PS256 or ES256 from PEM or a JWK) and
//!   **`client_secret_jwt`** ([`SourceBuilder::client_secret_jwt`]): a
//!   client assertion signed for each request, 60 s of life, a random
//!   `jti`, `aud` the token endpoint or ([`Audience::Issuer`]) the issuer.
//! * **Federated workload identity** ([`SourceBuilder::client_assertion_file`],
//!   [`AssertionFile`]): a token that Kubernetes, AKS workload identity
//!   (`AZURE_FEDERATED_TOKEN_FILE`), GKE or EKS write and rotate, re-read for
//!   each request; refusals of a stale one are retried once it is renewed.
//! * **mTLS** (RFC 8705): `UreqTransport::client_certificate_files` (or
//!   your own client's certificate with an async transport) and
//!   [`ClientAuth::TlsClientAuth`] or [`ClientAuth::SelfSignedTlsClientAuth`].
//! * **Discovery** ([`Discovery`], [`ClientCredentials::from_issuer`]): the
//!   token endpoint from the issuer's metadata, whose `issuer` must be
//!   identical to the one configured; cached for a day, the last good
//!   document kept through failures.
//! * **Grants**: [`JwtBearer`] (RFC 7523 2.1, Google service accounts) and
//!   [`TokenExchange`] (RFC 8693, the subject from another handle, a file or
//!   a closure).
//!
//! Entra ID, with workload identity: issuer
//! `https://login.microsoftonline.com/{tenant}/v2.0`, token endpoint
//! `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`,
//! `client_id` the application's id, `client_assertion_type`
//! `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//! `client_assertion` the federated token, `scope`
//! `api://{resource-app-id}/.default`:
//!
//! ```no_run
//! use freshtoken::oauth2::{ClientCredentials, Discovery};
//!
//! let discovery = Discovery::new("https://login.microsoftonline.com/my-tenant-id/v2.0")?;
//! let source = ClientCredentials::from_issuer(discovery, "my-app-client-id")
//!     .client_assertion_file(std::env::var("AZURE_FEDERATED_TOKEN_FILE")?)
//!     .scope("api://my-api/.default")
//!     .build()?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

mod assertion;
pub mod device;
mod discovery;
#[cfg(feature = "dpop")]
mod dpop;
mod grants;
mod signing;
mod source;
mod transport;
mod url;

pub use assertion::{
    AssertionContext, AssertionFile, AssertionFileError, AssertionFn, Audience, JtiGenerator,
    DEFAULT_ASSERTION_LIFETIME, MAX_ASSERTION_FILE_BYTES,
};
pub use discovery::{Discovery, DEFAULT_METADATA_MAX_AGE, DEFAULT_METADATA_RETRY};
// For the middleware, which presents DPoP-bound tokens.
#[cfg(all(
    feature = "dpop",
    any(
        feature = "tower",
        feature = "reqwest-middleware",
        feature = "ureq-middleware",
        feature = "tonic"
    )
))]
pub(crate) use dpop::{token_hash, DpopState};
#[cfg(feature = "dpop")]
pub use dpop::{DpopKey, ProofBuilder, USE_DPOP_NONCE};
pub use freshtoken_core::oauth2::assertion::JwsAlgorithm;
pub use freshtoken_core::oauth2::discovery::{AuthorityMetadata, DiscoveryError};
pub use freshtoken_core::oauth2::{
    BodyFormat, ClientAuth, GrantKind, HttpRequest, HttpResponse, TokenRequest,
};
pub use grants::{
    JwtBearer, TokenExchange, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT,
};
pub use signing::{KeyError, SigningKey};
pub use source::{ClientCredentials, RefreshTokenSource, SourceBuilder};
#[cfg(feature = "hyper-transport")]
pub use transport::HyperTransport;
#[cfg(feature = "reqwest-transport")]
pub use transport::ReqwestTransport;
pub use transport::{AsyncHttp, AsyncHttpTransport, HttpTransport, SyncHttp, TransportKind};
#[cfg(feature = "ureq-transport")]
pub use transport::{ProxyError, UreqTransport};
pub use url::{check_token_url, UrlError};
