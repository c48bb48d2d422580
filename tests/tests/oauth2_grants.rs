//! The JWT-bearer grant (RFC 7523 2.1) and token exchange (RFC 8693)
//! against panva's oidc-provider, which does not have them: tests/oidc/
//! server.mjs registers both with `provider.registerGrantType`, with
//! handlers that verify the assertion (signature with the service
//! account's key, issuer, audience, expiry, `jti` replay) and look the
//! subject token up in the provider's own store.
//!
//! Needs Node.js and `tests/oidc/node_modules`: run `.ci/setup-oidc.sh`.

use std::time::Duration;

mod oidc_support;

use freshtoken::driver::Builder;
use freshtoken::oauth2::JwsAlgorithm;
use freshtoken::oauth2::{
    ClientAuth, ClientCredentials, JwtBearer, SigningKey, TokenExchange, TOKEN_TYPE_ACCESS_TOKEN,
};
use freshtoken::proto::oauth2::assertion::{assemble, signing_input, AssertionClaims, JwsHeader};
use freshtoken::source::FetchRequest;
use freshtoken::source::TokenSource;
use freshtoken::{Assertion, FetchErrorKind, Timestamp};
use oidc_support::OidcProvider;
use serde_json::json;

const SERVICE_ACCOUNT: &str = "robot@freshtoken.test";
const EXCHANGE_AUDIENCE: &str = "https://backend.freshtoken.test";

fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

fn robot(op: &OidcProvider) -> SigningKey {
    SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("robot.pem")).unwrap()
}

#[test]
fn jwt_bearer_with_a_signed_assertion_and_its_rejections() {
    let op = OidcProvider::start();
    let source = JwtBearer::builder(op.token_url(), SERVICE_ACCOUNT, robot(&op))
        .client_id("sa-bearer")
        .claim("scope", json!("api:read"))
        .build()
        .unwrap();
    for _ in 0..2 {
        // A fresh jti each time: both accepted.
        let answer = source.fetch(&FetchRequest::first()).unwrap();
        assert_eq!(answer.scope.as_deref(), Some("api:read"));
        assert_eq!(answer.expires_in, Some(30));
    }

    // Signed with a key the authority does not trust for this issuer.
    let stranger = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("stranger.pem")).unwrap();
    let source = JwtBearer::builder(op.token_url(), SERVICE_ACCOUNT, stranger)
        .client_id("sa-bearer")
        .build()
        .unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.error_code()),
        (FetchErrorKind::Permanent, Some("invalid_grant")),
        "{e}"
    );
    assert!(
        e.message()
            .contains("ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        "{e}"
    );

    // A replayed assertion (the same jti): refused, permanent.
    let source = JwtBearer::builder(op.token_url(), SERVICE_ACCOUNT, robot(&op))
        .client_id("sa-bearer")
        .assertion_jti(|| "one-jti".to_owned())
        .build()
        .unwrap();
    source.fetch(&FetchRequest::first()).unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.error_code()),
        (FetchErrorKind::Permanent, Some("invalid_grant"))
    );
    assert!(e.message().contains("already used"), "{e}");
}

/// An assertion signed by "someone else" (a platform), expiring in `exp_in`
/// seconds.
fn supplied_assertion(op: &OidcProvider, jti: &str, exp_in: i64) -> Assertion {
    let now = now();
    let mut claims = AssertionClaims::client_assertion(
        SERVICE_ACCOUNT,
        op.token_url(),
        jti,
        now,
        Duration::ZERO,
    );
    claims.issued_at = now.saturating_sub(Duration::from_secs(120));
    claims.expires_at = now.offset_millis(exp_in * 1000);
    let input = signing_input(&JwsHeader::new(JwsAlgorithm::Rs256), &claims).unwrap();
    assemble(&input, &robot(op).sign(input.as_bytes()).unwrap())
}

#[test]
fn jwt_bearer_with_a_supplied_assertion_that_expired_is_retried_not_revoked() {
    let op = OidcProvider::start();
    let fresh = supplied_assertion(&op, "supplied-1", 600);
    let source = JwtBearer::with_assertion_fn(op.token_url(), move |_ctx| Ok(fresh.clone()))
        .client_id("sa-bearer")
        .scope("api:read")
        .build()
        .unwrap();
    assert!(source.fetch(&FetchRequest::first()).is_ok());

    // The platform handed over one that has expired: the authority refuses
    // it (`invalid_grant`), and as it was stale that is transient: the
    // next assertion starts afresh.
    let expired = supplied_assertion(&op, "supplied-2", -30);
    let source = JwtBearer::with_assertion_fn(op.token_url(), move |_ctx| Ok(expired.clone()))
        .client_id("sa-bearer")
        .build()
        .unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.error_code()),
        (FetchErrorKind::Transient, Some("invalid_grant")),
        "{e}"
    );
    assert!(e.message().contains("ERR_JWT_EXPIRED"), "{e}");
}

fn short_lived_subject(op: &OidcProvider) -> ClientCredentials {
    ClientCredentials::builder(op.token_url(), "svc-short", "short-secret-7a6b5c")
        .client_auth(ClientAuth::Post)
        .scope("api:read")
        .build()
        .unwrap()
}

