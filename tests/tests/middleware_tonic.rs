//! tonic: the interceptor and its replay around a unary call, and the
//! tower layer in a channel, with a real tonic client (Channel over HTTP/2)
//! against a real gRPC server (hyper, HTTP/2, on loopback) that checks
//! tokens with a real LocalAuthority and answers UNAUTHENTICATED
//! (trailers-only, grpc-status 16) to a revoked one; and DPoP through the
//! tower layer in the channel, against a gRPC resource server that
//! validates every proof as the HTTP one of `middleware_dpop` does.

#[path = "middleware_support/dpop_server.rs"]
mod dpop_server;
mod dpop_support;
mod middleware_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use freshtoken::driver::{Builder, DriverHandle};
use freshtoken::middleware::tonic::AuthInterceptor;
use freshtoken::middleware::tower::AuthLayer;
use freshtoken::middleware::Authorizer;
use freshtoken::runtime::Tokio;
use freshtoken::testing::{Fault, FaultWindow, LocalAuthority};
use freshtoken::{TokenHandle, TokenId};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use middleware_support::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::Layer;

/// Messages as raw bytes: no protobuf code generation needed.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What the gRPC server saw: the path, the token's id, the grpc-status.
type Calls = Arc<Mutex<Vec<(String, Option<TokenId>, u8)>>>;

/// `/test.Echo/Say` echoes the message to a valid token;
/// `/test.Echo/Always16` answers UNAUTHENTICATED whatever the token.
async fn grpc_server(authority: Arc<LocalAuthority>) -> (SocketAddr, Calls) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (authority, seen) = (authority.clone(), seen.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (authority, seen) = (authority.clone(), seen.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let token = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .map(str::to_owned);
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let valid = token
                                .as_deref()
                                .is_some_and(|t| authority.validate_access_token(t).is_ok());
                            let ok = valid && path == "/test.Echo/Say";
                            seen.lock().unwrap().push((
                                path,
                                token.as_deref().map(|t| TokenId::of(t.as_bytes())),
                                if ok { 0 } else { 16 },
                            ));
                            let response = grpc_answer(if ok {
                                Ok(body)
                            } else {
                                Err(vec![
                                    ("grpc-message", "invalid token".to_owned()),
                                    (
                                        "www-authenticate",
                                        "Bearer error=\"invalid_token\"".to_owned(),
                                    ),
                                ])
                            });
                            Ok::<_, Infallible>(response)
                        }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    (addr, calls)
}

type GrpcBody = http_body_util::Either<
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
    Full<Bytes>,
>;

/// A gRPC answer: `Ok`, the framed message back then `grpc-status: 0` in
/// trailers; `Err`, a trailers-only UNAUTHENTICATED (grpc-status 16, as
/// servers reject authentication) with these headers.
fn grpc_answer(result: Result<Bytes, Vec<(&'static str, String)>>) -> http::Response<GrpcBody> {
    let response = http::Response::builder().header("content-type", "application/grpc");
    match result {
        Ok(body) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
            response
                .body(http_body_util::Either::Left(StreamBody::new(
                    futures::stream::iter(frames),
                )))
                .unwrap()
        }
        Err(headers) => {
            let mut response = response.header("grpc-status", "16");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response
                .body(http_body_util::Either::Right(Full::new(Bytes::new())))
                .unwrap()
        }
    }
}

async fn setup(
    invalidate_interval: Duration,
) -> (
    Arc<LocalAuthority>,
    SocketAddr,
    Calls,
    Channel,
    TokenHandle,
    DriverHandle,
) {
    logs();
    let authority = authority();
    let (addr, calls) = grpc_server(authority.clone()).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new()
        .invalidate_interval(invalidate_interval)
        .spawn(Tokio::current().expect("a tokio runtime"), source);
    tokens.ready().await.unwrap();
    (authority, addr, calls, channel, tokens, driver)
}

