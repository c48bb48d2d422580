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
//! A rejection counts only when it comes from the origin the token was
//! sent to (the response's final URL): after a redirect to another origin,
//! which reqwest follows without `Authorization`, a `401` says nothing
//! about the token. With a token in another header, build the client with
//! [`redirect_policy`] and call [`AuthMiddleware::redirects_checked`].
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
//!     // Only requests for the API get the token.
//!     .with(AuthMiddleware::with_authorizer(
//!         freshtoken::middleware::Authorizer::new(tokens).scope("http://127.0.0.1:8080")?,
//!     ))
//!     .build();
//! let response = client.get("http://127.0.0.1:8080/orders").send().await?;
//! # drop(response); Ok(()) }
//! ```

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use super::{is_token_rejected, Authorizer, Target, Tokens};

/// Attaches the current token to every request and replays a rejected one
/// once (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct AuthMiddleware {
    auth: Authorizer,
    redirects_checked: bool,
}

impl AuthMiddleware {
    /// With the [`Authorizer`] defaults.
    pub fn new(tokens: impl Into<Tokens>) -> Self {
        Self::with_authorizer(Authorizer::new(tokens))
    }

    /// With a configured [`Authorizer`] (header, scheme, waits, scope).
    pub fn with_authorizer(auth: Authorizer) -> Self {
        AuthMiddleware {
            auth,
            redirects_checked: false,
        }
    }

    /// Says that the client this middleware is installed on never follows
    /// a redirect to another origin: it was built with [`redirect_policy`]
    /// or `reqwest::redirect::Policy::none()`. Needed when the token goes
    /// in a header other than `Authorization` (which reqwest keeps on such
    /// redirects); without it, those requests fail with
    /// [`AuthError::RedirectsUnchecked`](super::AuthError::RedirectsUnchecked)
    /// before anything is sent.
    pub fn redirects_checked(mut self) -> Self {
        self.redirects_checked = true;
        self
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.auth
    }
}

/// A redirect policy that follows redirects within the origin of the
/// request (scheme, host and port), at most 10, and stops at a redirect to
/// another origin: the caller gets that `3xx` answer, and no header of the
/// request, the token's above all, reaches the other origin. Build the
/// client with it when the token goes in a header other than
/// `Authorization` (see [`AuthMiddleware::redirects_checked`]).
///
/// ```
/// use freshtoken::middleware::reqwest::redirect_policy;
///
/// let client = reqwest::Client::builder().redirect(redirect_policy()).build()?;
/// # drop(client);
/// # Ok::<_, reqwest::Error>(())
/// ```
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().map(target);
        if attempt.previous().len() > 10 {
            attempt.error("too many redirects")
        } else if first.is_some_and(|first| first.same_origin(&target(attempt.url()))) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

fn target(url: &reqwest::Url) -> Target<'_> {
    Target::new(
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default(),
        url.path(),
    )
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
        if !auth.covers(|| target(request.url())) {
            // Outside the scope: as it is, and its answer says nothing
            // about the token.
            return next.run(request, extensions).await;
        }
        if auth.header_survives_redirects() && !self.redirects_checked {
            return Err(reqwest_middleware::Error::middleware(
                auth.redirects_unchecked(),
            ));
        }
        let credential = auth
            .credential()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let mut replay = request.try_clone();
        let sent_to = request.url().clone();
        attach(auth, &mut request, &credential)?;
        let mut response = next.clone().run(request, extensions).await?;
        if nonce_requested(auth, &credential, &response) {
            // The resource server wants its DPoP nonce: the same token
            // again, with a proof that carries it.
            // A stream cannot be sent again: the caller gets the challenge,
            // and the next request carries the nonce. Either way the token
            // was not rejected.
            let Some(mut again) = replay.take() else {
                return Ok(response);
            };
            replay = again.try_clone();
            drop(response);
            auth.replaying_with_nonce(credential.token_id());
            attach(auth, &mut again, &credential)?;
            response = next.clone().run(again, extensions).await?;
            // Its nonce, if it gives one, is kept; a second challenge goes
            // back to the caller, never a loop and no rejection.
            if nonce_requested(auth, &credential, &response) {
                return Ok(response);
            }
        }
        if !rejects(&response, &sent_to) {
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
        attach(auth, &mut replay, &newer)?;
        tracing::debug!(rejected = %credential.token_id(), token = %newer.token_id(), "replaying the request once with a newer token");
        let response = next.run(replay, extensions).await?;
        nonce_requested(auth, &newer, &response);
        if rejects(&response, &sent_to) {
            auth.rejected(&newer);
        }
        Ok(response)
    }
}

/// [`Authorizer::nonce_requested`](super::Authorizer::nonce_requested)
/// for `response`: its nonce is the origin's that answered.
fn nonce_requested(
    auth: &super::Authorizer,
    credential: &super::Credential,
    response: &Response,
) -> bool {
    let unauthorized = response.status() == http::StatusCode::UNAUTHORIZED;
    auth.nonce_requested(credential, response.url(), unauthorized, response.headers())
}

/// Sets `credential` (and its DPoP proof, if it needs one) on `request`.
fn attach(
    auth: &super::Authorizer,
    request: &mut Request,
    credential: &super::Credential,
) -> Result<()> {
    let (method, url) = (request.method().clone(), request.url().clone());
    auth.attach(request.headers_mut(), credential, method.as_str(), &url)
        .map_err(reqwest_middleware::Error::middleware)
}

/// Whether `response` rejects the token sent to `sent_to`: a rejection
/// (see [`is_token_rejected`]) from that origin. After a redirect to
/// another origin the answer comes from a server that never saw the token
/// (reqwest strips `Authorization` there, and a checked client does not
/// go there with another header).
fn rejects(response: &Response, sent_to: &reqwest::Url) -> bool {
    is_token_rejected(response.status(), response.headers())
        && target(response.url()).same_origin(&target(sent_to))
}
