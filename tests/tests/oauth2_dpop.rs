//! DPoP (RFC 9449) token requests against a real authority on loopback that
//! validates every proof fully and binds its tokens and refresh tokens to
//! the proof's key (`dpop_support::authority`); and against panva's
//! oidc-provider with DPoP-bound tokens and nonces required.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshtoken::oauth2::{
    ClientAuth, ClientCredentials, DpopKey, HttpRequest, HttpResponse, HttpTransport,
    RefreshTokenSource, UreqTransport,
};
use freshtoken::source::{FetchRequest, TokenSource};
use freshtoken::{Builder, FetchError, FetchErrorKind, RefreshToken};

use base64::Engine as _;

mod dpop_support;
mod metrics_support;
mod oauth2_common;
mod oidc_support;

use dpop_support::authority::{Authority, NonceMode, CLIENT, SECRET};
use dpop_support::{b64, b64url, validate_proof};
use oauth2_common::claims;
use oidc_support::OidcProvider;

fn client_credentials(authority: &Authority, key: &DpopKey) -> ClientCredentials {
    ClientCredentials::builder(authority.url.as_str(), CLIENT, SECRET)
        .dpop(key.clone())
        .build()
        .unwrap()
}

#[test]
fn client_credentials_with_proofs_and_the_nonce_dance() {
    let authority = Authority::start(NonceMode::RotateOnSuccess, 300);
    let key = DpopKey::generate().unwrap();
    let source = client_credentials(&authority, &key);

    let first = source.fetch(&FetchRequest::first()).unwrap();
    assert_eq!(first.token_type, "DPoP");
    assert_eq!(
        first.access_token.expose_secret(),
        format!("at-1-{}", key.thumbprint())
    );
    {
        let s = authority.state();
        // The first proof had no nonce: refused once, answered at once.
        assert_eq!((s.requests, s.challenges, s.issued), (2, 1, 1));
    }

    // The nonce that came with the token is used from then on: no more
    // challenges though it changes with every token.
    for n in 2..=4 {
        let answer = source.fetch(&FetchRequest::first()).unwrap();
        assert_eq!(
            answer.access_token.expose_secret(),
            format!("at-{n}-{}", key.thumbprint())
        );
    }
    let s = authority.state();
    assert!(s.refused.is_empty(), "refused proofs: {:?}", s.refused);
    assert_eq!((s.requests, s.challenges, s.issued), (5, 1, 4));
    let nonces: Vec<_> = s.accepted.iter().map(|p| p.nonce.clone()).collect();
    assert_eq!(
        nonces,
        ["nonce-0", "nonce-1", "nonce-2", "nonce-3"].map(|n| Some(n.to_owned()))
    );
    assert!(s.accepted.iter().all(|p| p.jkt == key.thumbprint()));
}

#[test]
fn a_driver_fetches_and_refreshes_bound_tokens_with_distinct_proofs() {
    // 2 s tokens: the driver refreshes each before it expires.
    let authority = Authority::start(NonceMode::RotateOnSuccess, 2);
    let key = DpopKey::generate().unwrap();
    authority.seed_refresh_token("rt-0", key.thumbprint());
    let source = RefreshTokenSource::builder(authority.url.as_str(), "desktop")
        .refresh_token(RefreshToken::new("rt-0"))
        .dpop(key.clone())
        .build()
        .unwrap();
    let (tokens, driver) = Builder::new().spawn_thread(source).unwrap();

    // Three tokens: the first and two refreshes, each with the refresh
    // token the last answer rotated to (bound to the same key).
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} tokens",
            seen.len()
        );
        let token = tokens.wait_ready(Duration::from_secs(30)).unwrap();
        let header = token.authorization_header();
        if seen.last() != Some(&header) {
            seen.push(header);
        }
        drop(token);
        tokens.wait_changed(Duration::from_secs(10)).unwrap();
    }
    driver.shutdown_blocking();

    // Each `DPoP at-<n>-<jkt>`, n growing (a wait may miss one).
    let mut last = 0;
    for header in &seen {
        let rest = header.strip_prefix("DPoP at-").expect(header);
        let (n, jkt) = rest.split_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        assert!(n > last, "{seen:?}");
        assert_eq!(jkt, key.thumbprint());
        last = n;
    }
    let s = authority.state();
    assert!(s.refused.is_empty(), "refused proofs: {:?}", s.refused);
    // One challenge, for the very first request; the rest carried the
    // nonce of the answer before.
    assert_eq!(s.challenges, 1);
    assert!(s.issued >= 3);
    let jtis: HashSet<_> = s.accepted.iter().map(|p| p.jti.clone()).collect();
    assert_eq!(jtis.len(), s.accepted.len(), "a jti was reused");
    // Every proof the authority saw (refused for want of a nonce or not)
    // had its own jti: the validator refuses a replay.
    assert_eq!(s.jtis.len(), s.requests);
}

