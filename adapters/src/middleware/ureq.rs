//! ureq 3 (feature `ureq-middleware`): a [`Middleware`] that attaches the
//! token, and an [`AuthAgent`] that replays a rejected request once.
//!
//! A ureq middleware gets the request with a one-shot body
//! ([`SendBody`]), which it cannot send twice. So the work is split:
//!
//! * [`AuthHeader`] (the middleware) sets the header from the current token
//!   (waiting up to the [`Authorizer::token_wait`] on the calling thread
//!   when there is none, then failing with `ureq::Error::Other` holding an
//!   [`AuthError`](super::AuthError)), and reports a rejection by
//!   invalidating the token it attached. Alone, it gives the caller the
//!   `401` and makes the caller's own retry find a new token.
//! * [`AuthAgent`] wraps an [`Agent`] with that middleware and runs a
//!   closure that builds and sends the request: on a rejection it waits up
//!   to the [`Authorizer::refresh_wait`] for a newer token and calls the
//!   closure **once** more, so any body the closure can build again is
//!   replayed. Send one request per closure.
//!
//! With a [scope](Authorizer::scope), only requests it covers get the
//! token. ureq follows redirects inside the agent, below the middleware,
//! and keeps every header but `Authorization` on them: with the token in
//! another header, [`AuthAgent`] turns the agent's redirects off, and a
//! bare [`AuthHeader`] needs [`AuthHeader::redirects_checked`] on an agent
//! with `max_redirects(0)`.
//!
//! With ureq's default `http_status_as_error(true)` a `401` arrives as
//! `Error::StatusCode(401)`, without its `WWW-Authenticate`; it counts as a
//! rejection. With `http_status_as_error(false)` the challenge is read, and
//! a `401` `insufficient_scope` is not retried (see
//! [`is_token_rejected`]).
//!
//! With [`Authorizer::dpop`], DPoP-bound tokens go with a fresh proof per
//! request, and [`AuthAgent::run`] answers a resource server's
//! `use_dpop_nonce` `401` by running the closure once more, with the same
//! token and a proof that carries the nonce. The middleware reads the
//! challenge and the `DPoP-Nonce` only with `http_status_as_error(false)`:
//! with ureq's default the `401` is an error without headers, taken as a
//! rejection of the token.
//!
//! ```no_run
//! use freshtoken::driver::Builder;
//! use freshtoken::middleware::ureq::AuthAgent;
//! use freshtoken::source::ConstTokenSource;
//!
//! let (tokens, _driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
//! let api = AuthAgent::new(tokens, ureq::Agent::config_builder());
//! let answer = api.run(|agent| agent.post("http://127.0.0.1:8080/orders").send("{\"n\":1}"))?;
//! println!("{}", answer.status());
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

use std::cell::Cell;

use freshtoken_core::TokenId;
use ureq::config::ConfigBuilder;
use ureq::http;
use ureq::middleware::{Middleware, MiddlewareNext};
use ureq::typestate::AgentScope;
use ureq::{Agent, Body, SendBody};

use super::{is_token_rejected, Authorizer, Target, Tokens};

/// What the answer to the last request said about its token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Rejected,
    /// The resource server asked for its DPoP nonce, and gave it.
    NonceRequested,
}

thread_local! {
    /// The token the last request on this thread was sent with, and what
    /// its answer said: how [`AuthAgent`] learns what its middleware did
    /// (ureq runs the middleware on the calling thread).
    static LAST: Cell<Option<(TokenId, Verdict)>> = const { Cell::new(None) };
}

/// A ureq [`Middleware`] that attaches the current token and invalidates
/// it when the API rejects it (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct AuthHeader {
    auth: Authorizer,
    redirects_checked: bool,
}

impl AuthHeader {
    /// With the [`Authorizer`] defaults.
    pub fn new(tokens: impl Into<Tokens>) -> Self {
        Self::with_authorizer(Authorizer::new(tokens))
    }

    /// With a configured [`Authorizer`].
    pub fn with_authorizer(auth: Authorizer) -> Self {
        AuthHeader {
            auth,
            redirects_checked: false,
        }
    }

    /// Says that the agent this middleware is on follows no redirects
    /// (`max_redirects(0)`). Needed when the token goes in a header other
    /// than `Authorization`, which ureq keeps on redirects to other
    /// origins; without it, those requests fail with
    /// [`AuthError::RedirectsUnchecked`](super::AuthError::RedirectsUnchecked)
    /// before anything is sent. [`AuthAgent`] does both itself.
    pub fn redirects_checked(mut self) -> Self {
        self.redirects_checked = true;
        self
    }
}

