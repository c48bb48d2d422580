//! `application/x-www-form-urlencoded`, the encoding RFC 6749 uses for token
//! request bodies (Appendix B) and for the client id and secret inside an
//! HTTP Basic header (section 2.3.1).
//!
//! Hand-written because it is thirty lines and the core keeps its
//! dependencies few; it follows the WHATWG URL standard's serializer (the
//! byte set browsers and `url::form_urlencoded` leave unescaped).

/// Encodes one name or value: `A-Z a-z 0-9 * - . _` stay, a space becomes
/// `+`, every other byte of the UTF-8 encoding becomes `%XX`.
///
/// ```
/// use freshtoken_core::oauth2::form;
/// assert_eq!(form::encode("a b+c/é"), "a+b%2Bc%2F%C3%A9");
/// ```
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    out
}

/// Encodes name/value pairs as `a=1&b=2`.
///
/// ```
/// use freshtoken_core::oauth2::form;
/// assert_eq!(form::encode_pairs([("grant_type", "client_credentials"), ("scope", "a b")]),
///            "grant_type=client_credentials&scope=a+b");
/// ```
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode(name));
        out.push('=');
        out.push_str(&encode(value));
    }
    out
}

/// Decodes one component: `+` is a space, `%XX` a byte; a malformed escape
/// is kept literally and invalid UTF-8 is replaced, so decoding never fails.
///
/// ```
/// use freshtoken_core::oauth2::form;
/// assert_eq!(form::decode("a+b%2Bc%2F%C3%A9%zz"), "a b+c/é%zz");
/// ```
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|h| hex_value(*h)),
                bytes.get(i + 2).and_then(|l| hex_value(*l)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes a whole body into name/value pairs, in order (names may repeat).
///
/// ```
/// use freshtoken_core::oauth2::form;
/// let pairs = form::parse("grant_type=refresh_token&resource=a&resource=b&x");
/// assert_eq!(pairs, vec![
///     ("grant_type".to_string(), "refresh_token".to_string()),
///     ("resource".to_string(), "a".to_string()),
///     ("resource".to_string(), "b".to_string()),
///     ("x".to_string(), String::new()),
/// ]);
/// ```
pub fn parse(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((name, value)) => (decode(name), decode(value)),
            None => (decode(part), String::new()),
        })
        .collect()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(s in ".*") {
            prop_assert_eq!(decode(&encode(&s)), s);
        }

        #[test]
        fn decode_never_panics(s in ".*") {
            let _ = decode(&s);
            let _ = parse(&s);
        }
    }

    #[test]
    fn encodes_rfc6749_example_characters() {
        // RFC 6749 Appendix B's example value.
        assert_eq!(encode(" %&+£€"), "+%25%26%2B%C2%A3%E2%82%AC");
    }
}