async fn say<T>(
    grpc: &tonic::client::Grpc<T>,
    path: &'static str,
    msg: &'static str,
) -> Result<Bytes, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut grpc = grpc.clone();
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    grpc.unary(
        tonic::Request::new(Bytes::from_static(msg.as_bytes())),
        PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interceptor_attaches_the_token_and_the_replay_survives_a_revocation() {
    let (authority, _addr, calls, channel, tokens, driver) = setup(Duration::from_secs(5)).await;
    let auth = AuthInterceptor::new(tokens.clone());
    let grpc = tonic::client::Grpc::new(InterceptedService::new(channel, auth.clone()));
    assert_eq!(say(&grpc, "/test.Echo/Say", "one").await.unwrap(), "one");

    authority.revoke_access_tokens();
    let reply = auth
        .call_with_replay(|| say(&grpc, "/test.Echo/Say", "two"))
        .await
        .unwrap();
    assert_eq!(reply, "two");
    let seen = calls.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!((seen[1].2, seen[2].2), (16, 0));
    assert_ne!(seen[1].1, seen[2].1, "the replay carried a new token");
    assert_eq!(authority.request_count(), 2);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_is_rejected_again_returns_unauthenticated_after_one_retry() {
    let (_authority, _addr, calls, channel, tokens, driver) =
        setup(Duration::from_millis(100)).await;
    let auth = AuthInterceptor::new(tokens.clone());
    let grpc = tonic::client::Grpc::new(InterceptedService::new(channel, auth.clone()));
    let err = auth
        .call_with_replay(|| say(&grpc, "/test.Echo/Always16", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let seen = calls.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[0].1, seen[1].1);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_on_a_revoked_token_cause_one_refresh() {
    let (authority, _addr, calls, channel, tokens, driver) = setup(Duration::from_secs(5)).await;
    let auth = AuthInterceptor::new(tokens.clone());
    let grpc = tonic::client::Grpc::new(InterceptedService::new(channel, auth.clone()));
    authority.revoke_access_tokens();
    let before = authority.request_count();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (auth, grpc) = (auth.clone(), grpc.clone());
        tasks.push(tokio::spawn(async move {
            auth.call_with_replay(|| say(&grpc, "/test.Echo/Say", "x"))
                .await
                .is_ok()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    let authority_requests = authority.request_count() - before;
    let seen = calls.lock().unwrap().clone();
    let rejected = seen.iter().filter(|c| c.2 == 16).count();
    let replayed = seen.iter().filter(|c| c.2 == 0).count();
    println!("tonic: 50 concurrent calls on a revoked token: {rejected} rejected, {replayed} replayed, {authority_requests} authority request(s)");
    assert_eq!(authority_requests, 1, "one refresh for all the rejections");
    // Every request succeeded once; each rejected one was replayed once (a
    // request that started after the new token arrived needed no replay).
    assert_eq!(replayed, 50);
    assert!((1..=50).contains(&rejected));
    assert_eq!(
        seen.len(),
        50 + rejected,
        "no request was sent more than twice"
    );
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_in_a_channel_reports_unauthenticated_and_does_not_replay_a_stream() {
    let (authority, _addr, calls, channel, tokens, driver) = setup(Duration::from_secs(5)).await;
    let grpc = tonic::client::Grpc::new(AuthLayer::new(tokens.clone()).grpc(true).layer(channel));
    assert_eq!(say(&grpc, "/test.Echo/Say", "one").await.unwrap(), "one");
    let old = tokens.token().unwrap().id();
    authority.revoke_access_tokens();
    let err = say(&grpc, "/test.Echo/Say", "two").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "tonic's body is a stream: not replayed"
    );
    // The rejected token was reported: a new one comes, and the next call works.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokens.token().map(|t| t.id()) == Some(old) {
            tokens.changed().await.unwrap();
        }
    })
    .await
    .expect("a new token after the report");
    assert_eq!(
        say(&grpc, "/test.Echo/Say", "three").await.unwrap(),
        "three"
    );
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_interceptor_fails_the_call_and_sends_nothing() {
    logs();
    let authority = authority();
    authority.add_fault(
        Fault::Unavailable { retry_after: None },
        FaultWindow::NextRequests(u32::MAX),
    );
    let (addr, calls) = grpc_server(authority.clone()).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);
    let auth = AuthInterceptor::with_authorizer(Authorizer::new(tokens.clone()));
    let grpc = tonic::client::Grpc::new(InterceptedService::new(channel, auth));
    let err = say(&grpc, "/test.Echo/Say", "x").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("no valid token"),
        "{}",
        err.message()
    );
    assert!(!format!("{err:?}").contains(CLIENT_SECRET));
    assert!(
        calls.lock().unwrap().is_empty(),
        "nothing sent without a token"
    );
    driver.shutdown().await;
}

/// A gRPC resource server (hyper, HTTP/2) that checks DPoP on every call
/// (`dpop_server::check`, with `htu` = this endpoint and the method's
/// path, `htm` = POST) and echoes the message; it refuses with a
/// trailers-only UNAUTHENTICATED carrying the DPoP challenge (and its
/// nonce, for `use_dpop_nonce`).
async fn dpop_grpc_server() -> (String, Arc<Mutex<dpop_server::State>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(dpop_server::State::default()));
    let (shared, base) = (state.clone(), endpoint.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (state, base) = (shared.clone(), base.clone());
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (state, base) = (state.clone(), base.clone());
                    async move {
                        let (checked, body) = dpop_server::check_request(&state, &base, req).await;
                        let response = grpc_answer(checked.map(|()| body).map_err(|refusal| {
                            let challenge = dpop_server::challenge(refusal.error);
                            let nonce = refusal.nonce.map(|n| ("dpop-nonce", n));
                            [("www-authenticate", challenge)]
                                .into_iter()
                                .chain(nonce)
                                .collect()
                        }));
                        Ok::<_, Infallible>(response)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (endpoint, state)
}

mod dpop {
    use super::*;
    use dpop_server::{assert_nothing_secret, bound_driver, State};
    use freshtoken::middleware::tonic::call_with_replay;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The DPoP gRPC server's endpoint and state, a channel to it, and an
    /// authorizer with the key its tokens are bound to.
    type Setup = (
        String,
        Arc<Mutex<State>>,
        Channel,
        Authorizer,
        TokenHandle,
        DriverHandle,
        Arc<AtomicUsize>,
    );

    async fn setup() -> Setup {
        logs();
        let (endpoint, state) = dpop_grpc_server().await;
        let channel = Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (key, tokens, driver, fetches) = bound_driver().await;
        let auth = Authorizer::new(tokens.clone()).dpop(key);
        (endpoint, state, channel, auth, tokens, driver, fetches)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_layer_presents_a_proof_per_call_and_the_nonce_reaches_the_next_call() {
        let (endpoint, state, channel, auth, tokens, driver, fetches) = setup().await;
        let service = AuthLayer::with_authorizer(auth.clone())
            .grpc(true)
            .layer(channel);
        let grpc = tonic::client::Grpc::with_origin(service, endpoint.parse().unwrap());

        // The first call learns the nonce: tonic's body cannot be sent
        // again, so the challenge comes back, and the token stays.
        let challenge = say(&grpc, "/test.Echo/Say", "one").await.unwrap_err();
        assert_eq!(challenge.code(), Code::Unauthenticated);
        assert!(challenge.metadata().contains_key("dpop-nonce"));
        for msg in ["two", "three"] {
            assert_eq!(say(&grpc, "/test.Echo/Say", msg).await.unwrap(), msg);
        }
        {
            let s = state.lock().unwrap();
            assert_eq!(s.refused, Vec::<String>::new());
            assert_eq!(s.statuses, [401, 200, 200]);
            assert_eq!(s.challenges, 1);
            assert_eq!(s.jtis.len(), 3, "a fresh proof per call");
            let htu = format!("{endpoint}/test.Echo/Say");
            assert_eq!(s.htus, [htu.clone(), htu]);
        }
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "the challenge invalidated nothing"
        );

        // A new nonce: `call_with_replay` replays at once, same token.
        state.lock().unwrap().nonce_counter += 1;
        let reply = call_with_replay(&auth, || say(&grpc, "/test.Echo/Say", "four")).await;
        assert_eq!(reply.unwrap(), "four");
        assert_eq!(state.lock().unwrap().statuses[3..], [401, 200]);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // A revoked token: a rejection, replayed with a new token and proof.
        {
            let mut s = state.lock().unwrap();
            let tokens: Vec<String> = s.tokens.iter().cloned().collect();
            s.revoked.extend(tokens);
        }
        let reply = call_with_replay(&auth, || say(&grpc, "/test.Echo/Say", "five")).await;
        assert_eq!(reply.unwrap(), "five");
        {
            let s = state.lock().unwrap();
            assert_eq!(s.statuses[5..], [401, 200]);
            assert_eq!(s.refused, ["revoked"]);
            assert_eq!(s.jtis.len(), 7, "a fresh proof per request sent");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        println!(
            "tonic with DPoP: 7 requests, {} proofs",
            state.lock().unwrap().jtis.len()
        );

        {
            let s = state.lock().unwrap();
            assert_nothing_secret(&s, "the logs", &logs().lock().unwrap().clone());
            let current = auth.current().unwrap();
            let debug = format!("{auth:?} {grpc:?} {challenge:?} {current:?}");
            assert_nothing_secret(&s, "Debug", &debug);
        }
        drop((grpc, auth, tokens));
        driver.shutdown().await;
    }

    /// The interceptor cannot sign a proof (it sees no URI): with a DPoP
    /// key and a DPoP-bound token it fails the call and sends nothing; so
    /// does the layer for a client without the endpoint as its origin.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_without_a_proof_is_refused_before_it_is_sent() {
        let (_, state, channel, auth, tokens, driver, _) = setup().await;
        let intercepted = tonic::client::Grpc::new(InterceptedService::new(
            channel.clone(),
            AuthInterceptor::with_authorizer(auth.clone()),
        ));
        let err = say(&intercepted, "/test.Echo/Say", "x").await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("tower layer"), "{}", err.message());

        let relative = tonic::client::Grpc::new(
            AuthLayer::with_authorizer(auth.clone())
                .grpc(true)
                .layer(channel),
        );
        let err = say(&relative, "/test.Echo/Say", "x").await.unwrap_err();
        assert!(err.message().contains("with_origin"), "{}", err.message());
        assert_eq!(
            state.lock().unwrap().statuses,
            Vec::<u16>::new(),
            "nothing sent"
        );

        let token = tokens.token().unwrap();
        let text = format!("{err:?} {} {}", err.message(), logs().lock().unwrap());
        assert!(!text.contains(token.access_token().expose_secret()));
        drop((intercepted, relative, auth, tokens));
        driver.shutdown().await;
    }
}
