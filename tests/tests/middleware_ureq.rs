//! The ureq 3 middleware and replaying agent, against a real API (hyper on
//! loopback) that checks tokens with a real LocalAuthority and revokes them
//! mid-run. The driver is the blocking one: ureq serves sync applications.

mod middleware_support;

use std::time::Duration;

use freshtoken::driver::{Builder, DriverHandle};
use freshtoken::middleware::ureq::{AuthAgent, AuthHeader};
use freshtoken::middleware::{AuthError, Authorizer};
use freshtoken::testing::{Fault, FaultWindow};
use freshtoken::TokenHandle;
use middleware_support::*;

struct Setup {
    rt: tokio::runtime::Runtime,
    api: Api,
    tokens: TokenHandle,
    driver: DriverHandle,
}

fn setup(invalidate_interval: Duration) -> Setup {
    logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let authority = authority();
    let api = rt.block_on(Api::start(authority.clone()));
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new()
        .invalidate_interval(invalidate_interval)
        .spawn_thread(source)
        .unwrap();
    tokens.wait_ready(Duration::from_secs(10)).unwrap();
    Setup {
        rt,
        api,
        tokens,
        driver,
    }
}

fn agent(tokens: &TokenHandle, status_as_error: bool) -> AuthAgent {
    AuthAgent::new(
        tokens.clone(),
        ureq::Agent::config_builder().http_status_as_error(status_as_error),
    )
}

#[test]
fn a_revoked_token_is_replaced_and_the_request_replayed_once() {
    for status_as_error in [false, true] {
        let s = setup(Duration::from_secs(5));
        let api = agent(&s.tokens, status_as_error);
        let url = s.api.url("/orders");
        let r = api.run(|a| a.post(&url).send("one")).unwrap();
        assert_eq!(r.status(), 200);

        s.api.authority.revoke_access_tokens();
        let mut r = api.run(|a| a.post(&url).send("two")).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body_mut().read_to_string().unwrap(), "two");
        let seen = s.api.seen();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!((seen[1].status, seen[2].status), (401, 200));
        assert_ne!(seen[1].token, seen[2].token);
        assert_eq!(s.api.authority.request_count(), 2);
        assert_logs_clean(&s.api);
        drop(api);
        s.driver.shutdown_blocking();
        drop(s.rt);
    }
}

#[test]
fn a_retry_that_is_rejected_again_returns_that_401_after_exactly_one_retry() {
    let s = setup(Duration::from_millis(100));
    let api = agent(&s.tokens, false);
    let url = s.api.url("/always-401");
    let r = api.run(|a| a.get(&url).call()).unwrap();
    assert_eq!(r.status(), 401);
    let seen = s.api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[0].token, seen[1].token);

    // With ureq's default status errors, the same as an error.
    let err = agent(&s.tokens, true)
        .run(|a| a.get(&url).call())
        .unwrap_err();
    assert!(matches!(err, ureq::Error::StatusCode(401)), "{err:?}");
    assert_eq!(s.api.seen_count(), 4);
    s.driver.shutdown_blocking();
}

#[test]
fn fifty_concurrent_requests_on_a_revoked_token_cause_one_refresh() {
    let s = setup(Duration::from_secs(5));
    let api = agent(&s.tokens, false);
    s.api.authority.revoke_access_tokens();
    // Every request gets its 401 before any of them is answered.
    s.api.hold_rejections(50);
    let before = s.api.authority.request_count();
    let url = s.api.url("/orders");
    let start = std::sync::Barrier::new(50);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let (api, url, start) = (api.clone(), url.clone(), &start);
                scope.spawn(move || {
                    start.wait();
                    api.run(|a| a.post(&url).send("x")).unwrap().status()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 200);
        }
    });
    let authority_requests = s.api.authority.request_count() - before;
    let seen = s.api.seen();
    let rejected = seen.iter().filter(|s| s.status == 401).count();
    let replayed = seen.iter().filter(|s| s.status == 200).count();
    println!("ureq: 50 concurrent requests on a revoked token: {rejected} rejected, {replayed} replayed, {authority_requests} authority request(s)");
    assert_eq!(authority_requests, 1, "one refresh for all the rejections");
    assert_eq!(
        (rejected, replayed),
        (50, 50),
        "each rejected once, replayed once"
    );
    s.driver.shutdown_blocking();
}

#[test]
fn the_middleware_alone_sends_a_streaming_body_once_and_reports_the_token() {
    let s = setup(Duration::from_secs(5));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .middleware(AuthHeader::new(s.tokens.clone()))
        .build()
        .into();
    let old = s.tokens.token().unwrap().id();
    s.api.authority.revoke_access_tokens();
    let url = s.api.url("/upload");
    let reader = std::io::Cursor::new(b"chunk".to_vec());
    let r = agent
        .post(&url)
        .send(ureq::SendBody::from_reader(&mut reader.clone()))
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.api.seen_count(), 1, "a stream is sent once");
    // The token was reported: a new one comes.
    eventually("a new token", || {
        s.tokens.token().map(|t| t.id()) != Some(old)
    });
    let r = agent.post(&url).send("again").unwrap();
    assert_eq!(r.status(), 200);
    s.driver.shutdown_blocking();
}

