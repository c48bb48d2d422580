//! Keys, client assertions and secrets never reach the logs, `Debug` or
//! error messages: every span and event field written while sources sign,
//! send, succeed and fail against oidc-provider is captured (by a
//! process-wide subscriber) and searched for the key material and for every
//! assertion that was actually sent (recorded by a wrapping transport).
//! Claims appear by name only.
//!
//! Needs Node.js and `tests/oidc/node_modules`: run `.ci/setup-oidc.sh`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

mod oidc_support;

use freshtoken::oauth2::JwsAlgorithm;
use freshtoken::oauth2::{ClientCredentials, HttpTransport, JwtBearer, SigningKey, UreqTransport};
use freshtoken::oauth2::{HttpRequest, HttpResponse};
use freshtoken::source::FetchRequest;
use freshtoken::source::TokenSource;
use freshtoken::FetchError;
use freshtoken_tests::log_capture::Capture;
use oidc_support::OidcProvider;

/// Sends through ureq and keeps every request body (the assertions).
struct Recording {
    inner: UreqTransport,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl HttpTransport for Recording {
    fn send(&self, request: &HttpRequest, max_body: usize) -> Result<HttpResponse, FetchError> {
        self.bodies
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(request.body()).into_owned());
        self.inner.send(request, max_body)
    }
}

#[test]
fn no_key_assertion_or_secret_is_logged_shown_or_in_an_error() {
    let log = Arc::new(Mutex::new(String::new()));
    tracing::subscriber::set_global_default(Capture(log.clone())).expect("first subscriber");
    let op = OidcProvider::start();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let recording = || Recording {
        inner: UreqTransport::new(),
        bodies: bodies.clone(),
    };
    const SECRET: &str = "secret-jwt-0123456789abcdef0123456789abcdef";

    let rsa = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("rsa.pem")).unwrap();
    let ec = SigningKey::from_jwk(&std::fs::read_to_string(op.key("ec.jwk")).unwrap()).unwrap();
    let stranger = SigningKey::from_pem_file(JwsAlgorithm::Ps256, op.key("stranger.pem")).unwrap();
    let robot = SigningKey::from_pem_file(JwsAlgorithm::Rs256, op.key("robot.pem")).unwrap();
    let sources: Vec<Box<dyn TokenSource>> = vec![
        Box::new(
            ClientCredentials::builder_without_secret(op.token_url(), "svc-rsa-jwt")
                .private_key_jwt(rsa)
                .transport(recording())
                .build()
                .unwrap(),
        ),
        Box::new(
            ClientCredentials::builder_without_secret(op.token_url(), "svc-ec-jwt")
                .private_key_jwt(ec)
                .transport(recording())
                .build()
                .unwrap(),
        ),
        // Refused: the wrong key.
        Box::new(
            ClientCredentials::builder_without_secret(op.token_url(), "svc-rsa-jwt")
                .private_key_jwt(stranger)
                .transport(recording())
                .build()
                .unwrap(),
        ),
        Box::new(
            ClientCredentials::builder(op.token_url(), "svc-secret-jwt", SECRET)
                .client_secret_jwt()
                .transport(recording())
                .build()
                .unwrap(),
        ),
        Box::new(
            JwtBearer::builder(op.token_url(), "robot@freshtoken.test", robot)
                .client_id("sa-bearer")
                .transport(recording())
                .build()
                .unwrap(),
        ),
    ];
    let mut shown = String::new();
    let mut ok = 0;
    for source in &sources {
        match source.fetch(&FetchRequest::first()) {
            Ok(answer) => {
                ok += 1;
                let _ = write!(shown, "{answer:?}");
            }
            Err(e) => {
                let _ = write!(shown, "{e} {e:?}");
            }
        }
    }
    assert_eq!(ok, 4, "{shown}");

    // What must never show: the keys' private parts (a PEM line, the JWK's
    // d), the secret, and every assertion that was sent.
    let mut secrets: Vec<String> = vec![SECRET.to_owned()];
    for name in ["rsa.pem", "stranger.pem", "robot.pem"] {
        let pem = std::fs::read_to_string(op.key(name)).unwrap();
        secrets.extend(pem.lines().filter(|l| l.len() > 40).map(str::to_owned));
    }
    let jwk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(op.key("ec.jwk")).unwrap()).unwrap();
    secrets.push(jwk["d"].as_str().unwrap().to_owned());
    for body in bodies.lock().unwrap().iter() {
        for pair in body.split('&') {
            if let Some(jwt) = pair
                .strip_prefix("client_assertion=")
                .or_else(|| pair.strip_prefix("assertion="))
            {
                secrets.push(jwt.to_owned());
                // Its signature alone, too.
                secrets.push(jwt.rsplit('.').next().unwrap().to_owned());
            }
        }
    }
    assert!(secrets.len() > 10);
    let log = log.lock().unwrap();
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "logged: {secret}\n{log}");
        assert!(!shown.contains(secret.as_str()), "shown: {secret}\n{shown}");
    }
    // Claims by name only.
    assert!(log.contains("signed an assertion"), "{log}");
    assert!(log.contains("\"jti\""), "{log}");
    assert!(log.contains("client_auth=private_key_jwt"), "{log}");
}
