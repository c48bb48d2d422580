//! Enterprise credentials against panva's oidc-provider (started per test
//! on loopback by tests/oidc/server.mjs, which makes the client keys):
//! discovery, private_key_jwt (RS256, PS256, ES256; PEM and JWK),
//! client_secret_jwt, `jti` replay, a wrong key, and federated assertion
//! files that are rotated, deleted and expire.
//!
//! Needs Node.js and `tests/oidc/node_modules`: run `.ci/setup-oidc.sh`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod oauth2_common;
mod oidc_support;

use freshtoken::oauth2::JwsAlgorithm;

use freshtoken::oauth2::{
    Audience, ClientAuth, ClientCredentials, Discovery, DiscoveryError, HttpTransport,
    RefreshTokenSource, SigningKey, UreqTransport,
};
use freshtoken::oauth2::{HttpRequest, HttpResponse};
use freshtoken::proto::oauth2::assertion::{assemble, signing_input, AssertionClaims, JwsHeader};
use freshtoken::proto::MachineConfig;
use freshtoken::source::FetchRequest;
use freshtoken::source::TokenSource;
use freshtoken::{FetchError, FetchErrorKind, RefreshToken, Timestamp};
use oauth2_common::claims;
use oidc_support::OidcProvider;

const RESOURCE: &str = "https://api.freshtoken.test/";

fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

/// Checks a token answer: a JWT access token for the resource, issued to
/// `client`.
fn assert_token_for(answer: &freshtoken::source::TokenResponse, client: &str) {
    assert_eq!(answer.expires_in, Some(30));
    let c = claims(answer.access_token.expose_secret());
    assert_eq!(
        (c["client_id"].as_str(), c["aud"].as_str()),
        (Some(client), Some(RESOURCE))
    );
}

#[test]
fn discovery_reads_the_metadata_and_serves_every_client() {
    let op = OidcProvider::start();
    let discovery = Discovery::new(&op.issuer).unwrap();
    let meta = discovery.metadata().unwrap();
    assert_eq!(meta.issuer(), op.issuer);
    assert_eq!(meta.token_endpoint(), op.token_url());
    for method in [
        ClientAuth::Basic,
        ClientAuth::Post,
        ClientAuth::PrivateKeyJwt,
        ClientAuth::ClientSecretJwt,
    ] {
        assert!(meta.supports_auth_method(method), "{method:?}");
    }
    let algs = meta.auth_signing_algs().unwrap();
    for alg in ["RS256", "PS256", "ES256", "HS256"] {
        assert!(algs.iter().any(|a| a == alg), "{alg} in {algs:?}");
    }

    // Every client, each from the issuer alone; the sources share the
    // discovery (and its cache).
    let rsa = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("rsa.pem")).unwrap();
    let ec = SigningKey::from_pem_file(JwsAlgorithm::Es256, op.key("ec.pem")).unwrap();
    let sources: Vec<(&str, ClientCredentials)> = vec![
        (
            "svc-basic",
            ClientCredentials::from_issuer(discovery.clone(), "svc-basic")
                .client_secret("basic-secret: with+odd/chars%")
                .scope("api:read")
                .resource(RESOURCE)
                .build()
                .unwrap(),
        ),
        (
            "svc-post",
            ClientCredentials::from_issuer(discovery.clone(), "svc-post")
                .client_secret("post-secret-6f1d2c")
                .client_auth(ClientAuth::Post)
                .scope("api:read")
                .resource(RESOURCE)
                .build()
                .unwrap(),
        ),
        (
            "svc-rsa-jwt",
            ClientCredentials::from_issuer(discovery.clone(), "svc-rsa-jwt")
                .private_key_jwt(rsa)
                .scope("api:read")
                .resource(RESOURCE)
                .build()
                .unwrap(),
        ),
        (
            "svc-ec-jwt",
            ClientCredentials::from_issuer(discovery.clone(), "svc-ec-jwt")
                .private_key_jwt(ec)
                .assertion_audience(Audience::Issuer)
                .scope("api:read")
                .resource(RESOURCE)
                .build()
                .unwrap(),
        ),
        (
            "svc-secret-jwt",
            ClientCredentials::from_issuer(discovery.clone(), "svc-secret-jwt")
                .client_secret("secret-jwt-0123456789abcdef0123456789abcdef")
                .client_secret_jwt()
                .scope("api:read")
                .resource(RESOURCE)
                .build()
                .unwrap(),
        ),
    ];
    for (client, source) in &sources {
        let answer = source
            .fetch(&FetchRequest::first())
            .unwrap_or_else(|e| panic!("{client}: {e}"));
        assert_token_for(&answer, client);
        // A second fetch signs a new assertion (a new jti): accepted too.
        assert_token_for(&source.fetch(&FetchRequest::first()).unwrap(), client);
        let shown = format!("{source:?}");
        assert!(!shown.contains("secret-jwt-0123") && !shown.contains("basic-secret"));
    }
}

