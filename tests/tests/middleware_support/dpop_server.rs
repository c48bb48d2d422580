//! What the DPoP resource servers of the middleware tests share (HTTP in
//! `middleware_dpop`, gRPC in `middleware_tonic`): the checks of RFC 9449 7
//! on one request, what the server saw, and an authority's DPoP-bound
//! tokens. Included with `#[path]` next to `mod dpop_support;`.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use freshtoken::source::{FetchRequest, FnSource, TokenResponse};
use freshtoken::{AccessToken, FetchError};

use crate::dpop_support::{b64, b64url, token_hash, validate_proof};

/// What a resource server saw and did.
#[derive(Default)]
pub struct State {
    pub nonce_counter: u64,
    pub jtis: HashSet<String>,
    /// Tokens refused as revoked.
    pub revoked: HashSet<String>,
    /// Every proof that came (to look for them in logs).
    pub proofs: Vec<String>,
    /// Every token that came.
    pub tokens: HashSet<String>,
    /// Answers in order: 200, or 401 (for gRPC: grpc-status 0, or 16).
    pub statuses: Vec<u16>,
    /// Why proofs or tokens were refused.
    pub refused: Vec<String>,
    /// `use_dpop_nonce` answers given.
    pub challenges: usize,
    /// The `htu` of every proof that was accepted.
    pub htus: Vec<String>,
}

impl State {
    /// The nonce this server wants now.
    pub fn nonce(&self) -> String {
        format!("rs-nonce-{}", self.nonce_counter)
    }
}

/// Why a request was refused: the `error` of the DPoP challenge, and the
/// nonce to give with a `use_dpop_nonce`.
pub struct Refusal {
    pub error: &'static str,
    pub nonce: Option<String>,
}

fn refuse(s: &mut State, error: &'static str, why: String) -> Refusal {
    s.refused.push(why);
    s.statuses.push(401);
    Refusal { error, nonce: None }
}

/// RFC 9449 7 on a request with `method` to `url` (without its query):
/// the token in `Authorization: DPoP`, one proof for this method and URL
/// whose `ath` is the token's hash and whose key is the one the token is
/// bound to (`cnf.jkt`), and the server's current nonce. Records what came
/// and the answer.
pub fn check(
    s: &mut State,
    method: &str,
    url: &str,
    headers: &http::HeaderMap,
) -> Result<(), Refusal> {
    let header = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    };
    let authorization = header("authorization");
    let token = match &authorization[..] {
        [one] => match one.strip_prefix("DPoP ") {
            Some(t) => t.to_owned(),
            None => return Err(refuse(s, "invalid_token", "not the DPoP scheme".into())),
        },
        _ => return Err(refuse(s, "invalid_token", "no single Authorization".into())),
    };
    s.tokens.insert(token.clone());
    let proofs = header("dpop");
    let [proof] = &proofs[..] else {
        let why = format!("{} DPoP headers", proofs.len());
        return Err(refuse(s, "invalid_dpop_proof", why));
    };
    s.proofs.push(proof.clone());
    let (jkt, claims) = match validate_proof(proof, method, url, &mut s.jtis) {
        Ok(ok) => ok,
        Err(why) => return Err(refuse(s, "invalid_dpop_proof", why)),
    };
    if claims["ath"] != token_hash(&token).as_str() {
        let why = "ath is not the token's".into();
        return Err(refuse(s, "invalid_dpop_proof", why));
    }
    let bound = token
        .split('.')
        .nth(1)
        .and_then(b64)
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|p| p["cnf"]["jkt"].as_str().map(str::to_owned));
    if bound.as_deref() != Some(jkt.as_str()) {
        let why = "the proof's key is not the token's".into();
        return Err(refuse(s, "invalid_token", why));
    }
    if s.revoked.contains(&token) {
        return Err(refuse(s, "invalid_token", "revoked".into()));
    }
    if claims["nonce"] != s.nonce().as_str() {
        s.challenges += 1;
        s.statuses.push(401);
        return Err(Refusal {
            error: "use_dpop_nonce",
            nonce: Some(s.nonce()),
        });
    }
    s.htus
        .push(claims["htu"].as_str().unwrap_or_default().to_owned());
    s.statuses.push(200);
    Ok(())
}

/// Reads `req`'s body and [`check`]s it as a request to `base` (the
/// server's `http://host:port`) and its path; the body for the answer.
pub async fn check_request(
    state: &std::sync::Mutex<State>,
    base: &str,
    req: http::Request<hyper::body::Incoming>,
) -> (Result<(), Refusal>, bytes::Bytes) {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let url = format!("{base}{}", parts.uri.path());
    let mut s = state.lock().unwrap();
    (
        check(&mut s, parts.method.as_str(), &url, &parts.headers),
        body,
    )
}

/// The `WWW-Authenticate` value of a refusal.
pub fn challenge(error: &str) -> String {
    format!(r#"DPoP algs="ES256", error="{error}""#)
}

/// Issues DPoP tokens bound to `jkt`: JWT-shaped, with `cnf.jkt` (the
/// resource server reads the binding from it, as it would from a verified
/// JWT), a new one per fetch.
pub fn bound_tokens(jkt: &str, fetches: Arc<AtomicUsize>) -> impl freshtoken::source::TokenSource {
    let jkt = jkt.to_owned();
    FnSource::new(
        move |_: &FetchRequest| -> Result<TokenResponse, FetchError> {
            let n = fetches.fetch_add(1, Ordering::SeqCst);
            let payload = serde_json::json!({"cnf": {"jkt": jkt}, "n": n, "sub": "svc"});
            let token = format!(
                "{}.{}.c2ln",
                b64url(br#"{"alg":"ES256","typ":"at+jwt"}"#),
                b64url(payload.to_string().as_bytes())
            );
            Ok(TokenResponse::new(AccessToken::new(token))
                .with_token_type("DPoP")
                .with_expires_in(Some(3600)))
        },
    )
}

/// A new DPoP key, and a driver on the current tokio runtime whose tokens
/// are bound to it (its first one fetched), with the count of fetches.
pub async fn bound_driver() -> (
    freshtoken::oauth2::DpopKey,
    freshtoken::TokenHandle,
    freshtoken::driver::DriverHandle,
    Arc<AtomicUsize>,
) {
    let key = freshtoken::oauth2::DpopKey::generate().unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let (tokens, driver) = freshtoken::driver::Builder::new()
        .invalidate_interval(std::time::Duration::ZERO)
        .spawn(
            freshtoken::runtime::Tokio::current().expect("a tokio runtime"),
            bound_tokens(key.thumbprint(), fetches.clone()),
        );
    tokens.ready().await.unwrap();
    (key, tokens, driver, fetches)
}

/// Nothing secret in `text`: no proof (nor part of one), no token, no
/// token payload.
pub fn assert_nothing_secret(s: &State, what: &str, text: &str) {
    for proof in &s.proofs {
        assert!(!text.contains(proof.as_str()), "{what} shows a proof");
        for part in proof.split('.') {
            assert!(!text.contains(part), "{what} shows part of a proof");
        }
    }
    for token in &s.tokens {
        assert!(!text.contains(token.as_str()), "{what} shows a token");
        assert!(
            !text.contains(token.split('.').nth(1).unwrap()),
            "{what} shows a token's payload"
        );
    }
}
