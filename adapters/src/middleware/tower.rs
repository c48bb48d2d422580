//! A tower [`Layer`] for `http::Request` clients: hyper-util's client,
//! tonic channels, anything tower-based (feature `tower`).
//!
//! [`AuthLayer`] wraps a service; [`AuthService`] sets the header from the
//! current token and, on a rejection (see [`is_token_rejected`]), replays
//! the request once with a newer token when its body implements
//! [`ReplayBody`] and can be copied (see the [parent module](super) for the
//! whole behaviour). With a [scope](Authorizer::scope), only requests whose
//! (absolute) URI it covers get the token; a tower service follows no
//! redirects unless a `FollowRedirect` layer does, which belongs outside
//! this layer, so that every hop passes through the scope.
//!
//! ```
//! use bytes::Bytes;
//! use freshtoken::driver::Builder;
//! use freshtoken::middleware::tower::AuthLayer;
//! use freshtoken::source::ConstTokenSource;
//! use http_body_util::Full;
//! use tower_layer::Layer;
//! use tower_service::Service;
//! use std::convert::Infallible;
//! use std::future::{ready, Ready};
//! use std::task::{Context, Poll};
//!
//! /// Stands for an HTTP client: answers with the header it was given.
//! #[derive(Clone)]
//! struct Echo;
//! impl Service<http::Request<Full<Bytes>>> for Echo {
//!     type Response = http::Response<String>;
//!     type Error = Infallible;
//!     type Future = Ready<Result<Self::Response, Infallible>>;
//!     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
//!         Poll::Ready(Ok(()))
//!     }
//!     fn call(&mut self, req: http::Request<Full<Bytes>>) -> Self::Future {
//!         let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
//!         ready(Ok(http::Response::new(auth)))
//!     }
//! }
//!
//! # async_io::block_on(async {
//! let (tokens, driver) = Builder::new().spawn_thread(ConstTokenSource::new("key", Some(3600)))?;
//! let mut client = AuthLayer::new(tokens).layer(Echo);
//! let response = client.call(http::Request::new(Full::new(Bytes::from("hi")))).await?;
//! assert_eq!(response.body(), "Bearer key");
//! # drop(client); driver.shutdown_blocking();
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Cost
//!
//! With a valid token the request goes to the inner service from `call`,
//! with no allocation of the layer's own for a body that cannot be replayed.
//! A body that can be replayed is copied first (the request head, a clone
//! of the body, and a clone of the inner service for the replay), because
//! the original is gone once sent. Only the slow paths (no token yet, a
//! rejection) allocate a boxed future.
//!
//! Measured (`cargo bench -p freshtoken --features tower --bench
//! middleware`, around a no-op service): with a one-shot body the layer
//! adds about 480 instructions per request (callgrind) to the 870 of
//! building the request and calling the service, with no allocation; the
//! header insert itself is over a third of them. A replayable body adds
//! about 1,600 (the copy of the head is most of it). With a token from a
//! `TokenManager` key, the counted read adds about 100 more. Each service
//! keeps its own copy of the last credential with the publication counter
//! it was checked at, so a request with an unchanged token reads one
//! atomic counter and nothing else that is shared.
//!
//! # gRPC
//!
//! With [`AuthLayer::grpc`] a response whose headers carry `grpc-status:
//! 16` (UNAUTHENTICATED, the trailers-only answer servers send when
//! authentication fails) counts as a rejection too. A tonic client
//! request's body is tonic's own stream type, which cannot be copied, so
//! replaying a gRPC call needs a body type that implements [`ReplayBody`];
//! with tonic's own body the layer reports the rejected token (so the next
//! call carries a new one) and returns the UNAUTHENTICATED answer.
//!
//! With DPoP, an UNAUTHENTICATED whose headers carry a DPoP
//! `use_dpop_nonce` challenge and a `DPoP-Nonce` is the resource server
//! asking for its nonce, as a `401` is over plain HTTP: the nonce is kept
//! for that origin and the token is not reported; a body that cannot be
//! copied is not replayed, so the answer goes back and the next call
//! carries the nonce. The proof's `htu` is the request's URI, which must be
//! absolute: see [tonic's DPoP](super::tonic#dpop) for the client's
//! `with_origin`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use freshtoken_core::TokenId;

use super::{is_token_rejected, AuthError, Authorizer, Credential, Tokens};

/// A request body that may be copied for a replay.
///
/// Implemented for bodies that are in memory ([`Full`](http_body_util::Full),
/// [`Empty`](http_body_util::Empty), `String`, `Vec<u8>`, `Bytes`, `()`),
/// for [`Either`](http_body_util::Either) (the side it holds decides), and,
/// returning `None`, for streaming and boxed bodies: those are sent once and
/// never replayed.
pub trait ReplayBody: Sized {
    /// A copy of this body, or `None` if it cannot be replayed.
    fn try_clone(&self) -> Option<Self>;
}

