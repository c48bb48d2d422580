//! The OAuth2 answer parser fed an arbitrary status, headers and body. It
//! must never panic, and its errors must never echo a planted secret.
#![no_main]

use freshtoken_core::oauth2::{parse_response, GrantKind, HttpResponse};
use freshtoken_core::Timestamp;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "s3cr3tPLANTEDv4lue9";

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 1000;
    let grant = if data[2] & 1 == 0 {
        GrantKind::ClientCredentials
    } else {
        GrantKind::RefreshToken
    };
    // Headers: lines "name: value" up to the first blank line; the rest is
    // the body.
    let rest = &data[3..];
    let split = rest.windows(2).position(|w| w == b"\n\n").unwrap_or(0);
    let (head, body) = rest.split_at(split);
    let headers = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<(String, String)>>();
    let body = body.strip_prefix(b"\n\n").unwrap_or(body);
    let mut with_secret = body.to_vec();
    with_secret.extend_from_slice(format!(r#"{{"access_token":"{SECRET}"}}"#).as_bytes());
    for body in [body.to_vec(), with_secret] {
        let response = HttpResponse::new(status, headers.clone(), body);
        if let Err(e) = parse_response(
            grant,
            &response,
            Timestamp::from_secs(1_700_000_000),
            64 * 1024,
        ) {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        }
    }
});
