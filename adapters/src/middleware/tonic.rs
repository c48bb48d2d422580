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
//!   replayed (do not wrap it). With the tower layer in the channel
//!   instead of the interceptor, [`call_with_replay`] does the same with
//!   the layer's [`Authorizer`].
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
//!
//! # DPoP
//!
//! A DPoP proof (RFC 9449 7) names the request's method and URI (`htm`,
//! `htu`), and an interceptor sees neither. So with DPoP
//! ([`Authorizer::dpop`](super::Authorizer::dpop), feature `dpop`) the
//! tower layer presents the tokens, from **outside** the channel, with a
//! client made **with the endpoint as its origin** (`with_origin`, which
//! every tonic client has): each call's request URI is then the endpoint's
//! URI and the method's path, which is the proof's `htu`; `htm` is `POST`.
//! Each call gets a fresh proof with the token's `ath` and the nonce the
//! endpoint's origin gave last (nonces are kept per origin).
//!
//! * **The interceptor refuses** a DPoP-bound token when its authorizer
//!   has a DPoP key: the call fails with `UNAUTHENTICATED` and
//!   [`AuthError::DpopProof`] in its message, and nothing is sent (a DPoP
//!   token without a proof is never sent as a bearer token). Without a key,
//!   it sends tokens as it always did.
//! * **The layer refuses** a call whose URI is relative (a client made
//!   without `with_origin`): there is no `htu` to sign.
//! * **The nonce challenge.** A resource server asks for its nonce with
//!   `UNAUTHENTICATED` (grpc-status 16, trailers-only) whose metadata holds
//!   `www-authenticate: DPoP error="use_dpop_nonce"` and a `dpop-nonce`.
//!   The layer keeps the nonce for the origin, and does not invalidate the
//!   token; tonic's request body cannot be sent again, so the answer goes
//!   back to the caller, and the **next** call carries the nonce.
//!   [`call_with_replay`] replays such a call once at once (no new token
//!   is awaited and none is fetched); any other `UNAUTHENTICATED` is a
//!   rejection, as without DPoP.
//!
//! ```
//! use freshtoken::middleware::tower::{AuthLayer, AuthService};
//! use freshtoken::middleware::Authorizer;
//! use tonic::client::Grpc;
//! use tower_layer::Layer;
//!
//! /// A gRPC client over `channel` (a `tonic::transport::Channel` to
//! /// `endpoint`) whose calls carry DPoP proofs; `auth` is
//! /// `Authorizer::new(tokens).dpop(key)`.
//! fn dpop_client<C>(channel: C, endpoint: http::Uri, auth: Authorizer) -> Grpc<AuthService<C>> {
//!     let service = AuthLayer::with_authorizer(auth).grpc(true).layer(channel);
//!     // A generated client: `GreeterClient::with_origin(service, endpoint)`.
//!     Grpc::with_origin(service, endpoint)
//! }
//! // Then, a unary call replayed once after a nonce challenge (or a rejection):
//! // call_with_replay(&auth, || client.clone().say_hello(request.clone())).await?;
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
        #[cfg(feature = "dpop")]
        if credential.needs_proof() {
            return Err(AuthError::DpopProof {
                token: id,
                reason: "the tonic interceptor sees no URI to sign a proof for; present DPoP \
                         tokens with the tower layer in the channel (AuthLayer, see \
                         freshtoken::middleware::tonic)"
                    .to_owned(),
            });
        }
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
    /// whatever it is. See [`call_with_replay`].
    pub async fn call_with_replay<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        call_with_replay(&self.auth, call).await
    }
}

/// Runs `call` (one unary call, with a message it can send again, through
/// a client whose token comes from `auth`: the [`AuthInterceptor`]'s, or
/// the [tower layer](super::tower::AuthLayer)'s in the channel) and
/// replays it **once**:
///
/// * after a DPoP nonce challenge (see [DPoP](self#dpop)) at once, with the
///   same token (the layer kept the nonce, and the replay's proof carries
///   it);
/// * after any other `UNAUTHENTICATED`, once a newer token has come
///   (waiting up to the [`refresh_wait`](super::Authorizer::refresh_wait)):
///   the token is invalidated first.
///
/// The answer to the replay is returned whatever it is; there is no loop
/// (a nonce replay that is rejected gets the one replay with a newer
/// token).
pub async fn call_with_replay<T, F, Fut>(auth: &Authorizer, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    // The token the call will carry (the current one).
    let used = auth.current().ok().map(|c| c.token_id());
    let mut first = call().await;
    let Some(used) = used else {
        return first;
    };
    if asks_for_nonce(&first) {
        auth.replaying_with_nonce(used);
        first = call().await;
        if asks_for_nonce(&first) {
            return first;
        }
    }
    let Err(status) = &first else {
        return first;
    };
    if status.code() != Code::Unauthenticated {
        return first;
    }
    auth.rejected_id(used);
    let Some(newer) = auth.replacement_for(used).await else {
        tracing::debug!(token = %used, "no newer token came in time; returning UNAUTHENTICATED");
        return first;
    };
    tracing::debug!(rejected = %used, token = %newer.token_id(), "replaying the call once with a newer token");
    let second = call().await;
    if matches!(&second, Err(s) if s.code() == Code::Unauthenticated) {
        auth.rejected_id(newer.token_id());
    }
    second
}

/// Whether `result` is a resource server's DPoP nonce challenge: an
/// `UNAUTHENTICATED` whose metadata has a DPoP `use_dpop_nonce` challenge
/// and a `dpop-nonce`.
fn asks_for_nonce<T>(result: &Result<T, Status>) -> bool {
    #[cfg(feature = "dpop")]
    if let Err(status) = result {
        let metadata = status.metadata();
        return status.code() == Code::Unauthenticated
            && metadata.contains_key("dpop-nonce")
            && super::nonce_challenge(&metadata.clone().into_headers());
    }
    let _ = result;
    false
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