#[test]
fn token_exchange_follows_the_subject_handles_refresh() {
    let op = OidcProvider::start();
    // The subject: 2 s tokens kept fresh by a real driver.
    let (subject, driver) = Builder::new()
        .spawn_thread(short_lived_subject(&op))
        .unwrap();
    let first = subject.wait_ready(Duration::from_secs(10)).unwrap();
    let first_subject = first.access_token().fingerprint();
    drop(first);

    let exchange = TokenExchange::from_handle(op.token_url(), "exchanger", subject.clone())
        .client_secret("exchanger-secret-5e4d3c")
        .client_auth(ClientAuth::Post)
        .audience(EXCHANGE_AUDIENCE)
        .requested_token_type(TOKEN_TYPE_ACCESS_TOKEN)
        .scope("api:read")
        .build()
        .unwrap();
    let answer = exchange.fetch(&FetchRequest::first()).unwrap();
    assert_eq!(answer.scope.as_deref(), Some("api:read"));
    // Kept no longer than its 2 s subject, though the exchange gave 30 s.
    assert!(answer.expires_in.unwrap() <= 2, "{:?}", answer.expires_in);

    // Once the subject has been refreshed (its first token expires after
    // 2 s, the driver renews it before), the exchange presents the new one,
    // which the authority accepts.
    loop {
        let current = subject.wait_ready(Duration::from_secs(10)).unwrap();
        if current.access_token().fingerprint() != first_subject {
            break;
        }
        drop(current);
        subject.wait_changed(Duration::from_secs(5)).unwrap();
    }
    // Past the first subject's expiry (whole seconds at the authority).
    std::thread::sleep(Duration::from_millis(3100));
    let answer = exchange.fetch(&FetchRequest::first()).unwrap();
    assert!(answer.expires_in.unwrap() <= 2);
    driver.shutdown_blocking();
}

#[test]
fn token_exchange_refuses_an_expired_subject_and_a_wrong_audience() {
    let op = OidcProvider::start();
    let subject = short_lived_subject(&op)
        .fetch(&FetchRequest::first())
        .unwrap()
        .access_token;
    let value = subject.expose_secret().to_owned();
    let exchange = |audience: &str| {
        let value = value.clone();
        TokenExchange::from_fn(op.token_url(), "exchanger", move |_ctx| {
            Ok(Assertion::new(value.clone()))
        })
        .client_secret("exchanger-secret-5e4d3c")
        .client_auth(ClientAuth::Post)
        .audience(audience)
        .build()
        .unwrap()
    };
    let e = exchange("https://elsewhere.test")
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.error_code()),
        (FetchErrorKind::Permanent, Some("invalid_target"))
    );
    assert!(exchange(EXCHANGE_AUDIENCE)
        .fetch(&FetchRequest::first())
        .is_ok());

    // After its 2 s life the authority refuses the subject: invalid_grant,
    // never a revoked grant, and no secret in the message.
    std::thread::sleep(Duration::from_millis(3100));
    let e = exchange(EXCHANGE_AUDIENCE)
        .fetch(&FetchRequest::first())
        .unwrap_err();
    assert_eq!(e.error_code(), Some("invalid_grant"), "{e}");
    assert_ne!(e.kind(), FetchErrorKind::GrantRevoked);
    assert!(!e.to_string().contains(&value));

    // With an actor token (delegation) from a file: a valid one is
    // accepted, one that is not a token is refused.
    let fresh = short_lived_subject(&op)
        .fetch(&FetchRequest::first())
        .unwrap()
        .access_token;
    let actor = short_lived_subject(&op)
        .fetch(&FetchRequest::first())
        .unwrap()
        .access_token;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("actor"), actor.expose_secret()).unwrap();
    let fresh_value = fresh.expose_secret().to_owned();
    TokenExchange::from_fn(op.token_url(), "exchanger", move |_ctx| {
        Ok(Assertion::new(fresh_value.clone()))
    })
    .client_secret("exchanger-secret-5e4d3c")
    .client_auth(ClientAuth::Post)
    .audience(EXCHANGE_AUDIENCE)
    .actor_token_file(dir.path().join("actor"), TOKEN_TYPE_ACCESS_TOKEN)
    .build()
    .unwrap()
    .fetch(&FetchRequest::first())
    .unwrap();
    std::fs::write(dir.path().join("actor"), "not-a-token").unwrap();
    let fresh_value = fresh.expose_secret().to_owned();
    let e = TokenExchange::from_fn(op.token_url(), "exchanger", move |_ctx| {
        Ok(Assertion::new(fresh_value.clone()))
    })
    .client_secret("exchanger-secret-5e4d3c")
    .client_auth(ClientAuth::Post)
    .audience(EXCHANGE_AUDIENCE)
    .actor_token_file(dir.path().join("actor"), TOKEN_TYPE_ACCESS_TOKEN)
    .build()
    .unwrap()
    .fetch(&FetchRequest::first())
    .unwrap_err();
    assert_eq!(e.error_code(), Some("invalid_grant"), "{e}");
    assert!(e.message().contains("actor"), "{e}");
}