macro_rules! replay_by_clone {
    ($($t:ty),*) => {$(
        impl ReplayBody for $t {
            fn try_clone(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}
replay_by_clone!(String, Vec<u8>, Bytes, (), &'static str, &'static [u8]);

impl<D: Clone> ReplayBody for http_body_util::Full<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

impl<L: ReplayBody, R: ReplayBody> ReplayBody for http_body_util::Either<L, R> {
    fn try_clone(&self) -> Option<Self> {
        match self {
            http_body_util::Either::Left(l) => l.try_clone().map(http_body_util::Either::Left),
            http_body_util::Either::Right(r) => r.try_clone().map(http_body_util::Either::Right),
        }
    }
}

impl<S> ReplayBody for http_body_util::StreamBody<S> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

/// Wraps a service in an [`AuthService`].
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Authorizer,
    grpc: bool,
}

impl AuthLayer {
    /// Sets `Authorization` from `tokens` (a handle, or a manager's handle),
    /// with the [`Authorizer`] defaults.
    pub fn new(tokens: impl Into<Tokens>) -> Self {
        Self::with_authorizer(Authorizer::new(tokens))
    }

    /// Uses a configured [`Authorizer`] (header, scheme, waits).
    pub fn with_authorizer(auth: Authorizer) -> Self {
        AuthLayer { auth, grpc: false }
    }

    /// Also treats `grpc-status: 16` (UNAUTHENTICATED) in the response
    /// headers as a rejection.
    pub fn grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.auth
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
            grpc: self.grpc,
            local: None,
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Authorizer,
    grpc: bool,
    /// This service's own copy of the last credential and the publication
    /// it belongs to: `call` has `&mut self`, so while nothing was
    /// published it needs no shared load at all.
    local: Option<(u64, Credential)>,
}

impl<S> AuthService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// What [`AuthService`] fails with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// No request was sent: there was no valid token.
    Auth(AuthError),
    /// The inner service failed.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Auth(e) => e.fmt(f),
            Error::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Auth(e) => Some(e),
            Error::Inner(e) => Some(e),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a replay needs: the service and a copy of the request (head and
/// body), without the credential.
struct Replay<S, B> {
    inner: S,
    request: Request<B>,
}

/// A copy of `request`'s head with `body`. Built field by field, so the
/// original request is not moved (a request head is a few hundred bytes).
fn copy_with<B, C>(request: &Request<B>, body: C) -> Request<C> {
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

/// What replaying `request` through `inner` needs, if its body can be
/// copied.
fn replay_of<S: Clone, B: ReplayBody>(
    inner: &S,
    request: &Request<B>,
) -> Option<Box<Replay<S, B>>> {
    request.body().try_clone().map(|body| {
        Box::new(Replay {
            inner: inner.clone(),
            request: copy_with(request, body),
        })
    })
}

impl<S, B, RB> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody + Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !self.auth.attaches_to(request.uri()) {
            // Outside the authorizer's scope: sent as it is, and its answer
            // says nothing about the token.
            return ResponseFuture {
                state: State::First {
                    fut: self.inner.call(request),
                    retry: None,
                },
            };
        }
        let version = self.auth.read_version();
        let credential = match &self.local {
            Some((seen, c)) if *seen == version => Ok(c.clone()),
            _ => self
                .auth
                .current()
                .inspect(|c| self.local = Some((version, c.clone()))),
        };
        let credential = match credential {
            Ok(c) if !c.needs_proof() => c,
            _ => {
                // Slow path: wait for a token, or sign a DPoP proof, then
                // send, in a boxed future.
                // The ready service goes with it (tower's swap idiom).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let (auth, grpc) = (self.auth.clone(), self.grpc);
                return ResponseFuture {
                    state: State::Slow {
                        fut: Box::pin(send_after_wait(auth, grpc, inner, request)),
                    },
                };
            }
        };
        // Boxed: a one-shot body keeps the future small (nothing to copy),
        // and a replayable one allocates for its copy anyway.
        let replay = replay_of(&self.inner, &request);
        let token = credential.id;
        request
            .headers_mut()
            .insert(self.auth.header_name().clone(), credential.value);
        let fut = self.inner.call(request);
        ResponseFuture {
            state: State::First {
                fut,
                retry: Some(First {
                    auth: self.auth.clone(),
                    grpc: self.grpc,
                    token,
                    replay,
                }),
            },
        }
    }
}

/// What the first attempt keeps for its answer.
struct First<S, B> {
    auth: Authorizer,
    grpc: bool,
    token: TokenId,
    replay: Option<Box<Replay<S, B>>>,
}

/// Sets `credential` (and its DPoP proof, if it needs one) on `request`.
fn attach<B, E>(
    auth: &Authorizer,
    request: &mut Request<B>,
    credential: &Credential,
) -> Result<(), Error<E>> {
    let (method, uri) = (request.method().clone(), request.uri().clone());
    auth.attach(request.headers_mut(), credential, method.as_str(), &uri)
        .map_err(Error::Auth)
}

/// Whether `response`'s headers carry `grpc-status: 16` (UNAUTHENTICATED,
/// a trailers-only answer).
fn grpc_unauthenticated<RB>(response: &Response<RB>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s == "16")
}

fn rejected<RB>(response: &Response<RB>, grpc: bool) -> bool {
    is_token_rejected(response.status(), response.headers())
        || (grpc && grpc_unauthenticated(response))
}

/// [`Authorizer::nonce_requested`] for the answer to a request sent to
/// `uri`.
fn nonce_requested<RB>(
    auth: &Authorizer,
    credential: &Credential,
    uri: &http::Uri,
    response: &Response<RB>,
    grpc: bool,
) -> bool {
    let unauthorized = response.status() == http::StatusCode::UNAUTHORIZED
        || (grpc && grpc_unauthenticated(response));
    auth.nonce_requested(credential, uri, unauthorized, response.headers())
}

async fn send_after_wait<S, B, RB>(
    auth: Authorizer,
    grpc: bool,
    mut inner: S,
    request: Request<B>,
) -> Result<Response<RB>, Error<S::Error>>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody + Send + 'static,
    RB: Send + 'static,
{
    let credential = auth.credential().await.map_err(Error::Auth)?;
    let mut request = request;
    let mut replay = replay_of(&inner, &request);
    attach(&auth, &mut request, &credential)?;
    let uri = request.uri().clone();
    let mut response = inner.call(request).await.map_err(Error::Inner)?;
    if nonce_requested(&auth, &credential, &uri, &response, grpc) {
        // The resource server wants its DPoP nonce: the same token again,
        // with a proof that carries it.
        // A body that cannot be copied is not sent again: the caller gets
        // the challenge, and the next request carries the nonce. Either way
        // the token was not rejected.
        let Some(again) = replay.take() else {
            return Ok(response);
        };
        replay = replay_of(&inner, &again.request);
        let Replay {
            inner: mut again_inner,
            request: mut again,
        } = *again;
        drop(response);
        auth.replaying_with_nonce(credential.token_id());
        attach(&auth, &mut again, &credential)?;
        std::future::poll_fn(|cx| again_inner.poll_ready(cx))
            .await
            .map_err(Error::Inner)?;
        response = again_inner.call(again).await.map_err(Error::Inner)?;
        // Its nonce, if it gives one, is kept; a second challenge goes back
        // to the caller, never a loop and no rejection.
        if nonce_requested(&auth, &credential, &uri, &response, grpc) {
            return Ok(response);
        }
    }
    if !rejected(&response, grpc) {
        return Ok(response);
    }
    auth.rejected(&credential);
    match replay {
        Some(replay) => replay_once(auth, grpc, credential.id, replay, response).await,
        None => Ok(response),
    }
}

/// Waits for a newer token and sends the copy once; the first answer is
/// returned if no newer token comes.
async fn replay_once<S, B, RB>(
    auth: Authorizer,
    grpc: bool,
    rejected_with: TokenId,
    replay: Box<Replay<S, B>>,
    first: Response<RB>,
) -> Result<Response<RB>, Error<S::Error>>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    let Some(credential) = auth.replacement_for(rejected_with).await else {
        tracing::debug!(token = %rejected_with, "no newer token came in time; returning the rejection");
        return Ok(first);
    };
    drop(first);
    let Replay {
        mut inner,
        mut request,
    } = *replay;
    attach(&auth, &mut request, &credential)?;
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Error::Inner)?;
    tracing::debug!(rejected = %rejected_with, token = %credential.token_id(), "replaying the request once with a newer token");
    let uri = request.uri().clone();
    let response = inner.call(request).await.map_err(Error::Inner)?;
    nonce_requested(&auth, &credential, &uri, &response, grpc);
    if rejected(&response, grpc) {
        // Reported, so the next request finds a new token; never replayed
        // again.
        auth.rejected(&credential);
    }
    Ok(response)
}

pin_project_lite::pin_project! {
    /// The future of [`AuthService::call`].
    pub struct ResponseFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<B>>, B> {
        First {
            #[pin]
            fut: S::Future,
            retry: Option<First<S, B>>,
        },
        Slow {
            fut: BoxFuture<Result<S::Response, Error<S::Error>>>,
        },
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Output = Result<Response<RB>, Error<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::First { fut, retry } => {
                    let response = match fut.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Inner(e))),
                        Poll::Ready(Ok(r)) => r,
                    };
                    let Some(first) = retry.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    if !rejected(&response, first.grpc) {
                        return Poll::Ready(Ok(response));
                    }
                    first.auth.rejected_id(first.token);
                    let Some(replay) = first.replay else {
                        tracing::debug!(token = %first.token, "rejected; the body cannot be replayed");
                        return Poll::Ready(Ok(response));
                    };
                    let fut = Box::pin(replay_once(
                        first.auth,
                        first.grpc,
                        first.token,
                        replay,
                        response,
                    ));
                    this.state.set(State::Slow { fut });
                }
                StateProj::Slow { fut } => return fut.as_mut().poll(cx),
            }
        }
    }
}

impl<S: Service<Request<B>>, B> fmt::Debug for ResponseFuture<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
