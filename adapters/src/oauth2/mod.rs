//! OAuth2 token sources over HTTP (feature `oauth2`).
//!
//! [`ClientCredentials`] and [`RefreshTokenSource`] are
//! [`TokenSource`](crate::source::TokenSource)s: the pure protocol from
//! [`freshtoken_core::oauth2`] (re-exported as [`core`]) plus an
//! [`HttpTransport`], by default [`UreqTransport`] (ureq 3 with rustls,
//! timeouts, no redirects, a 64 KiB answer cap). Async drivers run them on
//! their blocking pool.
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
//! * **mTLS** (RFC 8705): [`UreqTransport::client_certificate_files`] and
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
pub use transport::{HttpTransport, ProxyError, UreqTransport};
pub use url::{check_token_url, UrlError};
