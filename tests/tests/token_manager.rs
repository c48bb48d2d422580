//! The TokenManager against a real LocalAuthority and a real API: one
//! token per audience or resource, each API sees its own; idle keys are
//! stopped and restarted on read; managers sharing a file cache directory
//! share each key's token.

mod middleware_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use freshtoken::manager::{TokenKey, TokenManager};
use freshtoken::middleware::tower::AuthLayer;
use freshtoken::runtime::Tokio;
use freshtoken::testing::LocalAuthority;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use middleware_support::*;
use tower::{Layer, Service, ServiceExt};

const APIS: [&str; 3] = ["orders", "billing", "search"];

fn manager(authority: &Arc<LocalAuthority>, idle: Duration) -> TokenManager {
    let authority = authority.clone();
    TokenManager::builder()
        .idle_timeout(idle)
        .build(move |key: &TokenKey, builder| {
            let source = key
                .apply(authority.client_credentials(key.client()))
                .build()?;
            Ok(builder.spawn_thread(source)?)
        })
}

fn keys() -> Vec<TokenKey> {
    vec![
        TokenKey::new(CLIENT).with_audience("orders"),
        // RFC 8707 resources, oidc-provider's way.
        TokenKey::new(CLIENT).with_resource("billing"),
        TokenKey::new(CLIENT)
            .with_resource("search")
            .with_scope("read"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_sees_its_own_audience_through_the_tower_layer() {
    logs();
    let authority = authority();
    let api = Api::start(authority.clone()).await;
    let manager = manager(&authority, Duration::from_secs(600));
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for (name, key) in APIS.iter().zip(keys()) {
        let mut client = AuthLayer::new(manager.handle(key)).layer(http.clone());
        let request = http::Request::get(api.url(&format!("/aud/{name}")))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.headers()["x-audience"], *name);
    }
    // A token for one API is refused by another.
    let mut orders = AuthLayer::new(manager.handle(keys()[0].clone())).layer(http.clone());
    let request = http::Request::get(api.url("/aud/billing"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = orders.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 401);

    assert_eq!(manager.running_count(), 3);
    let logged = authority.requests();
    let mut audiences: Vec<String> = logged
        .iter()
        .filter_map(|r| r.audience.clone().or_else(|| r.resources.first().cloned()))
        .collect();
    audiences.sort();
    audiences.dedup();
    assert_eq!(audiences, ["billing", "orders", "search"]);
    assert_eq!(
        logged
            .iter()
            .filter(|r| r.scope.as_deref() == Some("read"))
            .count(),
        logged.iter().filter(|r| r.resources == ["search"]).count(),
        "the search key carries its scope"
    );
    assert_logs_clean(&api);
}

#[test]
fn idle_keys_are_stopped_and_a_read_restarts_them_from_the_cache() {
    logs();
    let authority = authority();
    let manager = manager(&authority, Duration::from_millis(200));
    let [a, b, _] = <[TokenKey; 3]>::try_from(keys()).unwrap();
    let (busy, idle) = (manager.handle(a), manager.handle(b));
    let first = idle.wait_ready(Duration::from_secs(10)).unwrap().id();
    busy.wait_ready(Duration::from_secs(10)).unwrap();
    assert!(idle.is_running() && busy.is_running());
    assert_eq!(authority.request_count(), 2);

    // Keep reading one key; leave the other alone.
    eventually("the idle key's refresher is stopped", || {
        let _ = busy.valid_token();
        !idle.is_running()
    });
    assert!(busy.is_running(), "a key that is read keeps its refresher");
    assert_eq!(idle.stops(), 1);
    assert_eq!(manager.running_count(), 1);

    // A read restarts it; the still-valid token comes from the key's
    // in-process cache, without a request to the authority.
    let again = idle.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(again.id(), first);
    assert!(idle.is_running());
    assert_eq!(idle.starts(), 2);
    assert_eq!(authority.request_count(), 2, "restarted from the cache");
    assert!(idle.reads() >= 2);
}

#[test]
fn a_restarted_key_never_serves_an_expired_token_as_valid() {
    logs();
    let authority = Arc::new(
        LocalAuthority::builder()
            .client(CLIENT, CLIENT_SECRET)
            .token_lifetime(Duration::from_millis(1500))
            .start()
            .unwrap(),
    );
    let manager = manager(&authority, Duration::from_millis(100));
    let handle = manager.handle(keys()[0].clone());
    let first = handle.wait_ready(Duration::from_secs(10)).unwrap();
    let (first_id, expires) = (first.id(), first.expires_at());
    drop(first);
    eventually("stopped", || !handle.is_running());
    // Let the token expire while the refresher is stopped.
    std::thread::sleep(Duration::from_millis(1600));
    // Restarting, a read has no token or a new one: never the expired one.
    if let Ok(t) = handle.valid_token() {
        assert!(
            t.id() != first_id && t.expires_at() > expires,
            "an expired token was served"
        );
    }
    let fresh = handle.wait_ready(Duration::from_secs(10)).unwrap();
    assert_ne!(fresh.id(), first_id);
    assert!(authority.request_count() >= 2);
}

#[test]
fn managers_sharing_a_cache_directory_share_each_keys_token() {
    logs();
    let authority = authority();
    let dir = tempfile::tempdir().unwrap();
    let make = |authority: &Arc<LocalAuthority>| {
        let authority = authority.clone();
        let path = dir.path().to_owned();
        TokenManager::builder()
            .cache(move |key: &TokenKey| key.file_cache(&path))
            .build(move |key: &TokenKey, builder| {
                let source = key
                    .apply(authority.client_credentials(key.client()))
                    .build()?;
                Ok(builder.spawn_thread(source)?)
            })
    };
    let one = make(&authority);
    let mut ids = Vec::new();
    for key in keys() {
        ids.push(
            one.handle(key)
                .wait_ready(Duration::from_secs(10))
                .unwrap()
                .id(),
        );
    }
    assert_eq!(authority.request_count(), 3);
    let files = || {
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .collect();
        files.sort();
        files
    };
    let mut expected: Vec<String> = keys()
        .iter()
        .map(|k| format!("{}.json", k.cache_name()))
        .collect();
    expected.sort();
    // Stores follow publication: wait for the last one.
    eventually("every key's token stored", || files().len() >= 3);
    assert_eq!(
        files(),
        expected,
        "one cache file per key, named by the key"
    );

    // Another manager (another process, as far as the cache is concerned:
    // it has its own in-process layer) takes every key's token from the files.
    let two = make(&authority);
    for (key, id) in keys().into_iter().zip(ids) {
        let t = two.handle(key).wait_ready(Duration::from_secs(10)).unwrap();
        assert_eq!(t.id(), id);
    }
    assert_eq!(
        authority.request_count(),
        3,
        "no request for the second manager"
    );
}

#[test]
fn a_failing_spawn_is_a_clear_error_not_a_panic() {
    let manager = TokenManager::builder()
        .build(|_key: &TokenKey, _builder| Err("no such client configured".into()));
    let handle = manager.handle(TokenKey::new("nobody"));
    let err = handle.valid_token().unwrap_err();
    assert!(
        err.to_string().contains("no such client configured"),
        "{err}"
    );
    assert!(!handle.is_running());
}

/// Each key's refresher is named after the key, so its metrics and spans
/// are its own (before, every managed refresher was `default`).
#[test]
fn each_keys_refresher_is_named_after_the_key() {
    let authority = authority();
    let names = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = names.clone();
    let manager = TokenManager::builder().build(move |key: &TokenKey, builder| {
        seen.lock()
            .unwrap()
            .push((key.cache_name(), builder.refresher_name().to_owned()));
        let source = key
            .apply(authority.client_credentials(key.client()))
            .build()?;
        Ok(builder.spawn_thread(source)?)
    });
    for key in keys() {
        manager
            .handle(key)
            .wait_ready(Duration::from_secs(10))
            .unwrap();
    }
    let names = names.lock().unwrap();
    assert_eq!(names.len(), 3, "{names:?}");
    for (key, name) in names.iter() {
        assert_eq!(name, key);
    }
    let mut distinct: Vec<&String> = names.iter().map(|(_, n)| n).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{names:?}");
}

#[test]
fn two_processes_sharing_a_cache_directory_share_each_keys_token() {
    let authority = authority();
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_manager_worker"))
            .args([
                authority.token_url().as_str(),
                CLIENT,
                dir.path().to_str().unwrap(),
            ])
            .env("FRESHTOKEN_TEST_SECRET", CLIENT_SECRET)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the worker starts")
    };
    // One process fetches each key's token and stores it; then two more at
    // once take every key's token from the files, with no request.
    // (Processes started together share through each key's lease too,
    // except when one reads the file just before another stores into it
    // and takes the lease just after that one released it: then both
    // fetch; that race is the refresh machine's, not the manager's.)
    let output = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a worker failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let lines = |s: &str| {
        let mut l: Vec<String> = s
            .lines()
            .filter(|l| l.starts_with("KEY "))
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    let first = output(run());
    assert_eq!(lines(&first).len(), 3, "{first}");
    assert_eq!(authority.issued_count(), 3);
    let (a, b) = (run(), run());
    let outputs = [first, output(a), output(b)];
    for o in &outputs[1..] {
        assert_eq!(
            lines(o),
            lines(&outputs[0]),
            "every process has each key's same token"
        );
    }
    assert_eq!(
        authority.issued_count(),
        3,
        "no request from the later processes"
    );
    for o in &outputs {
        assert!(!o.contains(CLIENT_SECRET));
    }
}

#[test]
fn a_manager_on_tokio_starts_and_restarts_refreshers_from_any_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let authority = authority();
    let source_authority = authority.clone();
    let manager = TokenManager::builder()
        .idle_timeout(Duration::from_millis(100))
        .tokio(runtime.handle().clone())
        .build(move |key: &TokenKey, builder| {
            let source = key
                .apply(source_authority.client_credentials(key.client()))
                .build()?;
            // Inside the manager's runtime, whichever thread reads first.
            Ok(builder.spawn(Tokio::current().expect("a tokio runtime"), source))
        });
    let handle = manager.handle(keys()[1].clone());
    // This thread is not one of the runtime's.
    let first = handle.wait_ready(Duration::from_secs(10)).unwrap().id();
    eventually("stopped when idle", || !handle.is_running());
    let again = handle.wait_ready(Duration::from_secs(10)).unwrap().id();
    assert_eq!(again, first, "restarted from the key's cache");
    assert_eq!(handle.starts(), 2);
    assert_eq!(authority.request_count(), 1);
    manager.shutdown_blocking();
}

#[test]
fn keys_sharing_a_hand_made_cache_file_never_adopt_each_others_token() {
    // Every key given one file (a name that does not follow the key):
    // each key is still served a token for itself, since the records say
    // which configuration they were made for.
    logs();
    let authority = authority();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let manager = {
        let authority = authority.clone();
        let path = path.clone();
        TokenManager::builder()
            .cache(move |_: &TokenKey| freshtoken::cache::FileCache::new(&path))
            .build(move |key: &TokenKey, builder| {
                let source = key
                    .apply(authority.client_credentials(key.client()))
                    .build()?;
                Ok(builder.spawn_thread(source)?)
            })
    };
    let read = TokenKey::new(CLIENT).with_scope("read");
    let write = TokenKey::new(CLIENT).with_scope("write");
    let token = |key: &TokenKey| {
        let t = manager
            .handle(key.clone())
            .wait_ready(Duration::from_secs(10))
            .unwrap();
        t.access_token().expose_secret().to_owned()
    };
    let r = token(&read);
    eventually("the read token stored", || path.exists());
    let w = token(&write);
    assert_ne!(w, r, "the write key was served the read key's token");
    let info = authority.validate_access_token(&w).unwrap();
    assert_eq!(info.scope.as_deref(), Some("write"));
    assert_eq!(authority.request_count(), 2);
}

#[test]
fn a_manager_binds_each_keys_records_to_the_key_when_the_source_cannot_say() {
    // A source that does not know what it fetches (an FnSource): the
    // manager binds each key's cache to the key itself.
    logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let manager = {
        let path = path.clone();
        TokenManager::builder()
            .cache(move |_: &TokenKey| freshtoken::cache::FileCache::new(&path))
            .build(move |key: &TokenKey, builder| {
                let audience = key.audience().unwrap_or("none").to_owned();
                let source =
                    freshtoken::source::FnSource::new(
                        move |_: &freshtoken::source::FetchRequest| {
                            Ok(freshtoken::source::TokenResponse::new(
                                freshtoken::AccessToken::new(format!("token-for-{audience}")),
                            )
                            .with_expires_in(Some(3600)))
                        },
                    );
                Ok(builder.spawn_thread(source)?)
            })
    };
    let token = |audience: &str| {
        let key = TokenKey::new(CLIENT).with_audience(audience);
        let t = manager
            .handle(key)
            .wait_ready(Duration::from_secs(10))
            .unwrap();
        t.access_token().expose_secret().to_owned()
    };
    assert_eq!(token("orders"), "token-for-orders");
    eventually("the orders token stored", || path.exists());
    assert_eq!(token("billing"), "token-for-billing");
}
