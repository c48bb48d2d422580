//! tonic (gRPC, feature `tonic`): an [`Interceptor`] that attaches the
//! token as `authorization` metadata, and two ways to replay a call that
//! came back `UNAUTHENTICATED` (grpc-status 16).
//!
//! An interceptor sees the request before it is sent and never the
//! response, and it is synchronous: so [`AuthInterceptor`] attaches the
//! current valid token (the same cached header value as the other
//! middleware) and, when there is none, fails the call at once with
//! `Status::unauthenticated("no valid token ...")` rather than block an
//! executor thread; wait for the first token at start-up
//! ([`TokenHandle::ready`](crate::TokenHandle::ready)).
//!
//! An interceptor sees no URI: a channel talks to the one endpoint it was
//! made for, which is its scope ([`Authorizer::scope`](super::Authorizer::scope)
//! plays no part here), and gRPC has no redirects.
//!
//! Replaying, two ways:
//!
//! * **Around the call** ([`AuthInterceptor::call_with_replay`]): for a
//!   unary call whose request message you still have (buffered), the
//!   closure makes the call; on `UNAUTHENTICATED` the token is invalidated,
//!   a newer one awaited (the [`refresh_wait`](super::Authorizer::refresh_wait)),
//!   and the closure called **once** more. A streaming call is not
//!   replayed (do not wrap it).
//! * **In the channel** ([`AuthLayer::grpc`](super::tower::AuthLayer::grpc)):
//!   the tower layer treats a trailers-only answer with `grpc-status: 16`
//!   as a rejection. It replays requests whose body implements
//!   [`ReplayBody`](super::tower::ReplayBody); tonic's own request body is
//!   an encoding stream that cannot be copied, so with a tonic client the
//!   layer invalidates the token (the next call carries a new one) and
//!   returns the answer, and the replay is the closure's job above.
//!
//! ```no_run
//! use freshtoken::driver::Builder;
//! use freshtoken::middleware::tonic::AuthInterceptor;
//! use freshtoken::source::ConstTokenSource;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (tokens, _driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
//! tokens.ready().await?;
//! let auth = AuthInterceptor::new(tokens);
//! // With a generated client: `GreeterClient::with_interceptor(channel, auth.clone())`, then
//! // let reply = auth.call_with_replay(|| client.clone().say_hello(request.clone())).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use freshtoken_core::TokenId;
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::service::Interceptor;
use tonic::{Code, Status};

use super::{AuthError, Authorizer, Tokens};

/// Attaches `authorization: <token_type> <token>` metadata to every call
/// (see the [module docs](self)). Cheap to clone; clones share the cache.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    auth: Authorizer,
    key: MetadataKey<tonic::metadata::Ascii>,
    cache: Arc<ArcSwapOption<(TokenId, AsciiMetadataValue)>>,
}

impl AuthInterceptor {
    /// With the [`Authorizer`] defaults.
    pub fn new(tokens: impl Into<Tokens>) -> Self {
        Self::with_authorizer(Authorizer::new(tokens))
    }

    /// With a configured [`Authorizer`]; its header name is the metadata
    /// key (lowercase, as gRPC requires).
    pub fn with_authorizer(auth: Authorizer) -> Self {
        let key = MetadataKey::from_bytes(auth.header_name().as_str().as_bytes())
            .unwrap_or_else(|_| MetadataKey::from_static("authorization"));
        AuthInterceptor {
            auth,
            key,
            cache: Arc::new(ArcSwapOption::empty()),
        }
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.auth
    }

    fn value(&self) -> Result<(TokenId, AsciiMetadataValue), AuthError> {
        let credential = self.auth.current()?;
        let id = credential.token_id();
        if let Some(cached) = &*self.cache.load() {
            if cached.0 == id {
                return Ok((cached.0, cached.1.clone()));
            }
        }
        let mut value = AsciiMetadataValue::try_from(credential.header_value().as_bytes())
            .map_err(|_| AuthError::InvalidHeaderValue { token: id })?;
        value.set_sensitive(true);
        self.cache.store(Some(Arc::new((id, value.clone()))));
        Ok((id, value))
    }

    /// Runs `call` (one unary call, with a message it can send again); if
    /// the answer is `UNAUTHENTICATED`, invalidates the token, waits for a
    /// newer one and runs it **once** more. The second answer is returned
    /// whatever it is.
    pub async fn call_with_replay<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        // The token the interceptor will attach (the current one).
        let used = self.auth.current().ok().map(|c| c.token_id());
        let first = call().await;
        let (Err(status), Some(used)) = (&first, used) else {
            return first;
        };
        if status.code() != Code::Unauthenticated {
            return first;
        }
        self.auth.rejected_id(used);
        let Some(newer) = self.auth.replacement_for(used).await else {
            tracing::debug!(token = %used, "no newer token came in time; returning UNAUTHENTICATED");
            return first;
        };
        tracing::debug!(rejected = %used, token = %newer.token_id(), "replaying the call once with a newer token");
        let second = call().await;
        if matches!(&second, Err(s) if s.code() == Code::Unauthenticated) {
            self.auth.rejected_id(newer.token_id());
        }
        second
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        match self.value() {
            Ok((_, value)) => {
                request.metadata_mut().insert(self.key.clone(), value);
                Ok(request)
            }
            Err(e) => Err(Status::unauthenticated(e.to_string())),
        }
    }
}

impl super::tower::ReplayBody for tonic::body::Body {
    /// tonic's body is an encoding stream: never copied.
    fn try_clone(&self) -> Option<Self> {
        None
    }
}
