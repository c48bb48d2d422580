//! The TokenManager against a third-party authority, panva's
//! oidc-provider: three RFC 8707 resources (oidc-provider's way of issuing
//! a JWT per API) from one manager in one process; each token's audience is
//! its own resource; idle keys are stopped, and restarted on read.
//!
//! Needs Node.js and `tests/oidc/node_modules`: run `.ci/setup-oidc.sh`.

mod oauth2_common;
mod oidc_support;

use std::time::Duration;

use freshtoken::manager::{TokenKey, TokenManager};
use freshtoken::oauth2::{ClientAuth, ClientCredentials};
use oauth2_common::claims;
use oidc_support::OidcProvider;

const CLIENT: &str = "svc-post";
const SECRET: &str = "post-secret-6f1d2c";
const RESOURCES: [&str; 3] = [
    "https://api.freshtoken.test/",
    "https://billing.freshtoken.test/",
    "https://search.freshtoken.test/",
];

#[test]
fn three_resources_three_tokens_each_with_its_own_audience() {
    let provider = OidcProvider::start();
    let token_url = provider.token_url();
    let manager = TokenManager::builder()
        .idle_timeout(Duration::from_millis(300))
        .build(move |key: &TokenKey, builder| {
            let source = key
                .apply(
                    ClientCredentials::builder(token_url.clone(), key.client(), SECRET)
                        .client_auth(ClientAuth::Post),
                )
                .build()?;
            Ok(builder.spawn_thread(source)?)
        });
    let handles: Vec<_> = RESOURCES
        .iter()
        .map(|r| {
            manager.handle(
                TokenKey::new(CLIENT)
                    .with_resource(*r)
                    .with_scope("api:read"),
            )
        })
        .collect();
    let mut ids = Vec::new();
    for (resource, handle) in RESOURCES.iter().zip(&handles) {
        let token = handle
            .wait_ready(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{resource}: {e}"));
        let claims = claims(token.access_token().expose_secret());
        assert_eq!(claims["aud"], *resource, "each API sees its own audience");
        assert_eq!(claims["client_id"], CLIENT);
        assert!(claims["scope"].as_str().unwrap().contains("api:read"));
        ids.push(token.id());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct tokens");
    assert_eq!(manager.running_count(), 3);

    // Keep one key busy; the others go idle and are stopped.
    let busy = &handles[0];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handles[1..].iter().any(|h| h.is_running()) {
        assert!(
            std::time::Instant::now() < deadline,
            "idle keys were not stopped"
        );
        let _ = busy.valid_token();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(busy.is_running());
    // A read restarts a stopped key, with its token (from its cache).
    let again = handles[2].wait_ready(Duration::from_secs(20)).unwrap();
    assert_eq!(
        claims(again.access_token().expose_secret())["aud"],
        RESOURCES[2]
    );
    assert_eq!(handles[2].starts(), 2);
}