#[test]
fn an_issuer_mismatch_is_refused() {
    let op = OidcProvider::start();
    // The same server under another name: its document says 127.0.0.1.
    let other = op.issuer.replace("127.0.0.1", "localhost");
    let discovery = Discovery::new(&other).unwrap();
    match discovery.metadata() {
        Err(DiscoveryError::IssuerMismatch { expected, found }) => {
            assert_eq!((expected, found), (other.clone(), op.issuer.clone()));
        }
        other => panic!("expected an issuer mismatch, got {other:?}"),
    }
    // Through a source: a permanent error, and nothing is sent to the
    // token endpoint of a document that is not the issuer's.
    let source = ClientCredentials::from_issuer(discovery, "svc-post")
        .client_secret("post-secret-6f1d2c")
        .build()
        .unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Permanent);
    assert!(e.message().contains("is for issuer"), "{e}");
}

#[test]
fn private_key_jwt_with_rs256_ps256_and_es256_from_pem_and_jwk() {
    let op = OidcProvider::start();
    let jwk = |name: &str| std::fs::read_to_string(op.key(name)).unwrap();
    let pem = |name: &str| std::fs::read(op.key(name)).unwrap();
    let cases = [
        (
            "svc-rsa-jwt",
            SigningKey::from_pem(JwsAlgorithm::Rs256, &pem("rsa.pem")).unwrap(),
        ),
        (
            "svc-rsa-jwt",
            SigningKey::from_pem(JwsAlgorithm::Ps256, &pem("rsa.pem")).unwrap(),
        ),
        (
            "svc-rsa-jwt",
            SigningKey::from_jwk(&jwk("rsa.jwk")).unwrap(),
        ),
        (
            "svc-ec-jwt",
            SigningKey::from_pem(JwsAlgorithm::Es256, &pem("ec.pem")).unwrap(),
        ),
        ("svc-ec-jwt", SigningKey::from_jwk(&jwk("ec.jwk")).unwrap()),
    ];
    for (client, key) in cases {
        let alg = key.alg();
        let source = ClientCredentials::builder_without_secret(op.token_url(), client)
            .private_key_jwt(key)
            .scope("api:read")
            .resource(RESOURCE)
            .build()
            .unwrap();
        let answer = source
            .fetch(&FetchRequest::first())
            .unwrap_or_else(|e| panic!("{client} {alg}: {e}"));
        assert_token_for(&answer, client);
        // Debug shows the algorithm and kid, never the key.
        let shown = format!("{source:?}");
        assert!(shown.contains(alg.as_str()), "{shown}");
        let d = serde_json::from_str::<serde_json::Value>(&jwk("rsa.jwk")).unwrap();
        assert!(!shown.contains(d["d"].as_str().unwrap()));
    }
    // ES256 for the RSA client, whose key is RSA: refused locally at load.
    assert!(SigningKey::from_pem(JwsAlgorithm::Es256, &pem("rsa.pem")).is_err());
}

#[test]
fn a_replayed_assertion_is_refused_by_the_server() {
    let op = OidcProvider::start();
    let key = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("rsa.pem")).unwrap();
    let source = ClientCredentials::builder_without_secret(op.token_url(), "svc-rsa-jwt")
        .private_key_jwt(key)
        .assertion_jti(|| "the-same-jti-every-time".to_owned())
        .scope("api:read")
        .resource(RESOURCE)
        .build()
        .unwrap();
    assert_token_for(
        &source.fetch(&FetchRequest::first()).unwrap(),
        "svc-rsa-jwt",
    );
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.status(), e.error_code()),
        (FetchErrorKind::Permanent, Some(401), Some("invalid_client"))
    );
}

#[test]
fn a_wrong_key_is_permanent_with_the_permanent_backoff() {
    let op = OidcProvider::start();
    let stranger = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("stranger.pem")).unwrap();
    let source = ClientCredentials::builder_without_secret(op.token_url(), "svc-rsa-jwt")
        .private_key_jwt(stranger)
        .scope("api:read")
        .build()
        .unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.status(), e.error_code()),
        (FetchErrorKind::Permanent, Some(401), Some("invalid_client")),
        "{e}"
    );
    let (lo, _) = MachineConfig::default().backoff.bounds(&e, 1);
    assert!(lo >= Duration::from_secs(60), "{lo:?}");

    // An ES256 signature for a client registered for RS256 keys.
    let ec = SigningKey::from_pem_file(JwsAlgorithm::Es256, op.key("ec.pem")).unwrap();
    let source = ClientCredentials::builder_without_secret(op.token_url(), "svc-rsa-jwt")
        .private_key_jwt(ec)
        .build()
        .unwrap();
    assert_eq!(
        source.fetch(&FetchRequest::first()).unwrap_err().kind(),
        FetchErrorKind::Permanent
    );
    // A client_secret_jwt signed with a wrong secret.
    let source = ClientCredentials::builder_without_secret(op.token_url(), "svc-secret-jwt")
        .client_secret("not-the-secret-but-long-enough-for-hs256!")
        .client_secret_jwt()
        .build()
        .unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Permanent);
    assert!(!e.to_string().contains("not-the-secret"));
}

