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

mod assertion;
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
/// The pure protocol types from `freshtoken-core`.
pub use freshtoken_core::oauth2 as core;
pub use freshtoken_core::oauth2::discovery::{AuthorityMetadata, DiscoveryError};
pub use freshtoken_core::oauth2::{BodyFormat, ClientAuth, GrantKind, TokenRequest};
pub use grants::{
    JwtBearer, TokenExchange, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT,
};
pub use signing::{KeyError, SigningKey};
pub use source::{ClientCredentials, RefreshTokenSource, SourceBuilder};
pub use transport::{HttpTransport, UreqTransport};
pub use url::{check_token_url, UrlError};