#[test]
fn a_nonce_refused_twice_is_a_transient_error_after_two_requests() {
    let authority = Authority::start(NonceMode::NeverSatisfied, 300);
    let source = client_credentials(&authority, &DpopKey::generate().unwrap());
    let e = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Transient, "{e}");
    assert_eq!(e.error_code(), Some("use_dpop_nonce"));
    assert_eq!(e.status(), Some(400));
    {
        let s = authority.state();
        assert_eq!((s.requests, s.challenges), (2, 2), "never a loop");
        assert!(s.refused.is_empty(), "{:?}", s.refused);
    }
    // The next fetch starts with the latest nonce, and again retries once.
    let _ = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(authority.state().requests, 4);
}

#[test]
fn a_refresh_token_bound_to_another_key_is_refused() {
    let authority = Authority::start(NonceMode::RotateOnSuccess, 300);
    let owner = DpopKey::generate().unwrap();
    authority.seed_refresh_token("rt-0", owner.thumbprint());
    let thief = RefreshTokenSource::builder(authority.url.as_str(), "desktop")
        .dpop(DpopKey::generate().unwrap())
        .build()
        .unwrap();
    let request = FetchRequest::new(1, Some(RefreshToken::new("rt-0")));
    let e = thief.fetch(&request).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::GrantRevoked, "{e}");
    let owner_source = RefreshTokenSource::builder(authority.url.as_str(), "desktop")
        .dpop(owner.clone())
        .build()
        .unwrap();
    let answer = owner_source.fetch(&request).unwrap();
    assert_eq!(answer.token_type, "DPoP");
    assert_eq!(answer.refresh_token.unwrap().expose_secret(), "rt-1");
}

/// The authority's validator is what the tests above lean on: it refuses
/// proofs that are wrong in each way.
#[test]
fn the_validator_refuses_bad_proofs() {
    let url = "http://127.0.0.1:1/token";
    let key = DpopKey::generate().unwrap();
    let other = DpopKey::generate().unwrap();
    let mut jtis = HashSet::new();
    let good = key.proof("POST", url).sign().unwrap();
    let good = good.expose_secret();
    assert!(validate_proof(good, "POST", url, &mut jtis).is_ok());
    assert!(validate_proof(good, "POST", url, &mut jtis)
        .unwrap_err()
        .contains("replayed"));

    let sign = |k: &DpopKey, htm: &str, u: &str| k.proof(htm, u).sign().unwrap();
    let wrong_method = sign(&key, "GET", url);
    assert!(
        validate_proof(wrong_method.expose_secret(), "POST", url, &mut jtis)
            .unwrap_err()
            .contains("htm")
    );
    let wrong_url = sign(&key, "POST", "http://127.0.0.1:1/other");
    assert!(
        validate_proof(wrong_url.expose_secret(), "POST", url, &mut jtis)
            .unwrap_err()
            .contains("htu")
    );
    let old = key
        .proof("POST", url)
        .issued_at(freshtoken::Timestamp::from_secs(1_000))
        .sign()
        .unwrap();
    assert!(validate_proof(old.expose_secret(), "POST", url, &mut jtis)
        .unwrap_err()
        .contains("iat"));

    // Another key's signature under this key's header.
    let a: Vec<&str> = good.split('.').collect();
    let forged_by = sign(&other, "POST", url);
    let b: Vec<String> = forged_by
        .expose_secret()
        .split('.')
        .map(str::to_owned)
        .collect();
    let forged = format!("{}.{}.{}", a[0], b[1], b[2]);
    assert!(validate_proof(&forged, "POST", url, &mut jtis)
        .unwrap_err()
        .contains("signature"));

    // A `typ` other than dpop+jwt (re-signed, so only the typ is wrong).
    let header: serde_json::Value = serde_json::from_slice(&b64(a[0]).unwrap()).unwrap();
    let mut typ_jwt = header.clone();
    typ_jwt["typ"] = "JWT".into();
    let h = b64url(&serde_json::to_vec(&typ_jwt).unwrap());
    let bad = format!("{h}.{}.{}", a[1], a[2]);
    assert!(validate_proof(&bad, "POST", url, &mut jtis)
        .unwrap_err()
        .contains("typ"));
}

