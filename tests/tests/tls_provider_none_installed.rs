//! No part of freshtoken installs a process-wide rustls crypto provider:
//! an application that has installed none uses every TLS-capable part, and
//! can still install its own afterwards with `.expect()`. Its own test
//! binary: the provider is process-wide state.

mod tls_support;

use freshtoken::CacheErrorKind;
use rustls::crypto::CryptoProvider;
use tls_support::{postgres_round_trip, redis_round_trips, rediss_builds, HttpsAuthority};

#[test]
fn no_part_of_freshtoken_installs_a_process_wide_provider() {
    assert!(CryptoProvider::get_default().is_none());

    // OAuth2 over https (ureq, which falls back to ring's provider, given
    // to its own configuration), with a private CA and the platform
    // verifier; the PostgreSQL cache over TLS (ring's, given explicitly).
    let authority = HttpsAuthority::start();
    assert_eq!(authority.fetch_with_its_ca(), "at-over-tls");
    let refused = authority.fetch_with_the_platform_verifier().unwrap_err();
    println!("the platform verifier and the test CA: {refused}");
    postgres_round_trip();

    // rediss:// needs the process-wide provider (the redis crate has no
    // other way): every kind of cache says so when it is built.
    for built in rediss_builds() {
        let err = built.expect_err("a rediss:// cache without a provider");
        assert_eq!(err.kind(), CacheErrorKind::Io, "{err}");
        assert!(err.to_string().contains("install_default"), "{err}");
    }
    assert!(
        CryptoProvider::get_default().is_none(),
        "freshtoken installed a process-wide provider"
    );

    // The application installs its own now, as rustls' docs show: no panic,
    // and rediss:// works with it.
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("no provider installed before the application's");
    for built in rediss_builds() {
        built.expect("a rediss:// cache with the application's provider");
    }
    redis_round_trips();
}
