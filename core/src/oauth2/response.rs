//! Parsing token endpoint answers (RFC 6749 5.1 and 5.2) and classifying
//! failures into the machine's [`FetchErrorKind`]s.
//!
//! Everything here takes bytes from the network, so nothing panics and
//! nothing in an error message is copied from the answer without passing
//! through [`redacted_excerpt`].

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::redact::redacted_excerpt;
use super::request::GrantKind;
use crate::error::{FetchError, FetchErrorKind};
use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::time::Timestamp;
use crate::token::{TokenResponse, UnusableToken};

/// How many characters of an answer an error message may quote.
const EXCERPT_CHARS: usize = 160;

/// An HTTP answer as plain data, as any HTTP client can produce it.
///
/// The body may hold tokens, so `Debug` shows only its length, and it is
/// wiped from memory on drop.
///
/// ```
/// use freshtoken_core::oauth2::HttpResponse;
///
/// let r = HttpResponse::new(200, vec![("Date".into(), "Sun, 06 Nov 1994 08:49:37 GMT".into())], b"{}".to_vec());
/// assert_eq!(r.header("date"), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Zeroizing<Vec<u8>>,
}

impl HttpResponse {
    /// An answer with this status, headers (in order, names in any case)
    /// and body (at most the size cap plus one byte: a transport stops
    /// reading there, and the parser reports the answer as too large).
    pub fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        HttpResponse {
            status,
            headers,
            body: Zeroizing::new(body),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The fields of RFC 6749 5.1 and 5.2 that matter here, each kept as an
/// untyped value so that a wrongly typed field gets our message (serde's
/// would quote the value, which may be a secret). A field given twice is a
/// parse error: an ambiguous answer is not guessed at.
#[derive(Deserialize)]
struct RawAnswer {
    access_token: Option<Value>,
    token_type: Option<Value>,
    expires_in: Option<Value>,
    refresh_in: Option<Value>,
    refresh_token: Option<Value>,
    id_token: Option<Value>,
    scope: Option<Value>,
    error: Option<Value>,
    error_description: Option<Value>,
}

/// Parses a token endpoint's answer.
///
/// * 2xx with a JSON object holding a non-empty `access_token`: a
///   [`TokenResponse`]. `token_type` is kept as sent (`Bearer` if absent);
///   `expires_in` may be a number or a numeric string, a fraction is
///   truncated, a huge value saturates, and an unreadable one (`"abc"`) is
///   treated as absent so the lifetime policy's fallbacks apply. The `Date`
///   header becomes `server_date`.
/// * Anything else: a [`FetchError`] classified by [`classify`], carrying
///   the status, the `Retry-After` (seconds or an HTTP date, measured from
///   `now`), and a message with the RFC 6749 error code and description or
///   a short redacted excerpt of the body.
/// * A body longer than `max_body` bytes is refused before it is parsed.
///
/// ```
/// use freshtoken_core::oauth2::{parse_response, GrantKind, HttpResponse};
/// use freshtoken_core::{FetchErrorKind, Timestamp};
///
/// let ok = HttpResponse::new(200, vec![], br#"{"access_token":"at","token_type":"bearer","expires_in":"60"}"#.to_vec());
/// let t = parse_response(GrantKind::ClientCredentials, &ok, Timestamp::EPOCH, 65536).unwrap();
/// assert_eq!((t.token_type.as_str(), t.expires_in), ("bearer", Some(60)));
///
/// let revoked = HttpResponse::new(400, vec![], br#"{"error":"invalid_grant"}"#.to_vec());
/// let e = parse_response(GrantKind::RefreshToken, &revoked, Timestamp::EPOCH, 65536).unwrap_err();
/// assert_eq!(e.kind(), FetchErrorKind::GrantRevoked);
/// ```
pub fn parse_response(
    grant: GrantKind,
    response: &HttpResponse,
    now: Timestamp,
    max_body: usize,
) -> Result<TokenResponse, FetchError> {
    let status = response.status;
    let body = response.body();
    let fail = |kind: FetchErrorKind, message: String| {
        FetchError::new(kind, message)
            .with_status(status)
            .with_retry_after(
                response
                    .header("retry-after")
                    .and_then(|v| parse_retry_after(v, now)),
            )
    };

    if body.len() > max_body {
        return Err(fail(
            kind_for_status(status),
            format!(
                "answer larger than {max_body} bytes refused; it starts with: {}",
                redacted_excerpt(body, EXCERPT_CHARS)
            ),
        ));
    }
    if (300..400).contains(&status) {
        let location = response
            .header("location")
            .map(|l| redacted_excerpt(l.as_bytes(), EXCERPT_CHARS))
            .unwrap_or_else(|| "none".to_owned());
        return Err(fail(
            FetchErrorKind::Permanent,
            format!(
                "the token endpoint answered with a redirect, which is not followed for token \
                 requests (Location: {location}); configure the final URL"
            ),
        ));
    }

    let raw = match serde_json::from_slice::<RawAnswer>(body) {
        Ok(raw) => raw,
        Err(e) => {
            let why = match duplicate_field(&e) {
                Some(field) => format!("the field `{field}` appears more than once"),
                None if e.is_data() => "it is not a JSON object".to_owned(),
                None => "it is not valid JSON".to_owned(),
            };
            let message = format!("cannot read the answer: {why}; {}", beginning(body));
            return Err(fail(kind_for_status(status), message));
        }
    };

    let code = raw
        .error
        .as_ref()
        .and_then(Value::as_str)
        .map(sanitize_code);
    if (200..300).contains(&status) && code.is_none() {
        return success(raw, response).map_err(|why| {
            fail(
                FetchErrorKind::Transient,
                format!("the success answer is unusable: {why}; {}", beginning(body)),
            )
        });
    }

    let kind = classify(grant, status, code.as_deref());
    let error_code = code.clone();
    let message = match &code {
        Some(code) => match raw.error_description.as_ref().and_then(Value::as_str) {
            Some(d) => format!("{code}: {}", redacted_excerpt(d.as_bytes(), EXCERPT_CHARS)),
            None => code.clone(),
        },
        None if body.is_empty() => "the token endpoint answered with an empty body".to_owned(),
        None => format!(
            "the token endpoint answered without an OAuth2 error code: {}",
            redacted_excerpt(body, EXCERPT_CHARS)
        ),
    };
    Err(fail(kind, message).with_error_code(error_code))
}

/// The error kind for an answer with this status and RFC 6749 error code.
///
/// * 429, or `slow_down`: [`RateLimited`](FetchErrorKind::RateLimited).
/// * 408 and 5xx (whatever the code: a failing server's codes are not
///   trusted), `temporarily_unavailable`, `server_error`:
///   [`Transient`](FetchErrorKind::Transient).
/// * `invalid_grant`: [`GrantRevoked`](FetchErrorKind::GrantRevoked) for
///   the refresh-token grant (the token was revoked or rotated away), else
///   [`Permanent`](FetchErrorKind::Permanent). For the assertion grants
///   (JWT-bearer, token exchange) there is no grant to lose: the next
///   assertion starts afresh. A source whose assertion or subject token
///   comes from elsewhere turns the refusal of a stale one into a
///   transient error with
///   [`reclassify_supplied_assertion_error`](super::assertion::reclassify_supplied_assertion_error).
/// * Any other code (`invalid_client`, `unauthorized_client`,
///   `invalid_scope`, `unsupported_grant_type`, `invalid_target`,
///   `invalid_request`, ...), and other 3xx/4xx statuses: `Permanent`.
/// * No code and a 1xx or 2xx status: `Transient`.
///
/// ```
/// use freshtoken_core::oauth2::{classify, GrantKind};
/// use freshtoken_core::FetchErrorKind;
///
/// assert_eq!(classify(GrantKind::ClientCredentials, 401, Some("invalid_client")), FetchErrorKind::Permanent);
/// assert_eq!(classify(GrantKind::ClientCredentials, 400, Some("invalid_grant")), FetchErrorKind::Permanent);
/// assert_eq!(classify(GrantKind::RefreshToken, 400, Some("invalid_grant")), FetchErrorKind::GrantRevoked);
/// assert_eq!(classify(GrantKind::RefreshToken, 503, None), FetchErrorKind::Transient);
/// assert_eq!(classify(GrantKind::RefreshToken, 400, Some("slow_down")), FetchErrorKind::RateLimited);
/// ```
pub fn classify(grant: GrantKind, status: u16, code: Option<&str>) -> FetchErrorKind {
    match (status, code) {
        (429, _) | (_, Some("slow_down")) => FetchErrorKind::RateLimited,
        (408 | 500..=599, _) => FetchErrorKind::Transient,
        (_, Some("temporarily_unavailable" | "server_error")) => FetchErrorKind::Transient,
        (_, Some("invalid_grant")) if grant == GrantKind::RefreshToken => {
            FetchErrorKind::GrantRevoked
        }
        (_, Some(_)) => FetchErrorKind::Permanent,
        (_, None) => kind_for_status(status),
    }
}

fn kind_for_status(status: u16) -> FetchErrorKind {
    match status {
        429 => FetchErrorKind::RateLimited,
        408 | 500..=599 => FetchErrorKind::Transient,
        300..=499 => FetchErrorKind::Permanent,
        _ => FetchErrorKind::Transient,
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date, which is
/// turned into a delay from `now` (zero if it has passed).
///
/// ```
/// use freshtoken_core::oauth2::parse_retry_after;
/// use freshtoken_core::Timestamp;
/// use std::time::Duration;
///
/// let now = Timestamp::from_secs(784_111_770); // 1994-11-06T08:49:30Z
/// assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    parse_http_date(value).map(|at| at.saturating_duration_since(now))
}

/// Parses an HTTP date (IMF-fixdate, RFC 850 or asctime form).
///
/// ```
/// use freshtoken_core::oauth2::parse_http_date;
/// use freshtoken_core::Timestamp;
/// assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Timestamp::from_secs(784_111_777)));
/// assert_eq!(parse_http_date("yesterday"), None);
/// ```
pub fn parse_http_date(value: &str) -> Option<Timestamp> {
    httpdate::parse_http_date(value.trim())
        .ok()
        .map(Timestamp::from_system_time)
}

/// "it starts with: <redacted excerpt>", or "empty body" (an
/// excerpt of nothing reads as a message cut short).
fn beginning(body: &[u8]) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        if body.is_empty() {
            "empty body".to_owned()
        } else {
            "the body holds only whitespace".to_owned()
        }
    } else {
        format!("it starts with: {}", redacted_excerpt(body, EXCERPT_CHARS))
    }
}

/// The success fields, or why they are unusable (a message free of values).
fn success(raw: RawAnswer, response: &HttpResponse) -> Result<TokenResponse, &'static str> {
    let access_token = match raw.access_token {
        None => return Err("it has no access_token"),
        Some(Value::String(s)) if !s.is_empty() => AccessToken::new(s),
        Some(Value::String(_)) => return Err("its access_token is empty"),
        Some(_) => return Err("its access_token is not a string"),
    };
    let token_type = match raw.token_type {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => "Bearer".to_owned(),
    };
    let scope = match raw.scope {
        Some(Value::String(s)) => Some(s),
        // Some servers send a list; RFC 6749 says space-separated.
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    };
    let answer = TokenResponse::new(access_token)
        .with_token_type(token_type)
        .with_expires_in(raw.expires_in.as_ref().and_then(expires_in))
        .with_refresh_in(raw.refresh_in.as_ref().and_then(expires_in))
        .with_refresh_token(non_empty_string(raw.refresh_token).map(RefreshToken::new))
        .with_id_token(non_empty_string(raw.id_token).map(IdToken::new))
        .with_scope(scope)
        .with_server_date(response.header("date").and_then(parse_http_date));
    // Both go verbatim into `Authorization: <token_type> <access_token>`.
    answer.check_usable().map_err(|e| match e {
        UnusableToken::AccessToken => "its access_token is not printable ASCII without spaces",
        _ => "its token_type is not an RFC 7235 auth-scheme (letters, digits, !#$%&'*+-.^_`|~)",
    })?;
    Ok(answer)
}

