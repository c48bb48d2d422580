//! The reqwest-middleware middleware around a real reqwest client, against
//! a real API (hyper on loopback) that checks tokens with a real
//! LocalAuthority and revokes them mid-run.

mod middleware_support;

use std::time::Duration;

use bytes::Bytes;
use freshtoken::driver::{Builder, DriverHandle};
use freshtoken::middleware::reqwest::AuthMiddleware;
use freshtoken::middleware::{AuthError, Authorizer};
use freshtoken::runtime::Tokio;
use freshtoken::testing::{Fault, FaultWindow};
use freshtoken::TokenHandle;
use middleware_support::*;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

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

fn client(auth: Authorizer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::with_authorizer(auth))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_and_the_request_replayed_once() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let client = client(Authorizer::new(tokens.clone()));
    let r = client
        .post(api.url("/orders"))
        .body("one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    api.authority.revoke_access_tokens();
    let r = client
        .post(api.url("/orders"))
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), "two");
    let seen = api.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[1].status, seen[2].status), (401, 200));
    assert_ne!(seen[1].token, seen[2].token);
    assert_eq!(api.authority.request_count(), 2);
    assert_logs_clean(&api);
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_is_rejected_again_returns_that_401_after_exactly_one_retry() {
    let (api, tokens, driver) = setup(Duration::from_millis(100)).await;
    let client = client(Authorizer::new(tokens.clone()));
    let r = client.get(api.url("/always-401")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[0].token, seen[1].token);
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_on_a_revoked_token_cause_one_refresh() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let client = client(Authorizer::new(tokens.clone()));
    api.authority.revoke_access_tokens();
    // Every request gets its 401 before any of them is answered.
    api.hold_rejections(50);
    let before = api.authority.request_count();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (client.clone(), api.url("/orders"));
        tasks.push(tokio::spawn(async move {
            client.post(url).body("x").send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let authority_requests = api.authority.request_count() - before;
    let seen = api.seen();
    let rejected = seen.iter().filter(|s| s.status == 401).count();
    let replayed = seen.iter().filter(|s| s.status == 200).count();
    println!("reqwest: 50 concurrent requests on a revoked token: {rejected} rejected, {replayed} replayed, {authority_requests} authority request(s)");
    assert_eq!(authority_requests, 1, "one refresh for all the rejections");
    assert_eq!(
        (rejected, replayed),
        (50, 50),
        "each rejected once, replayed once"
    );
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_is_not_replayed() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let client = client(Authorizer::new(tokens.clone()));
    api.authority.revoke_access_tokens();
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"chunk"))]);
    let r = client
        .post(api.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(api.seen_count(), 1, "a stream is sent once");
    drop(client);
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_token_is_a_typed_error_and_nothing_is_sent() {
    logs();
    let authority = authority();
    authority.add_fault(
        Fault::Unavailable { retry_after: None },
        FaultWindow::NextRequests(u32::MAX),
    );
    let api = Api::start(authority.clone()).await;
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new().spawn(Tokio::current().expect("a tokio runtime"), source);
    let client = client(Authorizer::new(tokens).token_wait(Duration::from_millis(200)));
    let err = client.get(api.url("/orders")).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &err else {
        panic!("expected a middleware error, got {err:?}");
    };
    assert!(matches!(
        inner.downcast_ref::<AuthError>(),
        Some(AuthError::NoValidToken { .. })
    ));
    assert_eq!(api.seen_count(), 0);
    let text = format!("{err} {err:?}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");
    driver.shutdown().await;
}