/// Plays the kubelet: signs a federated assertion for `workload` with the
/// key the server trusts for it.
fn federated_assertion(op: &OidcProvider, jti: &str, exp_in: i64) -> String {
    let key = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("kubelet.pem")).unwrap();
    let now = now();
    let mut claims =
        AssertionClaims::client_assertion("workload", op.token_url(), jti, now, Duration::ZERO);
    claims.issued_at = now.saturating_sub(Duration::from_secs(600));
    claims.expires_at = now.offset_millis(exp_in * 1000);
    let input = signing_input(&JwsHeader::new(JwsAlgorithm::Rs256), &claims).unwrap();
    let signature = key.sign(input.as_bytes()).unwrap();
    assemble(&input, &signature).expose_secret().to_owned()
}

/// Lays out a projected volume the way the kubelet does:
/// `dir/token -> ..data/token`, `..data -> ..<generation>`, replaced by
/// swapping the `..data` symlink.
fn kubelet_write(dir: &Path, generation: usize, token: &str) {
    let real = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("token"), format!("{token}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("token");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/token", &link).unwrap();
    }
}

#[test]
fn a_federated_assertion_file_is_rotated_deleted_and_expires() {
    let op = OidcProvider::start();
    let volume = tempfile::tempdir().unwrap();
    let token_path = volume.path().join("token");
    let source = ClientCredentials::builder_without_secret(op.token_url(), "workload")
        .client_assertion_file(&token_path)
        .scope("api:read")
        .resource(RESOURCE)
        .build()
        .unwrap();

    // Not there yet: a typed, transient error, and no request.
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.message().contains("does not exist"), "{e}");

    let first = federated_assertion(&op, "kube-1", 3600);
    kubelet_write(volume.path(), 1, &first);
    assert_token_for(&source.fetch(&FetchRequest::first()).unwrap(), "workload");

    // oidc-provider takes each client assertion once: the same file again
    // is refused, and as the file is unchanged and fresh, that is
    // permanent (it would be refused again).
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.error_code()),
        (FetchErrorKind::Permanent, Some("invalid_client"))
    );

    // Rotated (the ..data symlink swapped): the next fetch uses the new one.
    kubelet_write(volume.path(), 2, &federated_assertion(&op, "kube-2", 3600));
    assert_token_for(&source.fetch(&FetchRequest::first()).unwrap(), "workload");

    // Deleted: typed and transient; back: used.
    std::fs::remove_dir_all(volume.path().join("..gen_2")).unwrap();
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient);
    assert!(e.message().contains("does not exist"), "{e}");
    let (_, hi) = MachineConfig::default().backoff.bounds(&e, 1);
    assert!(
        hi <= Duration::from_secs(15),
        "a missing file is retried soon"
    );
    kubelet_write(volume.path(), 3, &federated_assertion(&op, "kube-3", 3600));
    assert_token_for(&source.fetch(&FetchRequest::first()).unwrap(), "workload");

    // Expired (and about to expire): not sent, typed, transient.
    for exp_in in [-5, 10] {
        let stale = federated_assertion(&op, &format!("kube-stale{exp_in}"), exp_in);
        kubelet_write(volume.path(), 4, &stale);
        let e = source.fetch(&FetchRequest::first()).unwrap_err();
        assert_eq!(e.kind(), FetchErrorKind::Transient);
        assert!(e.message().contains("expired"), "{e}");
        assert!(!e.to_string().contains(&stale));
    }
    // Mode 0644, as projected tokens often are: accepted.
    kubelet_write(volume.path(), 5, &federated_assertion(&op, "kube-5", 3600));
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        volume.path().join("..gen_5/token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_token_for(&source.fetch(&FetchRequest::first()).unwrap(), "workload");
}

/// Sends through ureq, and rotates the assertion file while the request
/// is in flight (after it was read, before the answer): the kubelet
/// renewing the token at the worst moment.
struct RotateDuringRequest {
    inner: UreqTransport,
    rotate: Box<dyn Fn() + Send + Sync>,
    sent: Arc<AtomicUsize>,
}

impl HttpTransport for RotateDuringRequest {
    fn send(&self, request: &HttpRequest, max_body: usize) -> Result<HttpResponse, FetchError> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.send(request, max_body);
        (self.rotate)();
        answer
    }
}

