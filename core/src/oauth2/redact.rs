//! Short, secret-free excerpts of an authority's answers for error messages.
//!
//! An answer that cannot be parsed is best explained by showing a bit of
//! it, but the bit may hold a token (a half-broken success answer, a proxy
//! echoing the request). Two passes remove what could be a credential: the
//! value after any sensitive name (`"access_token": "…"` in JSON,
//! `refresh_token=…` in a form or URL), then every long run of token-like
//! characters that contains both letters and digits (opaque tokens, JWTs,
//! base64), whatever name it had.

/// How many bytes of the body are looked at (the excerpt is shorter).
const SCAN_BYTES: usize = 1024;
/// Runs of token characters at least this long are treated as secrets.
const LONG_RUN: usize = 20;
const REDACTED: &str = "<redacted>";

/// Names whose values are credentials. Matching is ASCII case-insensitive
/// and also catches longer names that end with one of these
/// (`client_assertion`, `subject_token`).
const SENSITIVE: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "assertion",
    "password",
    "code_verifier",
    "subject_token",
    "actor_token",
    "\"token",
    "\"code",
];

/// A printable excerpt of `body` of at most `max_chars` characters, with
/// every credential-looking value replaced by `<redacted>`.
///
/// ```
/// use freshtoken_core::oauth2::redacted_excerpt;
///
/// let body = br#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","error":"oops"}"#;
/// let e = redacted_excerpt(body, 80);
/// assert_eq!(e, r#"{"access_token":"<redacted>","error":"oops"}"#);
/// ```
pub fn redacted_excerpt(body: &[u8], max_chars: usize) -> String {
    let head = &body[..body.len().min(SCAN_BYTES)];
    let text = String::from_utf8_lossy(head);
    let named = redact_named_values(&text);
    let runs = redact_long_runs(&named);
    let mut out = String::new();
    let mut last_space = false;
    for (count, c) in runs.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            return out;
        }
        // Control characters and newlines would garble a log line.
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    if body.len() > head.len() {
        out.push('…');
    }
    out
}

