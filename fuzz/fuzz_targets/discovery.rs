//! The discovery document parser and the assertion builder fed arbitrary
//! bytes. Neither may panic; an accepted document must satisfy every rule
//! (issuer identical, endpoints https or loopback http, lists bounded),
//! and a built signing input must decode to the claims asked for.
#![no_main]

use std::time::Duration;

use base64::Engine as _;
use freshtoken_core::oauth2::assertion::{signing_input, AssertionClaims, JwsAlgorithm, JwsHeader};
use freshtoken_core::oauth2::check_token_url;
use freshtoken_core::oauth2::discovery::{parse_metadata, well_known_urls, MAX_LIST_ENTRIES};
use freshtoken_core::Timestamp;
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://auth.example.com/tenant";

fuzz_target!(|data: &[u8]| {
    // The document.
    if let Ok(meta) = parse_metadata(data, ISSUER, 64 * 1024) {
        assert_eq!(meta.issuer(), ISSUER);
        assert!(check_token_url(meta.token_endpoint()).is_ok());
        if let Some(alias) = meta.mtls_token_endpoint() {
            assert!(check_token_url(alias).is_ok());
        }
        for list in [
            meta.auth_methods(),
            meta.auth_signing_algs(),
            meta.grant_types(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(list.len() <= MAX_LIST_ENTRIES);
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = well_known_urls(&text);

    // The assertion builder, with the input cut into claims.
    let mut parts = text.splitn(5, '\u{1}');
    let (iss, aud, jti, kid) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let life = data.first().copied().unwrap_or(0) as u64;
    let claims = AssertionClaims::client_assertion(
        iss,
        aud,
        jti,
        Timestamp::from_secs(1_700_000_000),
        Duration::from_secs(life),
    );
    let header = JwsHeader::new(JwsAlgorithm::Es256).with_kid(kid);
    if let Ok(input) = signing_input(&header, &claims) {
        let (_, payload) = input.split_once('.').expect("two parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
        assert_eq!(v["iss"].as_str(), Some(iss));
        assert_eq!(v["aud"].as_str(), Some(aud));
        assert_eq!(v["jti"].as_str(), Some(jti));
    }
});