/// The built-in transport, recording each answer's status and whether a
/// request carried a proof.
struct Recording {
    inner: UreqTransport,
    log: Arc<Mutex<Vec<(u16, bool)>>>,
}

impl HttpTransport for Recording {
    fn send(&self, request: &HttpRequest, max_body: usize) -> Result<HttpResponse, FetchError> {
        let proof = request.headers().any(|(name, _)| name == "DPoP");
        let answer = self.inner.send(request, max_body)?;
        self.log.lock().unwrap().push((answer.status(), proof));
        Ok(answer)
    }
}

const API: &str = "https://api.freshtoken.test/";

#[test]
fn oidc_provider_issues_bound_tokens_after_the_nonce_dance() {
    let op = OidcProvider::start();
    let key = DpopKey::generate().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let source = ClientCredentials::builder(op.token_url(), "svc-dpop", "dpop-secret-2b8e4f")
        .client_auth(ClientAuth::Post)
        .scope("api:read")
        .resource(API)
        .transport(Recording {
            inner: UreqTransport::new(),
            log: log.clone(),
        })
        .dpop(key.clone())
        .build()
        .unwrap();

    let first = source.fetch(&FetchRequest::first()).unwrap();
    assert_eq!(first.token_type, "DPoP");
    // A JWT for the resource, bound to the key: cnf.jkt is its thumbprint.
    let c = claims(first.access_token.expose_secret());
    assert_eq!(c["cnf"]["jkt"], key.thumbprint());
    assert_eq!(c["aud"], API);
    // The proof without a nonce was refused with one, and the request sent
    // again at once with it.
    assert_eq!(*log.lock().unwrap(), [(400, true), (200, true)]);

    // The nonce kept from then on: one request per fetch.
    let second = source.fetch(&FetchRequest::first()).unwrap();
    assert_eq!(second.token_type, "DPoP");
    assert_eq!(
        claims(second.access_token.expose_secret())["cnf"]["jkt"],
        key.thumbprint()
    );
    assert_eq!(log.lock().unwrap().len(), 3, "{:?}", log.lock().unwrap());

    // This client's tokens are DPoP-bound only: without a proof, refused.
    let unbound = ClientCredentials::builder(op.token_url(), "svc-dpop", "dpop-secret-2b8e4f")
        .client_auth(ClientAuth::Post)
        .scope("api:read")
        .resource(API)
        .build()
        .unwrap();
    let e = unbound.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Permanent, "{e}");
}

/// Sends through ureq and keeps every proof sent.
struct ProofRecorder {
    inner: UreqTransport,
    proofs: Arc<Mutex<Vec<String>>>,
}

impl HttpTransport for ProofRecorder {
    fn send(&self, request: &HttpRequest, max_body: usize) -> Result<HttpResponse, FetchError> {
        let mut proofs = self.proofs.lock().unwrap();
        proofs.extend(
            request
                .headers()
                .filter(|(name, _)| *name == "DPoP")
                .map(|(_, v)| v.to_owned()),
        );
        drop(proofs);
        self.inner.send(request, max_body)
    }
}