/// A URL for `Debug` and logs: scheme, host, port and path as given; the
/// user-info (`user:password@`) and every query value and fragment replaced
/// by `<redacted>`, query names kept (`?code=<redacted>&state=<redacted>`).
/// Something that is not an absolute URL shows as `<not a URL>`.
///
/// ```
/// use freshtoken_core::oauth2::redacted_url;
///
/// assert_eq!(
///     redacted_url("https://app:hunter2@auth.example:8443/token?code=abc&x#frag"),
///     "https://<redacted>@auth.example:8443/token?code=<redacted>&x#<redacted>",
/// );
/// assert_eq!(redacted_url("https://auth.example/token"), "https://auth.example/token");
/// ```
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, _)) => (r, Some(REDACTED)),
        None => (rest, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    out.push_str("://");
    match authority.rsplit_once('@') {
        Some((_, host)) => {
            out.push_str(REDACTED);
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                None => out.push_str(pair),
            }
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Replaces the value that follows a sensitive name and a `:` or `=`.
fn redact_named_values(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0; // bytes of `text` already in `out`
    let mut search = 0;
    while let Some((name_at, name_len)) = SENSITIVE
        .iter()
        .filter_map(|k| lower[search..].find(k).map(|i| (search + i, k.len())))
        .min()
    {
        let mut i = name_at + name_len;
        // Skip the rest of a longer name (`"token_endpoint"` is not a
        // credential, but `"access_token"` seen through `"token` is handled
        // by the earlier match), its closing quote and blanks.
        if bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            search = name_at + 1;
            continue;
        }
        if bytes.get(i) == Some(&b'"') {
            i += 1;
        }
        i = skip_blanks(bytes, i);
        if !matches!(bytes.get(i), Some(b':') | Some(b'=')) {
            search = name_at + 1;
            continue;
        }
        i = skip_blanks(bytes, i + 1);
        let (start, end) = if bytes.get(i) == Some(&b'"') {
            (i + 1, closing_quote(bytes, i + 1))
        } else {
            let end = bytes[i..]
                .iter()
                .position(|b| {
                    matches!(b, b'&' | b',' | b'}' | b']' | b';') || b.is_ascii_whitespace()
                })
                .map_or(bytes.len(), |p| i + p);
            (i, end)
        };
        // Names inside a value already redacted (or a value that a
        // previous, sloppier match swallowed part of) are still examined.
        let start = start.max(copied);
        if end > start {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
        search = name_at + 1;
    }
    out.push_str(&text[copied..]);
    out
}

fn skip_blanks(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
        i += 1;
    }
    i
}

/// The index of the quote that ends a JSON string starting at `i`, or the
/// end of the text for a string cut off by the excerpt.
fn closing_quote(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=' | '%')
}

/// Replaces long runs of token characters that mix letters and digits.
fn redact_long_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run_start = None;
    let flush = |out: &mut String, run: &str| {
        let looks_secret = run.len() >= LONG_RUN
            && run.bytes().any(|b| b.is_ascii_digit())
            && run.bytes().any(|b| b.is_ascii_alphabetic());
        out.push_str(if looks_secret { REDACTED } else { run });
    };
    for (i, c) in text.char_indices() {
        match (is_token_char(c), run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                flush(&mut out, &text[s..i]);
                run_start = None;
                out.push(c);
            }
            (false, None) => out.push(c),
            (true, Some(_)) => {}
        }
    }
    if let Some(s) = run_start {
        flush(&mut out, &text[s..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn redacts_named_values_in_json_and_forms() {
        let body = br#"{"refresh_token" : "short", "ID_TOKEN":"x\"y", "client_secret":"s"}"#;
        let e = redacted_excerpt(body, 200);
        assert!(
            !e.contains("short") && !e.contains("x\\\"y") && !e.contains("\"s\""),
            "{e}"
        );
        let form = b"grant_type=refresh_token&refresh_token=abc&client_secret=hunter2";
        let e = redacted_excerpt(form, 200);
        assert!(!e.contains("abc") && !e.contains("hunter2"), "{e}");
        assert!(e.contains("grant_type=refresh_token"), "{e}");
    }

    #[test]
    fn redacts_cut_off_values_and_long_runs() {
        let body = br#"{"access_token":"abcdefgh"#;
        assert!(!redacted_excerpt(body, 200).contains("abcdefgh"));
        let body = b"<html>token eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0. here</html>";
        let e = redacted_excerpt(body, 200);
        assert!(!e.contains("eyJhbGciOiJub25lIn0"), "{e}");
        assert!(e.contains("<html>token"), "{e}");
    }

    #[test]
    fn keeps_plain_text_and_truncates() {
        let e = redacted_excerpt(b"<h1>503 Service\r\n\r\nUnavailable</h1>", 200);
        assert_eq!(e, "<h1>503 Service Unavailable</h1>");
        let e = redacted_excerpt("é".repeat(100).as_bytes(), 10);
        assert_eq!(e.chars().count(), 11);
        let e = redacted_excerpt(&[b'x'; 5000], 10);
        assert!(e.ends_with('…'));
    }

    proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..2048), max in 0usize..300) {
            let e = redacted_excerpt(&body, max);
            prop_assert!(e.chars().count() <= max + 1);
        }

        #[test]
        fn hides_planted_tokens(
            prefix in "[ -~]{0,40}",
            key in prop::sample::select(vec!["access_token", "refresh_token", "id_token", "client_secret"]),
            secret in "[A-Za-z0-9_-]{8,40}",
            json in any::<bool>(),
        ) {
            let body = if json {
                format!("{prefix}{{\"{key}\": \"{secret}\"}}")
            } else {
                format!("{prefix}&{key}={secret}&x=1")
            };
            let e = redacted_excerpt(body.as_bytes(), 500);
            prop_assert!(!e.contains(&secret), "{}", e);
        }
    }
}
