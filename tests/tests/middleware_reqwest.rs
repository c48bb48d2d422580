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

/// The token in `x-api-key` (which reqwest keeps on redirects): with the
/// same-origin redirect policy, a redirect to another origin is not
/// followed and that origin never sees the key; without the policy being
/// declared, nothing is sent at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_a_custom_header_never_follows_a_redirect_to_another_origin() {
    let (api, tokens, driver) = setup(Duration::from_secs(5)).await;
    let elsewhere = Api::start(api.authority.clone()).await;
    let key_auth = || {
        Authorizer::new(tokens.clone())
            .header(http::HeaderName::from_static("x-api-key"))
            .raw()
    };
    let away = api.url(&format!("/redirect-to/{}/landing", elsewhere.addr.port()));

    let checked = ClientBuilder::new(
        reqwest::Client::builder()
            .redirect(freshtoken::middleware::reqwest::redirect_policy())
            .build()
            .unwrap(),
    )
    .with(AuthMiddleware::with_authorizer(key_auth()).redirects_checked())
    .build();
    let r = checked.get(&away).send().await.unwrap();
    assert_eq!(r.status(), 302, "the cross-origin redirect is not followed");
    assert!(api.seen()[0].api_key.is_some(), "the API got the key");
    assert_eq!(elsewhere.seen_count(), 0, "{:?}", elsewhere.seen());

    // A client whose redirects nobody vouched for: refused before sending.
    let unchecked = client(key_auth());
    let e = unchecked.get(&away).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(e) = e else {
        panic!("{e:?}")
    };
    assert!(
        matches!(
            e.downcast_ref::<AuthError>(),
            Some(AuthError::RedirectsUnchecked { .. })
        ),
        "{e:?}"
    );
    assert_eq!(api.seen_count(), 1, "nothing more was sent");
    assert_eq!(elsewhere.seen_count(), 0);
    drop((checked, unchecked));
    driver.shutdown().await;
}

/// reqwest follows a redirect to another origin without `Authorization`;
/// that origin's 401 says nothing about the token: no invalidation, no
/// replay, one token request in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_another_origin_after_a_redirect_neither_invalidates_nor_replays() {
    let (api, tokens, driver) = setup(Duration::from_millis(100)).await;
    let elsewhere = Api::start(api.authority.clone()).await;
    let client = client(Authorizer::new(tokens.clone()));
    let away = api.url(&format!("/redirect-to/{}/orders", elsewhere.addr.port()));
    let r = client.get(&away).send().await.unwrap();
    assert_eq!(r.status(), 401, "the other origin's answer");
    assert_eq!(api.seen_count(), 1, "not replayed: {:?}", api.seen());
    let there = elsewhere.seen();
    assert_eq!(there.len(), 1, "{there:?}");
    assert_eq!(there[0].token, None, "reqwest stripped the token");
    // (A wrongful invalidation would have been followed by a refresh and
    // the replay before `send` returned.)
    assert_eq!(
        api.authority.request_count(),
        1,
        "the token was invalidated"
    );
    drop(client);
    driver.shutdown().await;
}

/// Scoped to the API's base URL: a request elsewhere carries no token, and
/// its 401 neither invalidates nor replays; the API's own requests carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_middleware_attaches_the_token_only_to_its_api() {
    let (api, tokens, driver) = setup(Duration::from_millis(100)).await;
    let elsewhere = Api::start(api.authority.clone()).await;
    let client = client(
        Authorizer::new(tokens.clone())
            .scope(&api.url("/"))
            .unwrap(),
    );
    let r = client.get(elsewhere.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let there = elsewhere.seen();
    assert_eq!(there.len(), 1, "not replayed: {there:?}");
    assert_eq!(there[0].token, None, "no token outside the scope");
    let r = client.get(api.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(api.seen()[0].token.is_some());
    assert_eq!(
        api.authority.request_count(),
        1,
        "the token was invalidated"
    );
    drop(client);
    driver.shutdown().await;
}