#[test]
fn no_private_key_or_proof_is_logged_shown_or_in_an_error() {
    use freshtoken_tests::log_capture::Capture;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    // ring's P-256 PKCS#8: the private scalar follows `04 20` at offset 34.
    assert_eq!(&pkcs8.as_ref()[34..36], &[0x04, 0x20]);
    let scalar = pkcs8.as_ref()[36..68].to_vec();
    let key = DpopKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();

    let log = Arc::new(Mutex::new(String::new()));
    let proofs = Arc::new(Mutex::new(Vec::new()));
    let mut shown = String::new();
    tracing::subscriber::with_default(Capture(log.clone()), || {
        for mode in [NonceMode::RotateOnSuccess, NonceMode::NeverSatisfied] {
            let authority = Authority::start(mode, 300);
            let source = ClientCredentials::builder(authority.url.as_str(), CLIENT, SECRET)
                .transport(ProofRecorder {
                    inner: UreqTransport::new(),
                    proofs: proofs.clone(),
                })
                .dpop(key.clone())
                .build()
                .unwrap();
            for _ in 0..2 {
                match source.fetch(&FetchRequest::first()) {
                    Ok(answer) => shown.push_str(&format!("{answer:?}\n")),
                    Err(e) => shown.push_str(&format!("{e}\n{e:?}\n")),
                }
            }
            shown.push_str(&format!("{source:?}\n{key:?}\n"));
        }
    });
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("requesting a token"),
        "nothing captured: {log}"
    );
    assert!(
        log.contains("DPoP nonce"),
        "the nonce retry is logged: {log}"
    );
    let proofs = proofs.lock().unwrap().clone();
    // 2 + 1 requests to the first authority, 2 + 2 to the second.
    assert_eq!(proofs.len(), 7);
    let mut secrets: Vec<String> = vec![
        b64url(&scalar),
        base64::engine::general_purpose::STANDARD.encode(&scalar),
        scalar.iter().map(|b| format!("{b:02x}")).collect(),
        format!("{scalar:?}"),
    ];
    for proof in &proofs {
        secrets.push(proof.clone());
        // The signature part alone, and the claims (with the jti).
        secrets.extend(proof.split('.').skip(1).map(str::to_owned));
    }
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} logged");
        assert!(
            !shown.contains(secret.as_str()),
            "{secret} shown in {shown}"
        );
    }
    assert!(shown.contains(key.thumbprint()));
}

/// The async sources (here over reqwest, in a tokio driver's task) send
/// the same proofs and dance the same way.
#[test]
fn an_async_source_sends_proofs_and_keeps_the_nonce() {
    use freshtoken::driver::AsyncSource;
    use freshtoken::oauth2::ReqwestTransport;
    use freshtoken::runtime::Tokio;

    let authority = Authority::start(NonceMode::RotateOnSuccess, 2);
    let key = DpopKey::generate().unwrap();
    let source = ClientCredentials::builder(authority.url.as_str(), CLIENT, SECRET)
        .async_transport(ReqwestTransport::new().unwrap())
        .dpop(key.clone())
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (tokens, driver) = Builder::new().spawn(Tokio::current().unwrap(), AsyncSource(source));
        // Two tokens: the first and a refresh (2 s tokens).
        let mut first = None;
        loop {
            let token = tokio::time::timeout(Duration::from_secs(60), tokens.ready())
                .await
                .expect("a token within a minute")
                .unwrap();
            let header = token.authorization_header();
            drop(token);
            match &first {
                None => first = Some(header),
                Some(f) if *f != header => {
                    assert!(header.starts_with("DPoP at-"), "{header}");
                    break;
                }
                Some(_) => {}
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), tokens.changed()).await;
        }
        driver.shutdown().await;
    });
    let s = authority.state();
    assert!(s.refused.is_empty(), "refused proofs: {:?}", s.refused);
    assert_eq!(s.challenges, 1);
    assert!(s.issued >= 2);
    assert!(s.accepted.iter().all(|p| p.jkt == key.thumbprint()));
}

/// Redeems a code of `app-dpop` with proofs of `key` (answering the nonce
/// challenge by hand): the refresh token, bound to `key`.
fn redeem_bound_code(op: &OidcProvider, key: &DpopKey) -> RefreshToken {
    const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
    let code = op.authorization_code("app-dpop", REDIRECT_URI);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut nonce: Option<String> = None;
    for _ in 0..2 {
        let url = op.token_url();
        let mut proof = key.proof("POST", &url);
        if let Some(n) = &nonce {
            proof = proof.nonce(n);
        }
        let proof = proof.sign().unwrap();
        let mut response = agent
            .post(&url)
            .header("DPoP", proof.expose_secret())
            .content_type("application/x-www-form-urlencoded")
            .send(format!(
                "grant_type=authorization_code&code={code}&redirect_uri={REDIRECT_URI}\
                 &client_id=app-dpop"
            ))
            .unwrap();
        let given = response
            .headers()
            .get("dpop-nonce")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: serde_json::Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        if body["error"] == "use_dpop_nonce" {
            nonce = given;
            continue;
        }
        assert_eq!(body["token_type"], "DPoP", "{body}");
        let rt = body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no refresh token in the code exchange: {body}"));
        return RefreshToken::new(rt);
    }
    panic!("the code exchange wanted more than one nonce");
}

