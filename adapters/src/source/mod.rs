//! Where tokens come from.
//!
//! A source performs one [`Fetch`](freshtoken_core::Action::Fetch): it asks
//! an authority (or a file, or nothing at all) for a token and classifies
//! any failure as a [`FetchError`]. Sources keep no refresh state of their
//! own: the newest refresh token arrives in the [`FetchRequest`], because the
//! machine, not the source, knows which one is current across a shared cache.
//!
//! # Cloud identity endpoints
//!
//! With the `cloud` feature, three sources ask the identity endpoint of the
//! platform the workload runs on, each speaking its documented protocol:
//! [`GcpMetadata`] (Compute Engine, GKE, Cloud Run), [`AzureManagedIdentity`]
//! (the instance metadata service of Azure VMs, scale sets and AKS nodes)
//! and [`AppServiceIdentity`] (App Service, Functions, Container Apps).
//! They send plain http to exactly the host their protocol documents, or to
//! loopback (see [`CloudIdentityError::Insecure`] and the table in the
//! sources' docs), classify failures as the platform's guidance does, and
//! take the lifetime from the answer as it is: a token the endpoint hands
//! out from its cache with minutes left goes stale after part of *those*
//! minutes, never after part of an hour it no longer has.
//!
//! Those endpoints answer every request with the token they cached until
//! they renew it themselves. The driver, not the source, deals with that:
//! an answer no newer than the token it holds is asked for again after a
//! quarter of that token's remaining life (at least the
//! [refresh floor](crate::Builder::min_refresh_interval), 5 s by default,
//! never past its expiry), and the token is served meanwhile with the
//! status still healthy. A token that arrives with 90 s left is thus asked
//! for again a handful of times before it expires, never as fast as the
//! endpoint can answer.

use std::future::Future;
use std::sync::Arc;

use freshtoken_core::{AccessToken, FetchError, RefreshToken};
pub use freshtoken_core::{FetchRequest, TokenResponse};

/// A blocking token source. Async drivers run it on their blocking pool.
///
/// ```
/// use freshtoken::source::{FnSource, TokenSource};
/// use freshtoken::AccessToken;
/// use freshtoken::source::{FetchRequest, TokenResponse};
///
/// let source = FnSource::new(|_req: &FetchRequest| {
///     Ok(TokenResponse::new(AccessToken::new("t")).with_expires_in(Some(60)))
/// });
/// let resp = source.fetch(&FetchRequest::first()).unwrap();
/// assert_eq!(resp.expires_in, Some(60));
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a token. Must not panic on bad input from the network.
    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError>;

    /// The refresh token the driver starts from, for a refresh-token
    /// grant (default: none). The driver asks once, at spawn; after that
    /// the newest refresh token arrives in each [`FetchRequest`].
    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        None
    }

    /// What this source's tokens are for, when it knows: the token URL,
    /// client id, scope, audience and resources it asks for. The driver
    /// binds its cache's records to the key's
    /// [`config_id`](crate::TokenKey::config_id), so that a record made
    /// for another configuration is never adopted (see
    /// [`cache`](crate::cache#records-bound-to-their-configuration)). The
    /// OAuth2 sources say it; the default, `None`, binds nothing unless
    /// the builder is given one
    /// ([`Builder::cache_config`](crate::Builder::cache_config)).
    fn token_key(&self) -> Option<crate::TokenKey> {
        None
    }
}

