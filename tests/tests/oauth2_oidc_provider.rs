//! The OAuth2 sources against a third-party authority: panva's
//! `oidc-provider` (npm, pinned in tests/oidc/package.json), started by each
//! test on an ephemeral loopback port with tests/oidc/server.mjs.
//!
//! Needs Node.js and `tests/oidc/node_modules`: run `.ci/setup-oidc.sh`.

use std::time::Duration;

mod oauth2_common;
mod oidc_support;

use freshtoken::handle::RefreshState;
use freshtoken::oauth2::{ClientAuth, ClientCredentials, RefreshTokenSource};
use freshtoken::policy::LifetimePolicy;
use freshtoken::proto::{Action, Input, MachineConfig, Output, RefreshMachine};
use freshtoken::source::FetchRequest;
use freshtoken::source::TokenSource;
use freshtoken::{FetchErrorKind, RefreshToken, Timestamp};
use oauth2_common::claims;
use oidc_support::OidcProvider;

const RESOURCE: &str = "https://api.freshtoken.test/";
const BASIC_ID: &str = "svc-basic";
const BASIC_SECRET: &str = "basic-secret: with+odd/chars%";
const POST_ID: &str = "svc-post";
const POST_SECRET: &str = "post-secret-6f1d2c";
const APP_ID: &str = "app";
const APP_SECRET: &str = "app-secret-9a8b7c";
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

impl OidcProvider {
    /// Runs the authorization-code flow as a browser would (following
    /// redirects, keeping cookies; the server completes login and consent by
    /// itself) and redeems the code: the first refresh token of a grant.
    fn authorize(&self) -> RefreshToken {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let code = self.authorization_code(APP_ID, REDIRECT_URI);
        let mut response = agent
            .post(self.token_url())
            .content_type("application/x-www-form-urlencoded")
            .send(format!(
                "grant_type=authorization_code&code={code}&redirect_uri={REDIRECT_URI}\
                 &client_id={APP_ID}&client_secret={APP_SECRET}"
            ))
            .unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        let rt = body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no refresh token in the code exchange: {body}"));
        RefreshToken::new(rt)
    }
}

#[test]
fn client_credentials_basic_and_post_with_scope_and_resource() {
    let op = OidcProvider::start();
    let basic = ClientCredentials::builder(op.token_url(), BASIC_ID, BASIC_SECRET)
        .scope("api:read")
        .resource(RESOURCE)
        .build()
        .unwrap();
    let post = ClientCredentials::builder(op.token_url(), POST_ID, POST_SECRET)
        .client_auth(ClientAuth::Post)
        .scope("api:read api:write")
        .resource(RESOURCE)
        .build()
        .unwrap();
    for (source, client, scope) in [
        (&basic, BASIC_ID, "api:read"),
        (&post, POST_ID, "api:read api:write"),
    ] {
        let answer = source.fetch(&FetchRequest::first()).unwrap();
        assert_eq!(answer.token_type, "Bearer");
        assert_eq!(answer.expires_in, Some(30));
        assert_eq!(answer.scope.as_deref(), Some(scope));
        assert!(answer.refresh_token.is_none());
        let server_date = answer.server_date.expect("a Date header");
        let c = claims(answer.access_token.expose_secret());
        assert_eq!(
            (c["client_id"].as_str(), c["aud"].as_str()),
            (Some(client), Some(RESOURCE))
        );
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 30);

        // The policy reads the answer and the JWT: a 30 s token, with a skew
        // estimate from the same machine's clock (only seconds of rounding).
        let now = Timestamp::from_system_time(std::time::SystemTime::now());
        let resolved = LifetimePolicy::default().resolve(answer, now, now);
        assert!(resolved.token.lifetime() <= Duration::from_secs(30));
        assert!(
            resolved.skew_ms.unwrap().abs() < 5_000,
            "{:?}",
            resolved.skew_ms
        );
        assert!(server_date.as_secs() > 0);
    }
}

#[test]
fn client_credentials_without_resource_gets_an_opaque_token() {
    let op = OidcProvider::start();
    let source = ClientCredentials::builder(op.token_url(), POST_ID, POST_SECRET)
        .client_auth(ClientAuth::Post)
        .scope("api:read")
        .build()
        .unwrap();
    let answer = source.fetch(&FetchRequest::first()).unwrap();
    assert_eq!(answer.expires_in, Some(30));
    assert_eq!(answer.access_token.expose_secret().split('.').count(), 1);
}

#[test]
fn unknown_resource_is_permanent_and_unknown_scope_is_not_granted() {
    let op = OidcProvider::start();
    let builder = || ClientCredentials::builder(op.token_url(), BASIC_ID, BASIC_SECRET);
    let e = builder()
        .scope("api:read")
        .resource("https://elsewhere.test/")
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::Permanent, Some(400))
    );
    assert!(e.message().starts_with("invalid_target"), "{e}");

    // oidc-provider drops scopes it does not know rather than failing; the
    // answer's `scope` tells what was granted.
    let answer = builder()
        .scope("admin:everything")
        .resource(RESOURCE)
        .build()
        .unwrap()
        .fetch(&FetchRequest::first())
        .unwrap();
    assert_eq!(answer.scope, None);
}