#[test]
fn oidc_provider_rotates_a_bound_refresh_token_and_refuses_it_to_another_key() {
    let op = OidcProvider::start();
    let key = DpopKey::generate().unwrap();
    let refresh_token = redeem_bound_code(&op, &key);
    let source = |k: &DpopKey| {
        RefreshTokenSource::builder(op.token_url(), "app-dpop")
            .dpop(k.clone())
            .build()
            .unwrap()
    };

    // Another key: refused (oidc-provider's jkt check; its description is
    // hidden), and the token not consumed: the owner's key, and nothing
    // else, makes the same request succeed below.
    let thief = source(&DpopKey::generate().unwrap());
    let e = thief
        .fetch(&FetchRequest::new(1, Some(refresh_token.clone())))
        .unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::GrantRevoked, "{e}");

    // The key it is bound to: two refreshes, each rotating it.
    let owner = source(&key);
    let mut current = refresh_token;
    for _ in 0..2 {
        let answer = owner
            .fetch(&FetchRequest::new(1, Some(current.clone())))
            .unwrap();
        assert_eq!(answer.token_type, "DPoP");
        let rotated = answer.refresh_token.expect("a rotated refresh token");
        assert_ne!(rotated.expose_secret(), current.expose_secret());
        current = rotated;
    }
}

/// Two instances sharing one file cache: with the same key the second
/// adopts the first's bound token; with another key it finds no token
/// there (the record is bound to the key's thumbprint) and fetches its
/// own, bound to its own key. The keys are loaded, as a fleet that shares
/// a key does (a generated key's tokens are never cached: see
/// builder_cache_names).
#[test]
fn a_shared_cache_serves_a_bound_token_only_to_the_holder_of_its_key() {
    let authority = Authority::start(NonceMode::RotateOnSuccess, 300);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let load = || DpopKey::from_pkcs8_der(&dpop_support::pkcs8_key()).unwrap();
    let (key, other) = (load(), load());
    let header = |key: &DpopKey| {
        let (tokens, driver) = Builder::new()
            .cache(freshtoken::cache::FileCache::new(&path))
            .spawn_thread(client_credentials(&authority, key))
            .unwrap();
        let header = tokens
            .wait_ready(Duration::from_secs(30))
            .unwrap()
            .authorization_header();
        driver.shutdown_blocking();
        header
    };
    let first = header(&key);
    assert_eq!(first, format!("DPoP at-1-{}", key.thumbprint()));
    // The same key: the cached token, no request.
    assert_eq!(header(&key), first);
    assert_eq!(authority.state().issued, 1);
    // Another key: its own token.
    assert_eq!(header(&other), format!("DPoP at-2-{}", other.thumbprint()));
    assert_eq!(authority.state().issued, 2);
    // And the first key, finding the other's record, fetches again rather
    // than adopt a token it cannot present.
    assert_eq!(header(&key), format!("DPoP at-3-{}", key.thumbprint()));
    let s = authority.state();
    assert!(s.refused.is_empty(), "refused proofs: {:?}", s.refused);
}

/// The metrics count the authority's proofs and nonce retries. Other tests
/// of this binary sign proofs at the same time, so the counts grow by at
/// least what this one did.
#[test]
fn proofs_and_nonce_retries_are_counted() {
    use freshtoken::metrics::names;
    let recording = metrics_support::Recording::global();
    let count = |name| recording.counter_without_refresher(name, &[("server", "authority")]);
    let (proofs, retries) = (
        count(names::DPOP_PROOFS_TOTAL),
        count(names::DPOP_NONCE_RETRIES_TOTAL),
    );
    let authority = Authority::start(NonceMode::NeverSatisfied, 300);
    let source = client_credentials(&authority, &DpopKey::generate().unwrap());
    let _ = source.fetch(&FetchRequest::first()).unwrap_err();
    assert_eq!(authority.state().requests, 2);
    assert!(count(names::DPOP_PROOFS_TOTAL) - proofs >= 2);
    assert!(count(names::DPOP_NONCE_RETRIES_TOTAL) - retries >= 1);
}
