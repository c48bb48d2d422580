//! `application/x-www-form-urlencoded`, the encoding RFC 6749 uses for token
//! request bodies (Appendix B) and for the client id and secret inside an
//! HTTP Basic header (section 2.3.1).
//!
//! Thin wrappers over the servo/rust-url project's `form_urlencoded` and
//! `percent-encoding` crates (the WHATWG URL standard's serializer and
//! parser, what the `url` crate uses): well kept, pure, no I/O, so the core
//! stays pure.

/// Encodes one name or value: `A-Z a-z 0-9 * - . _` stay, a space becomes
/// `+`, every other byte of the UTF-8 encoding becomes `%XX`.
///
/// ```
/// use freshtoken_core::oauth2::form;
/// assert_eq!(form::encode("a b+c/é"), "a+b%2Bc%2F%C3%A9");
/// ```
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Encodes name/value pairs as `a=1&b=2`.
///
/// ```
/// use freshtoken_core::oauth2::form;
/// assert_eq!(form::encode_pairs([("grant_type", "client_credentials"), ("scope", "a b")]),
///            "grant_type=client_credentials&scope=a+b");
/// ```
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Decodes one component: `+` is a space, `%XX` a byte; a malformed escape
/// is kept literally and invalid UTF-8 is replaced, so decoding never fails.
/// (`&` and `=` are kept: this is one component, not a whole body.)
///
/// ```
/// use freshtoken_core::oauth2::form;
/// assert_eq!(form::decode("a+b%2Bc%2F%C3%A9%zz"), "a b+c/é%zz");
/// ```
pub fn decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
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
    form_urlencoded::parse(body.as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
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
    fn parse_and_decode_edge_cases() {
        assert_eq!(parse("&&a=1&&"), vec![("a".into(), "1".into())]);
        assert_eq!(parse("a=b=c"), vec![("a".into(), "b=c".into())]);
        assert_eq!(decode("a=b&c"), "a=b&c");
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn encodes_rfc6749_example_characters() {
        // RFC 6749 Appendix B's example value.
        assert_eq!(encode(" %&+£€"), "+%25%26%2B%C2%A3%E2%82%AC");
    }
}
