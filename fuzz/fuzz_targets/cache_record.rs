//! The cache file decoder (freshtoken's versioned format and aliri_tokens'
//! file) fed arbitrary bytes. It must never panic; whatever it accepts must
//! be a well-ordered token that survives a round trip; its errors must not
//! quote the input (which may hold a token).
#![no_main]

use freshtoken::cache::record::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(token) => {
            assert!(token.issued_at() <= token.stale_at());
            assert!(token.stale_at() <= token.expires_at());
            let again = decode(&encode(&token)).expect("a decoded token re-encodes");
            assert_eq!(again, token);
        }
        Err(e) => {
            let shown = format!("{e} {e:?}");
            assert!(shown.len() < 512, "error too long: {shown}");
        }
    }
});
