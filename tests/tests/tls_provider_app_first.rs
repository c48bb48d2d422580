//! An application that installs its own process-wide rustls crypto provider
//! first uses every TLS-capable part of freshtoken, and its provider is
//! neither replaced nor changed. Its own test binary: the provider is
//! process-wide state.
//!
//! The application's provider is ring's restricted to one cipher suite
//! (TLS 1.3 ChaCha20-Poly1305), so that it is recognisably its own and what
//! uses it can be seen on the wire: the OAuth2 transport (ureq) takes the
//! process-wide provider when there is one. (aws-lc-rs would do as well; it
//! is not in this tree.)

mod tls_support;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::CipherSuite;
use tls_support::{postgres_round_trip, redis_round_trips, rediss_builds, HttpsAuthority};

#[test]
fn the_applications_provider_is_used_and_kept() {
    let mut ours = rustls::crypto::ring::default_provider();
    ours.cipher_suites
        .retain(|s| s.suite() == CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    assert_eq!(ours.cipher_suites.len(), 1);
    ours.install_default().expect("no provider installed yet");
    let installed = CryptoProvider::get_default().expect("installed").clone();

    let authority = HttpsAuthority::start();
    assert_eq!(authority.fetch_with_its_ca(), "at-over-tls");
    assert_eq!(
        authority.suites(),
        ["TLS13_CHACHA20_POLY1305_SHA256"],
        "ureq used the application's provider"
    );
    authority.fetch_with_the_platform_verifier().unwrap_err();
    postgres_round_trip();
    for built in rediss_builds() {
        built.expect("a rediss:// cache");
    }
    redis_round_trips();

    let after = CryptoProvider::get_default().expect("still installed");
    assert!(Arc::ptr_eq(&installed, after), "the provider was replaced");
    assert_eq!(after.cipher_suites.len(), 1);
}
