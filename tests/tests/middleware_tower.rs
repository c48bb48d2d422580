//! The tower layer around hyper-util's real client, against a real API
//! (hyper on loopback) that checks tokens with a real LocalAuthority and
//! revokes them mid-run.

mod middleware_support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use freshtoken::driver::{Builder, DriverHandle};
use freshtoken::middleware::tower::{AuthLayer, Error};
use freshtoken::middleware::{AuthError, Authorizer};
use freshtoken::runtime::Tokio;
use freshtoken::testing::{Fault, FaultWindow};
use freshtoken::{Clock, TokenHandle};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use middleware_support::*;
use tower::{Layer, Service, ServiceExt};

type Chunks = futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type Body = Either<Full<Bytes>, StreamBody<Chunks>>;
type Http = Client<HttpConnector, Body>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn full(body: &'static str) -> Body {
    Either::Left(Full::new(Bytes::from_static(body.as_bytes())))
}

fn streaming(body: &'static str) -> Body {
    let chunks = vec![Ok(Frame::data(Bytes::from_static(body.as_bytes())))];
    Either::Right(StreamBody::new(futures::stream::iter(chunks)))
}

fn post(api: &Api, path: &str, body: Body) -> http::Request<Body> {
    http::Request::post(api.url(path)).body(body).unwrap()
}

async fn setup(invalidate_interval: Duration) -> (Api, TokenHandle, DriverHandle) {
    logs();
    let authority = authority();
    let api = Api::start(authority.clone()).await;
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new()
        .invalidate_interval(invalidate_interval)
        .spawn(Tokio::current().expect("a tokio runtime"), source);
    tokens.ready().await.unwrap();
    (api, tokens, driver)
}