/// Whether the answer rejects the token sent to `sent_to`: a rejection
/// from that origin. Where the answer came from is the last entry of
/// ureq's redirect history (which [`AuthAgent`] turns on); after a
/// redirect to another origin, which ureq follows without `Authorization`,
/// a `401` says nothing about the token. Without the history (a bare
/// [`AuthHeader`] on an agent that does not save it), and for a `401` that
/// ureq turned into an error, the origin is unknown and the `401` counts.
fn rejected(result: &Result<http::Response<Body>, ureq::Error>, sent_to: &http::Uri) -> bool {
    use ureq::ResponseExt;
    match result {
        Ok(response) => {
            is_token_rejected(response.status(), response.headers())
                && response
                    .get_redirect_history()
                    .and_then(|history| history.last())
                    .is_none_or(|last| Target::of_uri(last).same_origin(&Target::of_uri(sent_to)))
        }
        Err(ureq::Error::StatusCode(401)) => true,
        Err(_) => false,
    }
}

impl Middleware for AuthHeader {
    fn handle(
        &self,
        mut request: http::Request<SendBody>,
        next: MiddlewareNext,
    ) -> Result<http::Response<Body>, ureq::Error> {
        if !self.auth.attaches_to(request.uri()) {
            // Outside the scope: as it is, and its answer says nothing
            // about the token.
            return next.handle(request);
        }
        if self.auth.header_survives_redirects() && !self.redirects_checked {
            return Err(ureq::Error::Other(Box::new(
                self.auth.redirects_unchecked(),
            )));
        }
        let sent_to = request.uri().clone();
        let credential = self
            .auth
            .credential_blocking()
            .map_err(|e| ureq::Error::Other(Box::new(e)))?;
        let method = request.method().clone();
        self.auth
            .attach(
                request.headers_mut(),
                &credential,
                method.as_str(),
                &sent_to,
            )
            .map_err(|e| ureq::Error::Other(Box::new(e)))?;
        let result = next.handle(request);
        let verdict = match &result {
            Ok(r)
                if self.auth.nonce_requested(
                    &credential,
                    &sent_to,
                    r.status() == http::StatusCode::UNAUTHORIZED,
                    r.headers(),
                ) =>
            {
                Verdict::NonceRequested
            }
            _ if rejected(&result, &sent_to) => {
                self.auth.rejected(&credential);
                Verdict::Rejected
            }
            _ => Verdict::Accepted,
        };
        LAST.with(|l| l.set(Some((credential.id, verdict))));
        result
    }
}

/// An [`Agent`] with [`AuthHeader`] that replays a rejected request once
/// (see the [module docs](self)). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuthAgent {
    agent: Agent,
    auth: Authorizer,
}

impl AuthAgent {
    /// An agent from `config` (e.g. `Agent::config_builder()` with your
    /// timeouts) with the middleware added last, and the [`Authorizer`]
    /// defaults.
    pub fn new(tokens: impl Into<Tokens>, config: ConfigBuilder<AgentScope>) -> Self {
        Self::with_authorizer(Authorizer::new(tokens), config)
    }

    /// With a configured [`Authorizer`]. The agent saves its redirect
    /// history (`save_redirect_history(true)`), so that a `401` from
    /// another origin is told from the API's own. When the header is not
    /// `Authorization` (which ureq strips on redirects), the agent follows
    /// no redirects (`max_redirects(0)`): a `3xx` goes back to the caller,
    /// and the token never reaches another origin.
    pub fn with_authorizer(auth: Authorizer, config: ConfigBuilder<AgentScope>) -> Self {
        let mut header = AuthHeader::with_authorizer(auth.clone());
        // The history says which origin answered (see `rejected`).
        let config = config.save_redirect_history(true);
        let config = if auth.header_survives_redirects() {
            header = header.redirects_checked();
            config.max_redirects(0)
        } else {
            config
        };
        let agent = config.middleware(header).build().new_agent();
        AuthAgent { agent, auth }
    }

    /// The agent (its requests carry the token, without the replay).
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Runs `send` (which builds and sends one request with the agent it
    /// is given); if the API rejected the token, waits for a newer one and
    /// runs it once more. The second answer is returned whatever it is.
    pub fn run<F>(&self, send: F) -> Result<http::Response<Body>, ureq::Error>
    where
        F: Fn(&Agent) -> Result<http::Response<Body>, ureq::Error>,
    {
        LAST.with(|l| l.set(None));
        let mut first = send(&self.agent);
        if let Some((used, Verdict::NonceRequested)) = LAST.with(|l| l.get()) {
            // The same token again; the middleware's proof carries the
            // nonce now.
            drop(first);
            self.auth.replaying_with_nonce(used);
            LAST.with(|l| l.set(None));
            first = send(&self.agent);
        }
        let Some((used, Verdict::Rejected)) = LAST.with(|l| l.take()) else {
            return first;
        };
        let Some(newer) = self.auth.replacement_blocking_for(used) else {
            tracing::debug!(token = %used, "no newer token came in time; returning the rejection");
            return first;
        };
        drop(first);
        tracing::debug!(rejected = %used, token = %newer, "replaying the request once with a newer token");
        send(&self.agent)
    }
}

impl Authorizer {
    /// [`replacement_blocking`](Authorizer::replacement_blocking) by id.
    fn replacement_blocking_for(&self, rejected: TokenId) -> Option<TokenId> {
        let check = || self.current().ok().filter(|c| c.id != rejected);
        super::wait_blocking(&self.inner.tokens, self.inner.refresh_wait, check).map(|c| c.id)
    }
}