#[test]
fn wrong_secret_is_permanent_with_no_retry_storm() {
    let op = OidcProvider::start();
    for auth in [ClientAuth::Basic, ClientAuth::Post] {
        let source = ClientCredentials::builder(op.token_url(), POST_ID, "not-the-secret")
            .client_auth(auth)
            .scope("api:read")
            .build()
            .unwrap();
        let e = source.fetch(&FetchRequest::first()).unwrap_err();
        assert_eq!(
            (e.kind(), e.status()),
            (FetchErrorKind::Permanent, Some(401)),
            "{auth:?}"
        );
        assert!(e.message().starts_with("invalid_client"), "{e}");
        assert!(!e.to_string().contains("not-the-secret"));
    }

    // The machine, fed these real answers, waits the long permanent
    // interval between attempts (virtual time: each timeout is jumped to).
    let source = ClientCredentials::builder(op.token_url(), BASIC_ID, "wrong")
        .build()
        .unwrap();
    let config = MachineConfig::default();
    let backoff = config.backoff.clone();
    let mut machine = RefreshMachine::new(config);
    let mut now = Timestamp::from_secs(1_700_000_000);
    machine.handle_input(Input::Start, now);
    let mut fetches = 0;
    while fetches < 4 {
        match machine.poll_output() {
            Output::Action(Action::Fetch(req)) => {
                fetches += 1;
                let result = source.fetch(&req);
                let err = result.clone().unwrap_err();
                machine.handle_input(Input::Fetched(req.id, result), now);
                let (lo, hi) = backoff.bounds(&err, req.attempt);
                assert!(
                    lo >= Duration::from_secs(60),
                    "permanent errors must back off long"
                );
                // Drain to the next timeout and check it lies in the bounds.
                let at = loop {
                    match machine.poll_output() {
                        Output::Action(Action::Publish(s)) => {
                            assert!(matches!(s.state, RefreshState::Retrying { .. }))
                        }
                        Output::Timeout(at) => break at,
                        other => panic!("unexpected {other:?}"),
                    }
                };
                let wait = at.saturating_duration_since(now);
                assert!(lo <= wait && wait <= hi, "{wait:?} not in {lo:?}..{hi:?}");
                now = at;
                machine.handle_input(Input::Tick, now);
            }
            Output::Timeout(at) => {
                now = at;
                machine.handle_input(Input::Tick, now);
            }
            Output::Action(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn refresh_tokens_rotate_across_refreshes_and_a_replay_is_invalid_grant() {
    let op = OidcProvider::start();
    let rt0 = op.authorize();
    let source = RefreshTokenSource::builder(op.token_url(), APP_ID)
        .client_secret(APP_SECRET)
        .client_auth(ClientAuth::Post)
        .build()
        .unwrap();

    // Drive the machine: it must hand each rotated token to the next fetch.
    let mut config = MachineConfig::default();
    config.refresh_token = Some(rt0.clone());
    let mut machine = RefreshMachine::new(config);
    let mut now = Timestamp::from_system_time(std::time::SystemTime::now());
    machine.handle_input(Input::Start, now);
    let mut presented: Vec<String> = Vec::new();
    let mut access_tokens: Vec<String> = Vec::new();
    while presented.len() < 4 {
        match machine.poll_output() {
            Output::Action(Action::Fetch(req)) => {
                let rt = req
                    .refresh_token
                    .clone()
                    .expect("the machine passes the refresh token");
                assert!(
                    !presented.contains(&rt.expose_secret().to_owned()),
                    "a refresh token was presented twice"
                );
                presented.push(rt.expose_secret().to_owned());
                let answer = source.fetch(&req).unwrap();
                assert!(
                    answer.refresh_token.is_some(),
                    "oidc-provider rotates on every use"
                );
                access_tokens.push(answer.access_token.expose_secret().to_owned());
                machine.handle_input(Input::Fetched(req.id, Ok(answer)), now);
            }
            Output::Action(Action::Publish(s)) => assert_eq!(s.state, RefreshState::Healthy),
            Output::Action(other) => panic!("unexpected {other:?}"),
            Output::Timeout(at) => {
                now = at;
                machine.handle_input(Input::Tick, now);
            }
        }
    }
    access_tokens.dedup();
    assert_eq!(access_tokens.len(), 4);

    // The first refresh token was rotated away: presenting it again is a
    // replay, which oidc-provider answers with invalid_grant.
    let e = source.fetch(&FetchRequest::new(1, Some(rt0))).unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (FetchErrorKind::GrantRevoked, Some(400))
    );
    assert!(e.message().starts_with("invalid_grant"), "{e}");

    // ...and it revokes the whole grant, so the newest token is dead too.
    let newest = presented.last().unwrap().clone();
    let e = source
        .fetch(&FetchRequest::new(1, Some(RefreshToken::new(newest))))
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::GrantRevoked);
}