#[test]
fn a_refusal_of_an_assertion_renewed_in_flight_is_retried_not_permanent() {
    let op = OidcProvider::start();
    let volume = tempfile::tempdir().unwrap();
    let token_path = volume.path().join("token");
    let used = federated_assertion(&op, "kube-used", 3600);
    kubelet_write(volume.path(), 1, &used);
    // Spend it, so that the server refuses it next time.
    let plain = ClientCredentials::builder_without_secret(op.token_url(), "workload")
        .client_assertion_file(&token_path)
        .build()
        .unwrap();
    plain.fetch(&FetchRequest::first()).unwrap();

    let renewed = federated_assertion(&op, "kube-renewed", 3600);
    let dir = volume.path().to_owned();
    let sent = Arc::new(AtomicUsize::new(0));
    let source = ClientCredentials::builder_without_secret(op.token_url(), "workload")
        .client_assertion_file(&token_path)
        .scope("api:read")
        .resource(RESOURCE)
        .transport(RotateDuringRequest {
            inner: UreqTransport::new(),
            rotate: Box::new(move || kubelet_write(&dir, 2, &renewed)),
            sent: sent.clone(),
        })
        .build()
        .unwrap();
    // The spent assertion is refused; the file now holds a new one, so the
    // refusal is transient (a quick retry), not a permanent failure.
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(
        (e.kind(), e.error_code()),
        (FetchErrorKind::Transient, Some("invalid_client")),
        "{e}"
    );
    assert_token_for(&source.fetch(&FetchRequest::first()).unwrap(), "workload");
    assert_eq!(sent.load(Ordering::SeqCst), 2);
}

#[test]
fn client_assertions_from_a_closure() {
    let op = OidcProvider::start();
    let seen = Arc::new(AtomicUsize::new(0));
    let calls = seen.clone();
    let token_url = op.token_url();
    let kubelet = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("kubelet.pem")).unwrap();
    let source = ClientCredentials::builder_without_secret(op.token_url(), "workload")
        .client_assertion_fn(move |ctx| {
            // What the source tells the closure.
            assert_eq!(
                (ctx.client_id, ctx.token_endpoint),
                ("workload", token_url.as_str())
            );
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let claims = AssertionClaims::client_assertion(
                ctx.client_id,
                ctx.token_endpoint,
                format!("from-closure-{n}"),
                ctx.now,
                Duration::from_secs(300),
            );
            let input = signing_input(&JwsHeader::new(JwsAlgorithm::Rs256), &claims)?;
            let signature = kubelet
                .sign(input.as_bytes())
                .map_err(|e| FetchError::permanent(e.to_string()))?;
            Ok(assemble(&input, &signature))
        })
        .scope("api:read")
        .resource(RESOURCE)
        .build()
        .unwrap();
    for _ in 0..2 {
        assert_token_for(&source.fetch(&FetchRequest::first()).unwrap(), "workload");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[test]
fn the_refresh_token_flow_with_private_key_jwt_rotates() {
    let op = OidcProvider::start();
    let redirect = "http://127.0.0.1:9/callback";
    let code = op.authorization_code("app-jwt", redirect);
    // Redeem the code with a private_key_jwt assertion made by hand.
    let key = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("rsa.pem")).unwrap();
    let claims = AssertionClaims::client_assertion(
        "app-jwt",
        op.token_url(),
        "redeem-1",
        now(),
        Duration::from_secs(60),
    );
    let input = signing_input(
        &JwsHeader::new(JwsAlgorithm::Rs256).with_kid("rsa-1"),
        &claims,
    )
    .unwrap();
    let assertion = assemble(&input, &key.sign(input.as_bytes()).unwrap());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut response = agent
        .post(op.token_url())
        .content_type("application/x-www-form-urlencoded")
        .send(format!(
            "grant_type=authorization_code&code={code}&redirect_uri={redirect}&client_id=app-jwt\
             &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
             &client_assertion={}",
            assertion.expose_secret()
        ))
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let mut refresh = RefreshToken::new(body["refresh_token"].as_str().expect("a refresh token"));

    let source = RefreshTokenSource::from_issuer(Discovery::new(&op.issuer).unwrap(), "app-jwt")
        .private_key_jwt(key.with_kid("rsa-1"))
        .build()
        .unwrap();
    for attempt in 1..=2 {
        let answer = source
            .fetch(&FetchRequest::new(attempt, Some(refresh.clone())))
            .unwrap();
        let rotated = answer.refresh_token.expect("rotated");
        assert_ne!(rotated, refresh);
        refresh = rotated;
    }
    // The refresh token, not the assertion, is what invalid_grant is
    // about here: a revoked grant, as for any refresh-token source.
    let e = source
        .fetch(&FetchRequest::new(
            3,
            Some(RefreshToken::new("not-a-refresh-token")),
        ))
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::GrantRevoked);
}