/// An async token source; its futures must be `Send`.
///
/// ```
/// use freshtoken::source::AsyncTokenSource;
/// use freshtoken::{AccessToken, FetchError};
/// use freshtoken::source::{FetchRequest, TokenResponse};
///
/// /// A source that asks a sidecar over an async client (here: a constant).
/// struct Sidecar;
///
/// impl AsyncTokenSource for Sidecar {
///     async fn fetch(&self, _request: &FetchRequest) -> Result<TokenResponse, FetchError> {
///         Ok(TokenResponse::new(AccessToken::new("from-sidecar")).with_expires_in(Some(300)))
///     }
/// }
///
/// let answer = futures::executor::block_on(Sidecar.fetch(&FetchRequest::first())).unwrap();
/// assert_eq!(answer.expires_in, Some(300));
/// ```
pub trait AsyncTokenSource: Send + Sync + 'static {
    /// Fetches a token.
    fn fetch(
        &self,
        request: &FetchRequest,
    ) -> impl Future<Output = Result<TokenResponse, FetchError>> + Send;

    /// The refresh token the driver starts from (default: none); see
    /// [`TokenSource::initial_refresh_token`].
    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        None
    }

    /// What this source's tokens are for, when it knows (default: none);
    /// see [`TokenSource::token_key`].
    fn token_key(&self) -> Option<crate::TokenKey> {
        None
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Arc<T> {
    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        (**self).fetch(request)
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        (**self).initial_refresh_token()
    }

    fn token_key(&self) -> Option<crate::TokenKey> {
        (**self).token_key()
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Box<T> {
    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        (**self).fetch(request)
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        (**self).initial_refresh_token()
    }

    fn token_key(&self) -> Option<crate::TokenKey> {
        (**self).token_key()
    }
}

/// A source that always returns the same token, e.g. a long-lived API key
/// or a token injected by the platform.
///
/// ```
/// use freshtoken::source::{ConstTokenSource, TokenSource};
/// use freshtoken::source::FetchRequest;
///
/// let s = ConstTokenSource::new("api-key", Some(86_400));
/// assert_eq!(s.fetch(&FetchRequest::first()).unwrap().access_token.expose_secret(), "api-key");
/// ```
#[derive(Clone, Debug)]
pub struct ConstTokenSource {
    token: AccessToken,
    expires_in: Option<i64>,
}

impl ConstTokenSource {
    /// A source for `token`, reported to live `expires_in` seconds (`None`:
    /// the lifetime policy's default, re-read at each refresh).
    pub fn new(token: impl Into<String>, expires_in: Option<i64>) -> Self {
        ConstTokenSource {
            token: AccessToken::new(token.into()),
            expires_in,
        }
    }
}

impl TokenSource for ConstTokenSource {
    fn fetch(&self, _request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        Ok(TokenResponse::new(self.token.clone()).with_expires_in(self.expires_in))
    }
}

/// A source made from a closure.
///
/// ```
/// use freshtoken::source::{FnSource, TokenSource};
/// use freshtoken::{AccessToken, FetchError};
/// use freshtoken::source::{FetchRequest, TokenResponse};
///
/// // e.g. a token that a platform writes to a file; here, a failing one.
/// let source = FnSource::new(|request: &FetchRequest| -> Result<TokenResponse, FetchError> {
///     Err(FetchError::transient(format!("not there yet (attempt {})", request.attempt)))
/// });
/// assert!(source.fetch(&FetchRequest::first()).is_err());
/// ```
pub struct FnSource<F> {
    f: F,
    initial: Option<RefreshToken>,
}

impl<F> FnSource<F>
where
    F: Fn(&FetchRequest) -> Result<TokenResponse, FetchError> + Send + Sync + 'static,
{
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        FnSource { f, initial: None }
    }

    /// The refresh token the driver starts from, for a closure that runs
    /// a refresh-token grant (it then finds the newest refresh token in
    /// each request).
    pub fn refresh_token(mut self, refresh_token: RefreshToken) -> Self {
        self.initial = Some(refresh_token);
        self
    }
}

impl<F> std::fmt::Debug for FnSource<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnSource")
    }
}

impl<F> TokenSource for FnSource<F>
where
    F: Fn(&FetchRequest) -> Result<TokenResponse, FetchError> + Send + Sync + 'static,
{
    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        (self.f)(request)
    }

    fn initial_refresh_token(&self) -> Option<RefreshToken> {
        self.initial.clone()
    }
}

#[cfg(feature = "file")]
mod file;
#[cfg(feature = "file")]
pub use file::{FileFormat, FileSource, FileToken, FileWatch};

#[cfg(feature = "cloud")]
mod azure_identity;
#[cfg(feature = "cloud")]
mod gcp_metadata;
#[cfg(feature = "cloud")]
mod metadata_http;
#[cfg(feature = "cloud")]
pub use azure_identity::{
    AppServiceIdentity, AppServiceIdentityBuilder, AzureManagedIdentity,
    AzureManagedIdentityBuilder, APP_SERVICE_API_VERSION, AZURE_IMDS_API_VERSION,
    AZURE_IMDS_ENDPOINT,
};
#[cfg(feature = "cloud")]
pub use gcp_metadata::{
    GcpMetadata, GcpMetadataBuilder, GCE_METADATA_DEFAULT_HOST, GCE_METADATA_HOST_ENV,
};
#[cfg(feature = "cloud")]
pub use metadata_http::CloudIdentityError;