async fn status_and_body(
    client: &mut (impl Service<
        http::Request<Body>,
        Response = http::Response<hyper::body::Incoming>,
        Error = Error<hyper_util::client::legacy::Error>,
    > + Clone),
    request: http::Request<Body>,
) -> (u16, Vec<u8>) {
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_and_the_request_replayed_once() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let mut client = AuthLayer::new(tokens.clone()).layer(http());

    let (status, body) = status_and_body(&mut client, post(&api, "/orders", full("one"))).await;
    assert_eq!((status, body.as_slice()), (200, &b"one"[..]));
    assert_eq!(api.authority.request_count(), 1);

    assert_eq!(api.authority.revoke_access_tokens(), 1);
    let (status, body) = status_and_body(&mut client, post(&api, "/orders", full("two"))).await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"two"[..]),
        "replayed, body intact"
    );

    let seen = api.seen();
    assert_eq!(
        seen.len(),
        3,
        "one request, then one rejected and one replay"
    );
    assert_eq!(seen[1].status, 401);
    assert_eq!(seen[2].status, 200);
    assert_eq!(seen[2].body, b"two");
    assert_ne!(
        seen[1].token, seen[2].token,
        "the replay carried a new token"
    );
    assert_eq!(seen[0].token, seen[1].token);
    assert_eq!(api.authority.request_count(), 2, "one refresh");
    assert_logs_clean(&api);
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_is_rejected_again_returns_that_401_after_exactly_one_retry() {
    let (api, tokens, driver) = setup(Duration::from_millis(100)).await;
    let mut client = AuthLayer::new(tokens.clone()).layer(http());

    let (status, _) = status_and_body(&mut client, post(&api, "/always-401", full("x"))).await;
    assert_eq!(status, 401);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "the request and exactly one retry: {seen:?}");
    assert_ne!(seen[0].token, seen[1].token, "the retry had a newer token");
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_on_a_revoked_token_cause_one_refresh() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let client = AuthLayer::new(tokens.clone()).layer(http());
    api.authority.revoke_access_tokens();
    // Every request gets its 401 before any of them is answered.
    api.hold_rejections(50);
    let before = api.authority.request_count();

    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = client.clone();
        let request = post(
            &api,
            "/orders",
            full(if i % 2 == 0 { "even" } else { "odd" }),
        );
        tasks.push(tokio::spawn(async move {
            status_and_body(&mut client, request).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let authority_requests = api.authority.request_count() - before;
    let seen = api.seen();
    let rejected = seen.iter().filter(|s| s.status == 401).count();
    let replayed = seen.iter().filter(|s| s.status == 200).count();
    println!("tower: 50 concurrent requests on a revoked token: {rejected} rejected, {replayed} replayed, {authority_requests} authority request(s)");
    assert_eq!(authority_requests, 1, "one refresh for all the rejections");
    assert_eq!(
        (rejected, replayed),
        (50, 50),
        "each rejected once, replayed once"
    );
    assert_logs_clean(&api);
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_is_not_replayed_but_its_token_is_replaced() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let mut client = AuthLayer::new(tokens.clone()).layer(http());
    let old = tokens.token().unwrap().id();
    api.authority.revoke_access_tokens();

    let (status, _) = status_and_body(&mut client, post(&api, "/upload", streaming("chunk"))).await;
    assert_eq!(status, 401, "the caller gets the 401");
    assert_eq!(api.seen_count(), 1, "a stream is sent once");

    // The rejected token was reported: a new one comes, and the caller's
    // own retry carries it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokens.token().map(|t| t.id()) == Some(old) {
            tokens.changed().await.unwrap();
        }
    })
    .await
    .expect("a new token after the report");
    let (status, _) = status_and_body(&mut client, post(&api, "/upload", streaming("chunk"))).await;
    assert_eq!(status, 200);
    assert_eq!(api.authority.request_count(), 2);
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_scope_is_not_retried() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let mut client = AuthLayer::new(tokens.clone()).layer(http());
    let (status, _) = status_and_body(&mut client, post(&api, "/admin", full("x"))).await;
    assert_eq!(status, 403);
    assert_eq!(api.seen_count(), 1);
    assert_eq!(api.authority.request_count(), 1, "no refresh for a 403");
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_revocation_after_the_new_token_causes_a_second_refresh() {
    // With a 200 ms invalidation interval, the second report (well within
    // the 10 s refresh wait) is honoured once the interval has passed.
    let (api, tokens, driver) = setup(Duration::from_millis(200)).await;
    let mut client = AuthLayer::new(tokens.clone()).layer(http());
    for round in 1..=2 {
        api.authority.revoke_access_tokens();
        let (status, _) = status_and_body(&mut client, post(&api, "/orders", full("x"))).await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(api.authority.request_count(), 1 + round);
    }
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_token_fails_typed_after_the_wait_and_sends_nothing() {
    logs();
    let authority = authority();
    authority.add_fault(
        Fault::Unavailable { retry_after: None },
        FaultWindow::NextRequests(u32::MAX as _),
    );
    let api = Api::start(authority.clone()).await;
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);
    let auth = Authorizer::new(tokens.clone()).token_wait(Duration::from_millis(300));
    let mut client = AuthLayer::with_authorizer(auth).layer(http());

    let err = client
        .ready()
        .await
        .unwrap()
        .call(post(&api, "/orders", full("x")))
        .await
        .unwrap_err();
    let Error::Auth(AuthError::NoValidToken { waited, .. }) = &err else {
        panic!("expected NoValidToken, got {err:?}");
    };
    assert!(*waited >= Duration::from_millis(300));
    assert_eq!(api.seen_count(), 0, "never sent without a token");
    let text = format!("{err} {err:?}");
    assert!(text.contains("no valid token"), "{text}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_of_layer_service_and_errors_shows_no_token() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let auth = Authorizer::new(tokens.clone());
    let credential = auth.current().unwrap();
    let layer = AuthLayer::with_authorizer(auth.clone());
    let mut client = layer.layer(http());
    status_and_body(&mut client, post(&api, "/orders", full("x"))).await;
    let text = format!(
        "{auth:?} {credential:?} {layer:?} {:?} {:?}",
        credential.header_value(),
        tokens
    );
    assert_no_secret(&api, "Debug", &text);
    let _ = Arc::new(());
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_never_sent_even_from_the_layers_cache() {
    logs();
    let authority = Arc::new(
        freshtoken::testing::LocalAuthority::builder()
            .client(CLIENT, CLIENT_SECRET)
            .token_lifetime(Duration::from_millis(1200))
            .start()
            .unwrap(),
    );
    let api = Api::start(authority.clone()).await;
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);
    let first = tokens.ready().await.unwrap();
    let expires_at = first.expires_at();
    drop(first);
    // From now on the authority is down: no token will replace this one.
    authority.add_fault(
        Fault::Unavailable { retry_after: None },
        FaultWindow::NextRequests(u32::MAX),
    );
    let auth = Authorizer::new(tokens.clone()).token_wait(Duration::ZERO);
    let mut client = AuthLayer::with_authorizer(auth).layer(http());
    let (status, _) = status_and_body(&mut client, post(&api, "/orders", full("x"))).await;
    assert_eq!(
        status, 200,
        "the cached credential while the token is valid"
    );

    // Past expiry (the driver publishes it, which clears the cache).
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokens.valid_token().is_ok() {
            tokens.changed().await.unwrap();
        }
    })
    .await
    .expect("the token expires");
    assert!(freshtoken::SystemClock.now() >= expires_at);
    let err = client
        .ready()
        .await
        .unwrap()
        .call(post(&api, "/orders", full("y")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Auth(AuthError::NoValidToken { .. })),
        "{err:?}"
    );
    assert_eq!(api.seen_count(), 1, "the expired token was not sent");
    drop(client);
    driver.shutdown().await;
}

/// tower-http's FollowRedirect outside a scoped layer, the token in
/// `x-api-key`: the hop to another origin passes through the layer, which
/// leaves it without the token, and that origin's 401 neither invalidates
/// nor replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_layer_keeps_the_token_off_a_redirect_to_another_origin() {
    let (api, tokens, driver) = setup(Duration::from_millis(100)).await;
    let elsewhere = Api::start(api.authority.clone()).await;
    let auth = Authorizer::new(tokens.clone())
        .header(http::HeaderName::from_static("x-api-key"))
        .raw()
        .scope(&api.url("/"))
        .unwrap();
    let inner: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut client = tower_http::follow_redirect::FollowRedirect::new(
        AuthLayer::with_authorizer(auth).layer(inner),
    );
    let away = api.url(&format!("/redirect-to/{}/orders", elsewhere.addr.port()));
    let request = http::Request::get(away)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 401, "the other origin's answer");
    assert!(api.seen()[0].api_key.is_some(), "the API got the key");
    let there = elsewhere.seen();
    assert_eq!(there.len(), 1, "not replayed: {there:?}");
    assert_eq!(there[0].api_key, None, "the key went to another origin");
    assert_eq!(
        api.authority.request_count(),
        1,
        "the token was invalidated"
    );
    drop(client);
    driver.shutdown().await;
}