#[test]
fn no_valid_token_is_a_typed_error_and_nothing_is_sent() {
    logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let authority = authority();
    authority.add_fault(
        Fault::Unavailable { retry_after: None },
        FaultWindow::NextRequests(u32::MAX),
    );
    let api = rt.block_on(Api::start(authority.clone()));
    let source = authority.client_credentials(CLIENT).build().unwrap();
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();
    let agent = AuthAgent::with_authorizer(
        Authorizer::new(tokens).token_wait(Duration::from_millis(200)),
        ureq::Agent::config_builder(),
    );
    let url = api.url("/orders");
    let err = agent.run(|a| a.get(&url).call()).unwrap_err();
    let ureq::Error::Other(inner) = &err else {
        panic!("expected Other, got {err:?}");
    };
    assert!(matches!(
        inner.downcast_ref::<AuthError>(),
        Some(AuthError::NoValidToken { .. })
    ));
    assert_eq!(api.seen_count(), 0);
    assert!(!format!("{err} {err:?}").contains(CLIENT_SECRET));
    driver.shutdown_blocking();
}

/// The token in `x-api-key` (which ureq keeps on redirects): the agent
/// follows no redirect, so another origin never sees the key; a bare
/// middleware on an agent nobody vouched for sends nothing.
#[test]
fn a_token_in_a_custom_header_never_follows_a_redirect_to_another_origin() {
    let s = setup(Duration::from_secs(5));
    let elsewhere = s.rt.block_on(Api::start(s.api.authority.clone()));
    let key_auth = || {
        Authorizer::new(s.tokens.clone())
            .header(http::HeaderName::from_static("x-api-key"))
            .raw()
    };
    let away = s
        .api
        .url(&format!("/redirect-to/{}/landing", elsewhere.addr.port()));
    let api = AuthAgent::with_authorizer(key_auth(), ureq::Agent::config_builder());
    let r = api.run(|a| a.get(&away).call()).unwrap();
    assert_eq!(r.status(), 302, "the redirect is not followed");
    assert!(s.api.seen()[0].api_key.is_some(), "the API got the key");
    assert_eq!(elsewhere.seen_count(), 0, "{:?}", elsewhere.seen());

    let bare: ureq::Agent = ureq::Agent::config_builder()
        .middleware(AuthHeader::with_authorizer(key_auth()))
        .build()
        .into();
    let e = bare.get(&away).call().unwrap_err();
    let ureq::Error::Other(e) = e else {
        panic!("{e:?}")
    };
    assert!(
        matches!(
            e.downcast_ref::<AuthError>(),
            Some(AuthError::RedirectsUnchecked { .. })
        ),
        "{e:?}"
    );
    assert_eq!(s.api.seen_count(), 1, "nothing more was sent");
    assert_eq!(elsewhere.seen_count(), 0);
    s.driver.shutdown_blocking();
}

/// ureq follows a redirect to another origin without `Authorization`;
/// that origin's 401 (a response, with `http_status_as_error(false)`) says
/// nothing about the token: no invalidation, no replay.
#[test]
fn a_401_from_another_origin_after_a_redirect_neither_invalidates_nor_replays() {
    let s = setup(Duration::from_millis(100));
    let elsewhere = s.rt.block_on(Api::start(s.api.authority.clone()));
    let api = agent(&s.tokens, false);
    let away = s
        .api
        .url(&format!("/redirect-to/{}/orders", elsewhere.addr.port()));
    let r = api.run(|a| a.get(&away).call()).unwrap();
    assert_eq!(r.status(), 401, "the other origin's answer");
    assert_eq!(s.api.seen_count(), 1, "not replayed: {:?}", s.api.seen());
    let there = elsewhere.seen();
    assert_eq!(there.len(), 1, "{there:?}");
    assert_eq!(there[0].token, None, "ureq stripped the token");
    assert_eq!(
        s.api.authority.request_count(),
        1,
        "the token was invalidated"
    );
    s.driver.shutdown_blocking();
}

/// Scoped to the API: a request elsewhere carries no token and its 401
/// is returned as it is.
#[test]
fn a_scoped_agent_attaches_the_token_only_to_its_api() {
    let s = setup(Duration::from_millis(100));
    let elsewhere = s.rt.block_on(Api::start(s.api.authority.clone()));
    let api = AuthAgent::with_authorizer(
        Authorizer::new(s.tokens.clone())
            .scope(&s.api.url("/"))
            .unwrap(),
        ureq::Agent::config_builder(),
    );
    let e = api
        .run(|a| a.get(elsewhere.url("/orders")).call())
        .unwrap_err();
    assert!(matches!(e, ureq::Error::StatusCode(401)), "{e:?}");
    let there = elsewhere.seen();
    assert_eq!(there.len(), 1, "not replayed: {there:?}");
    assert_eq!(there[0].token, None, "no token outside the scope");
    let r = api.run(|a| a.get(s.api.url("/orders")).call()).unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.api.authority.request_count(),
        1,
        "the token was invalidated"
    );
    s.driver.shutdown_blocking();
}