fn non_empty_string(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// `expires_in` as whole seconds: integers as they are, fractions truncated,
/// out-of-range values saturated, numeric strings read the same way.
fn expires_in(v: &Value) -> Option<i64> {
    fn from_f64(f: f64) -> Option<i64> {
        // `as` saturates at the i64 bounds; NaN cannot come from JSON but
        // can from a string such as "NaN".
        f.is_finite().then_some(f as i64)
    }
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            .or_else(|| n.as_f64().and_then(from_f64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(from_f64))
        }
        _ => None,
    }
}

/// An RFC 6749 error code limited to the characters the RFC allows in one
/// (and that cannot hide a long secret).
fn sanitize_code(code: &str) -> String {
    let clean: String = code
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(64)
        .collect();
    if clean.is_empty() {
        "unnamed_error".to_owned()
    } else {
        redacted_excerpt(clean.as_bytes(), 64)
    }
}

/// The field named by serde's "duplicate field `x`" error; only names of
/// [`RawAnswer`]'s fields can appear there, never values.
fn duplicate_field(e: &serde_json::Error) -> Option<&'static str> {
    let msg = e.to_string();
    if !msg.starts_with("duplicate field") {
        return None;
    }
    [
        "access_token",
        "token_type",
        "expires_in",
        "refresh_in",
        "refresh_token",
        "id_token",
        "scope",
        "error_description",
        "error",
    ]
    .into_iter()
    .find(|f| msg.contains(&format!("`{f}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAP: usize = 64 * 1024;

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status, vec![], body.as_bytes().to_vec())
    }

    fn ok(body: &str) -> TokenResponse {
        parse_response(
            GrantKind::ClientCredentials,
            &resp(200, body),
            Timestamp::EPOCH,
            CAP,
        )
        .unwrap()
    }

    fn err(grant: GrantKind, status: u16, body: &str) -> FetchError {
        parse_response(grant, &resp(status, body), Timestamp::EPOCH, CAP).unwrap_err()
    }

    #[test]
    fn success_fields() {
        let t = ok(
            r#"{"access_token":"at","token_type":"DPoP","expires_in":3600,
                      "refresh_token":"rt","id_token":"idt","scope":"a b","extra":{"x":[1]}}"#,
        );
        assert_eq!(t.access_token.expose_secret(), "at");
        assert_eq!(t.token_type, "DPoP");
        assert_eq!(t.expires_in, Some(3600));
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt");
        assert_eq!(t.id_token.unwrap().expose_secret(), "idt");
        assert_eq!(t.scope.as_deref(), Some("a b"));
        assert_eq!(ok(r#"{"access_token":"at"}"#).token_type, "Bearer");
    }

    #[test]
    fn refresh_in_is_read_like_expires_in() {
        let t = ok(r#"{"access_token":"at","expires_in":3600,"refresh_in":"1800"}"#);
        assert_eq!((t.expires_in, t.refresh_in), (Some(3600), Some(1800)));
        assert_eq!(ok(r#"{"access_token":"at"}"#).refresh_in, None);
    }

    #[test]
    fn expires_in_forms() {
        let e = |v: &str| ok(&format!(r#"{{"access_token":"at","expires_in":{v}}}"#)).expires_in;
        assert_eq!(e("-5"), Some(-5));
        assert_eq!(e("0"), Some(0));
        assert_eq!(e("1e30"), Some(i64::MAX));
        assert_eq!(e("-1e30"), Some(i64::MIN));
        assert_eq!(e("18446744073709551615"), Some(i64::MAX));
        assert_eq!(e("59.9"), Some(59));
        assert_eq!(e(r#""120""#), Some(120));
        assert_eq!(e(r#"" 7.5 ""#), Some(7));
        assert_eq!(e(r#""abc""#), None);
        assert_eq!(e(r#""NaN""#), None);
        assert_eq!(e("null"), None);
        assert_eq!(e("[1]"), None);
    }

    #[test]
    fn header_injection_through_token_type_is_refused() {
        // Measured before the fix: accepted, and authorization_header()
        // returned the CR/LF.
        for token_type in [
            "Bearer\r\nX-Injected: 1",
            "Bearer\n",
            "Bearer x",
            "Bé",
            "Bearer\u{0}",
        ] {
            let body = serde_json::json!({"access_token": "secret-at-1", "token_type": token_type})
                .to_string();
            let e = err(GrantKind::ClientCredentials, 200, &body);
            assert_eq!(e.kind(), FetchErrorKind::Transient, "{token_type:?}");
            assert!(e.message().contains("token_type"), "{e}");
            assert!(!e.to_string().contains("secret-at-1"), "{e}");
            assert!(!e.to_string().contains(['\r', '\n']), "{e}");
        }
        // An access token that would split the header is refused too.
        let e = err(
            GrantKind::ClientCredentials,
            200,
            r#"{"access_token":"at\r\nX: 1"}"#,
        );
        assert!(e.message().contains("access_token"), "{e}");
        // Every RFC 7235 tchar is allowed.
        assert_eq!(
            ok(r#"{"access_token":"at","token_type":"N_A!#$%&'*+-.^`|~9"}"#).token_type,
            "N_A!#$%&'*+-.^`|~9"
        );
    }

    #[test]
    fn an_empty_body_is_called_empty() {
        let e = err(GrantKind::ClientCredentials, 200, "");
        assert!(e.message().ends_with("; empty body"), "{e}");
        let e = err(GrantKind::ClientCredentials, 502, "  \n");
        assert!(e.message().ends_with("only whitespace"), "{e}");
        let e = err(GrantKind::ClientCredentials, 200, "<html>");
        assert!(e.message().ends_with("it starts with: <html>"), "{e}");
    }

    #[test]
    fn unusable_success_answers_are_transient_and_quiet() {
        for body in [
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":12345678901234567890}"#,
        ] {
            let e = err(GrantKind::ClientCredentials, 200, body);
            assert_eq!(e.kind(), FetchErrorKind::Transient, "{body}");
            assert!(e.message().contains("access_token"), "{e}");
        }
        let e = err(
            GrantKind::ClientCredentials,
            200,
            r#"{"access_token":"a1","access_token":"b2"}"#,
        );
        assert!(
            e.message()
                .contains("`access_token` appears more than once"),
            "{e}"
        );
        let e = err(GrantKind::ClientCredentials, 200, r#""a-secret-string""#);
        assert!(e.message().contains("not a JSON object"), "{e}");
        let e = err(GrantKind::ClientCredentials, 200, "<html>hello</html>");
        assert!(
            e.message().contains("not valid JSON") && e.message().contains("<html>hello"),
            "{e}"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            r#"{{"access_token":"at","x":{}{}}}"#,
            "[".repeat(60_000),
            "]".repeat(60_000)
        );
        let _ = parse_response(
            GrantKind::ClientCredentials,
            &resp(200, &deep),
            Timestamp::EPOCH,
            1 << 20,
        );
        let deeper = format!(
            r#"{{"access_token":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let e = err(GrantKind::ClientCredentials, 200, &deeper);
        assert_eq!(e.kind(), FetchErrorKind::Transient);
    }

    #[test]
    fn errors_are_classified() {
        use FetchErrorKind::*;
        let cc = GrantKind::ClientCredentials;
        let rt = GrantKind::RefreshToken;
        for (grant, status, code, kind) in [
            (cc, 401, "invalid_client", Permanent),
            (cc, 400, "unauthorized_client", Permanent),
            (cc, 400, "invalid_scope", Permanent),
            (cc, 400, "unsupported_grant_type", Permanent),
            (cc, 400, "invalid_target", Permanent),
            (cc, 400, "invalid_grant", Permanent),
            (rt, 400, "invalid_grant", GrantRevoked),
            (GrantKind::JwtBearer, 400, "invalid_grant", Permanent),
            (GrantKind::TokenExchange, 400, "invalid_grant", Permanent),
            (rt, 503, "temporarily_unavailable", Transient),
            (rt, 400, "temporarily_unavailable", Transient),
            (rt, 400, "slow_down", RateLimited),
            (rt, 500, "server_error", Transient),
            (rt, 400, "something_new", Permanent),
        ] {
            let e = err(
                grant,
                status,
                &format!(r#"{{"error":"{code}","error_description":"d"}}"#),
            );
            assert_eq!(e.kind(), kind, "{grant:?} {status} {code}");
            assert_eq!(e.status(), Some(status));
            assert_eq!(e.message(), format!("{code}: d"));
        }
        for (status, kind) in [
            (400, Permanent),
            (401, Permanent),
            (403, Permanent),
            (404, Permanent),
            (408, Transient),
            (429, RateLimited),
            (500, Transient),
            (502, Transient),
            (503, Transient),
        ] {
            assert_eq!(err(cc, status, "").kind(), kind, "{status}");
            assert_eq!(err(cc, status, "<html>x</html>").kind(), kind, "{status}");
        }
        // An error code in a 200 answer is an error all the same.
        assert_eq!(
            err(cc, 200, r#"{"error":"invalid_client"}"#).kind(),
            Permanent
        );
    }

    #[test]
    fn retry_after_and_date() {
        let now = Timestamp::from_secs(784_111_770);
        let r = HttpResponse::new(
            429,
            vec![("Retry-After".into(), "Sun, 06 Nov 1994 08:49:40 GMT".into())],
            Vec::new(),
        );
        let e = parse_response(GrantKind::ClientCredentials, &r, now, CAP).unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(10)));
        let r = HttpResponse::new(503, vec![("retry-after".into(), "3".into())], Vec::new());
        let e = parse_response(GrantKind::ClientCredentials, &r, now, CAP).unwrap_err();
        assert_eq!(
            (e.kind(), e.retry_after()),
            (FetchErrorKind::Transient, Some(Duration::from_secs(3)))
        );
        let r = HttpResponse::new(
            200,
            vec![("DATE".into(), "Sunday, 06-Nov-94 08:49:37 GMT".into())],
            br#"{"access_token":"at"}"#.to_vec(),
        );
        let t = parse_response(GrantKind::ClientCredentials, &r, now, CAP).unwrap();
        assert_eq!(t.server_date, Some(Timestamp::from_secs(784_111_777)));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn oversized_and_redirect_answers() {
        let big = format!(r#"{{"access_token":"{}"}}"#, "a1".repeat(40_000));
        let e = parse_response(
            GrantKind::ClientCredentials,
            &resp(200, &big),
            Timestamp::EPOCH,
            CAP,
        )
        .unwrap_err();
        assert!(e.message().contains("larger than 65536 bytes"), "{e}");
        assert!(!e.message().contains("a1a1a1a1a1"), "{e}");
        let r = HttpResponse::new(
            302,
            vec![("Location".into(), "https://elsewhere/token".into())],
            Vec::new(),
        );
        let e =
            parse_response(GrantKind::ClientCredentials, &r, Timestamp::EPOCH, CAP).unwrap_err();
        assert_eq!(e.kind(), FetchErrorKind::Permanent);
        assert!(
            e.message().contains("redirect") && e.message().contains("https://elsewhere/token"),
            "{e}"
        );
    }

    fn arb_headers() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop_oneof![
            Just("Retry-After".to_owned()),
            Just("Date".to_owned()),
            Just("Location".to_owned()),
            ".{0,12}"
        ];
        let value = prop_oneof![
            "[0-9]{0,25}",
            Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
            Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
            ".{0,40}"
        ];
        prop::collection::vec((name, value), 0..4)
    }

    fn arb_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            // JSON-ish answers reach deeper into the parser than noise does.
            (
                prop::option::of(prop_oneof![
                    Just(Value::Null),
                    any::<i64>().prop_map(Value::from),
                    ".{0,10}".prop_map(Value::from)
                ]),
                prop::option::of(prop_oneof![
                    any::<f64>().prop_map(|f| serde_json::json!(f)),
                    any::<i64>().prop_map(Value::from),
                    ".{0,10}".prop_map(Value::from)
                ]),
                prop::option::of("[a-z_]{0,20}"),
            )
                .prop_map(|(at, exp, error)| {
                    let mut m = serde_json::Map::new();
                    if let Some(at) = at {
                        m.insert("access_token".into(), at);
                    }
                    if let Some(exp) = exp {
                        m.insert("expires_in".into(), exp);
                    }
                    if let Some(e) = error {
                        m.insert("error".into(), e.into());
                    }
                    serde_json::to_vec(&m).unwrap()
                }),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(
            status in any::<u16>(),
            headers in arb_headers(),
            body in arb_body(),
            now in any::<u64>(),
            max in 0usize..400,
            refresh in any::<bool>(),
        ) {
            let grant = if refresh { GrantKind::RefreshToken } else { GrantKind::ClientCredentials };
            let r = HttpResponse::new(status, headers, body);
            let _ = parse_response(grant, &r, Timestamp::from_millis(now), max);
        }

        #[test]
        fn error_messages_never_hold_planted_secrets(
            status in 200u16..600,
            // Named values are hidden whatever their length; free-floating
            // ones (shape 3) when they look like tokens: long, letters and digits.
            secret in "[A-Za-z]{10,20}[0-9][A-Za-z0-9]{9,20}",
            key in prop::sample::select(vec!["access_token", "refresh_token", "id_token", "client_secret"]),
            noise in "[ -~]{0,30}",
            shape in 0..4u8,
        ) {
            let body = match shape {
                0 => format!(r#"{{"{key}":"{secret}","error":"x"}}"#),
                1 => format!(r#"{{"{key}":"{secret}","{key}":"{secret}"}}"#),
                2 => format!("{noise}{key}={secret}{noise}"),
                _ => format!(r#"{{"error":"invalid_request","error_description":"{noise} {key} {secret}"}}"#),
            };
            let r = HttpResponse::new(status, vec![], body.into_bytes());
            if let Err(e) = parse_response(GrantKind::RefreshToken, &r, Timestamp::EPOCH, CAP) {
                prop_assert!(!e.to_string().contains(&secret), "{}", e);
            }
        }
    }
}
