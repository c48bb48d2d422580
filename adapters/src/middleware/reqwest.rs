//! A [`reqwest_middleware::Middleware`] for reqwest (feature
//! `reqwest-middleware`).
//!
//! [`AuthMiddleware`] sets the header from the current token and, on a
//! rejection (see [`is_token_rejected`]), replays the request once with a
//! newer token when `reqwest::Request::try_clone` can copy it: every body
//! but a stream (`Body::wrap_stream`), which is sent once and whose `401`
//! goes back to the caller. See the [parent module](super) for the whole
//! behaviour.
//!
//! When no valid token comes within the wait, the request fails with
//! `reqwest_middleware::Error::Middleware` holding an
//! [`AuthError`](super::AuthError); `err.downcast_ref::<AuthError>()` on the inner
//! `anyhow::Error` finds it.
//!
//! ```no_run
//! use freshtoken::driver::Builder;
//! use freshtoken::middleware::reqwest::AuthMiddleware;
//! use freshtoken::source::ConstTokenSource;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (tokens, _driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(AuthMiddleware::new(tokens))
//!     .build();
//! let response = client.get("http://127.0.0.1:8080/orders").send().await?;
//! # drop(response); Ok(()) }
//! ```

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use super::{is_token_rejected, Authorizer, Tokens};

/// Attaches the current token to every request and replays a rejected one
/// once (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct AuthMiddleware {
    auth: Authorizer,
}

impl AuthMiddleware {
    /// With the [`Authorizer`] defaults.
    pub fn new(tokens: impl Into<Tokens>) -> Self {
        Self::with_authorizer(Authorizer::new(tokens))
    }

    /// With a configured [`Authorizer`] (header, scheme, waits).
    pub fn with_authorizer(auth: Authorizer) -> Self {
        AuthMiddleware { auth }
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.auth
    }
}

#[async_trait::async_trait]
impl Middleware for AuthMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let auth = &self.auth;
        let credential = auth
            .credential()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let replay = request.try_clone();
        request
            .headers_mut()
            .insert(auth.header_name().clone(), credential.value.clone());
        let response = next.clone().run(request, extensions).await?;
        if !is_token_rejected(response.status(), response.headers()) {
            return Ok(response);
        }
        auth.rejected(&credential);
        let Some(mut replay) = replay else {
            tracing::debug!(token = %credential.token_id(), "rejected; the body is a stream and cannot be replayed");
            return Ok(response);
        };
        let Some(newer) = auth.replacement(&credential).await else {
            tracing::debug!(token = %credential.token_id(), "no newer token came in time; returning the rejection");
            return Ok(response);
        };
        drop(response);
        replay
            .headers_mut()
            .insert(auth.header_name().clone(), newer.value.clone());
        tracing::debug!(rejected = %credential.token_id(), token = %newer.token_id(), "replaying the request once with a newer token");
        let response = next.run(replay, extensions).await?;
        if is_token_rejected(response.status(), response.headers()) {
            auth.rejected(&newer);
        }
        Ok(response)
    }
}
