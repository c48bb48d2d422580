//! The on-disk and in-Redis form of a cached token.
//!
//! A record is a small JSON object:
//!
//! ```json
//! {"version":1,"token_type":"Bearer","access_token":"...","refresh_token":"...",
//!  "id_token":null,"scope":"read","issued_at_ms":1700000000000,
//!  "stale_at_ms":1700002700000,"expires_at_ms":1700003600000}
//! ```
//!
//! * `version` comes first and is checked before anything else, so a future
//!   format is reported as [`DecodeError::UnsupportedVersion`] rather than as
//!   garbage.
//! * Times are wall-clock milliseconds since the Unix epoch (the precision of
//!   [`Timestamp`]), because records are shared between processes.
//! * The refresh token is stored when there is one, so a rotated refresh
//!   token survives a restart, with its `refresh_generation` (how many
//!   rotations from the grant's first token; left out when 0): instances
//!   order refresh tokens by it, never by another machine's clock. It was
//!   added within version 1, which ignores unknown fields, so older readers
//!   still read these records.
//! * `config` (added within version 1 too, left out when unknown) is the
//!   configuration the token was made for: the 16 hex digits of
//!   [`TokenKey::config_id`](crate::TokenKey::config_id), a digest of the
//!   token URL, client id, scope, audience and resources, and for a
//!   DPoP-bound token the thumbprint of its key (never a secret, and none
//!   of them can be read back from it). [`decode_for`] refuses a
//!   record made for another configuration with
//!   [`DecodeError::OtherConfiguration`], which the caches treat as a miss
//!   with a warning, so an instance whose cache name is shared with
//!   another configuration (a hand-made name, a changed scope under the
//!   same name) fetches its own token instead of serving the other one's,
//!   and an instance with another DPoP key never adopts a token it could
//!   not present.
//!
//!   A record without `config` (written by an earlier release, by a cache
//!   that was not told its configuration, or an aliri_tokens file) is
//!   adopted: refusing it would make every instance of a fleet that is
//!   being upgraded drop the shared token and, worse, the rotated refresh
//!   token that may be the only valid one, while an earlier release's
//!   record is exactly as trustworthy as it was before the upgrade. The
//!   next store writes `config`, so from then on the entry is bound.
//!
//! [`decode`] also reads the file that aliri_tokens 0.3 writes (its
//! `TokenWithLifetime`: `access_token`, `id_token`, `lifetime`, `issued`,
//! `stale`, `expiry`, times in whole seconds), so users can switch without
//! losing their cache. Records are always written in the format above.
//!
//! Secret types do not implement `Serialize` on purpose; this module is the
//! one place that calls `expose_secret()` to persist them. Decoding never
//! panics and its errors never quote the input (serde_json's messages can
//! quote a string value, which might be a token), so they are safe to log.

use std::fmt;

use freshtoken_core::{AccessToken, IdToken, RefreshToken, Timestamp, Token, TokenId};
use serde::{Deserialize, Serialize};

/// The record format version this crate writes.
pub const VERSION: u64 = 1;

/// The largest record a cache reads: 64 KiB. A token record is a few KiB
/// at most (JWTs included); anything longer is not a record this crate
/// wrote, and reading it whole would let a file such as `/dev/zero` or an
/// oversized Redis value exhaust memory.
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// Why bytes could not be read as a token record.
///
/// Messages name the problem and a position, never the content.
///
/// ```
/// use freshtoken::cache::record::{DecodeError, decode};
///
/// assert_eq!(decode(b"").unwrap_err(), DecodeError::Empty);
/// assert_eq!(decode(br#"{"version":1,"access"#).unwrap_err(), DecodeError::Truncated);
/// assert_eq!(decode(br#"{"version":7}"#).unwrap_err(), DecodeError::UnsupportedVersion(7));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes, or only whitespace.
    Empty,
    /// The JSON ends before it is complete (a cut-off write).
    Truncated,
    /// Not JSON at all, or broken JSON.
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// A record of a version this crate does not know.
    UnsupportedVersion(u64),
    /// JSON, but neither a freshtoken record nor an aliri_tokens file.
    UnknownFormat,
    /// A known format with a missing or ill-typed field (named, not quoted).
    Invalid(&'static str),
    /// A record made for another configuration (another token URL,
    /// client, scope, audience, resources or DPoP key) than the reader's: not
    /// adopted, as if there were none.
    OtherConfiguration,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty record"),
            DecodeError::Truncated => f.write_str("truncated record"),
            DecodeError::Syntax { line, column } => {
                write!(f, "not valid JSON (line {line}, column {column})")
            }
            DecodeError::UnsupportedVersion(v) => write!(
                f,
                "record version {v} is not supported (this build reads version {VERSION})"
            ),
            DecodeError::UnknownFormat => f.write_str("not a token record"),
            DecodeError::Invalid(why) => write!(f, "invalid record: {why}"),
            DecodeError::OtherConfiguration => f.write_str(
                "the record was made for another configuration (token URL, client, scope, \
                 audience, resources or DPoP key) than this instance's; it is not adopted",
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// What [`encode`] writes; borrowed so no secret is copied.
#[derive(Serialize)]
struct RecordOut<'a> {
    version: u64,
    token_type: &'a str,
    access_token: &'a str,
    refresh_token: Option<&'a str>,
    id_token: Option<&'a str>,
    scope: Option<&'a str>,
    issued_at_ms: u64,
    stale_at_ms: u64,
    expires_at_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    refresh_generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Version 1 as read. Unknown fields are ignored so that a later 1.x writer
/// may add optional fields.
#[derive(Deserialize)]
struct RecordV1 {
    token_type: Option<String>,
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    scope: Option<String>,
    issued_at_ms: u64,
    stale_at_ms: u64,
    expires_at_ms: u64,
    /// Added within version 1 (older writers leave it out: generation 0).
    #[serde(default)]
    refresh_generation: u64,
    /// Added within version 1 (older writers leave it out: adopted).
    #[serde(default)]
    config: Option<String>,
}

/// aliri_tokens 0.3's `TokenWithLifetime` (times in whole Unix seconds).
#[derive(Deserialize)]
struct AliriRecord {
    access_token: String,
    id_token: Option<String>,
    issued: u64,
    stale: u64,
    expiry: u64,
}

/// The first look at a document: which format is it?
#[derive(Deserialize)]
struct Probe {
    version: Option<serde_json::Value>,
    expiry: Option<serde::de::IgnoredAny>,
    access_token: Option<serde::de::IgnoredAny>,
}

/// The record bytes for `token`. They contain the secrets: write them only
/// to the cache itself, never to a log.
///
/// ```
/// use freshtoken::cache::record::{decode, encode};
/// use freshtoken::{AccessToken, RefreshToken, Timestamp, Token};
///
/// let token = Token::new(
///     AccessToken::new("at"),
///     Timestamp::from_millis(1_000),
///     Timestamp::from_millis(46_000),
///     Timestamp::from_millis(61_000),
/// )
/// .with_refresh_token(Some(RefreshToken::new("rt")))
/// .with_generation(3);
/// assert_eq!(decode(&encode(&token)).unwrap(), token);
/// ```
pub fn encode(token: &Token) -> Vec<u8> {
    encode_for(token, None)
}

/// The record bytes for `token`, made for the configuration `config` (see
/// the [module docs](self)); [`encode`] when `None`.
///
/// ```
/// use freshtoken::cache::record::{decode_for, encode_for, DecodeError};
/// use freshtoken::{AccessToken, Timestamp, Token, TokenKey};
///
/// let token = Token::new(AccessToken::new("at"), Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::MAX);
/// let read = TokenKey::new("svc").with_scope("read").config_id();
/// let write = TokenKey::new("svc").with_scope("write").config_id();
/// let bytes = encode_for(&token, Some(read));
/// assert_eq!(decode_for(&bytes, Some(read)).unwrap(), token);
/// assert_eq!(decode_for(&bytes, Some(write)).unwrap_err(), DecodeError::OtherConfiguration);
/// // A reader that does not know its configuration adopts any record.
/// assert_eq!(decode_for(&bytes, None).unwrap(), token);
/// ```
pub fn encode_for(token: &Token, config: Option<TokenId>) -> Vec<u8> {
    let record = RecordOut {
        version: VERSION,
        token_type: token.token_type(),
        access_token: token.access_token().expose_secret(),
        refresh_token: token.refresh_token().map(RefreshToken::expose_secret),
        id_token: token.id_token().map(IdToken::expose_secret),
        scope: token.scope(),
        issued_at_ms: token.issued_at().as_millis(),
        stale_at_ms: token.stale_at().as_millis(),
        expires_at_ms: token.expires_at().as_millis(),
        refresh_generation: token.generation(),
        config: config.map(|c| c.to_string()),
    };
    // Strings and integers always serialize; the fallback (an empty record,
    // which reads back as a miss) is unreachable but keeps this panic-free.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Reads a token from record bytes: a freshtoken record of version
/// [`VERSION`], or an aliri_tokens 0.3 file.
///
/// Pure and panic-free on any input; this is the function the fuzz target
/// drives.
///
/// ```
/// use freshtoken::cache::record::decode;
///
/// // A file written by aliri_tokens 0.3.
/// let aliri = br#"{"access_token":"at","id_token":null,"lifetime":3600,
///                  "issued":1700000000,"stale":1700002700,"expiry":1700003600}"#;
/// let token = decode(aliri).unwrap();
/// assert_eq!(token.access_token().expose_secret(), "at");
/// assert_eq!(token.expires_at().as_secs(), 1_700_003_600);
/// ```
pub fn decode(bytes: &[u8]) -> Result<Token, DecodeError> {
    decode_for(bytes, None)
}

/// Reads a token from record bytes as [`decode`] does, for a reader whose
/// configuration is `config`: a record made for another configuration is
/// [`DecodeError::OtherConfiguration`]. A record that names no
/// configuration (an earlier release's, an aliri_tokens file) is adopted,
/// and so is every record when `config` is `None` (see the
/// [module docs](self)).
pub fn decode_for(bytes: &[u8], config: Option<TokenId>) -> Result<Token, DecodeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    // Serde would read a JSON array positionally into a struct; a record is
    // always an object, so anything else is valid-but-foreign or broken.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        parse::<serde::de::IgnoredAny>(bytes)?;
        return Err(DecodeError::UnknownFormat);
    }
    let probe: Probe = parse(bytes)?;
    match probe.version {
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(VERSION) => decode_v1(bytes, config),
            Some(other) => Err(DecodeError::UnsupportedVersion(other)),
            None => Err(DecodeError::Invalid("version is not a whole number")),
        },
        Some(_) => Err(DecodeError::Invalid("version is not a number")),
        None if probe.expiry.is_some() && probe.access_token.is_some() => decode_aliri(bytes),
        None => Err(DecodeError::UnknownFormat),
    }
}

fn decode_v1(bytes: &[u8], config: Option<TokenId>) -> Result<Token, DecodeError> {
    let r: RecordV1 = parse(bytes)?;
    if r.access_token.is_empty() {
        return Err(DecodeError::Invalid("empty access_token"));
    }
    if let (Some(ours), Some(theirs)) = (config, &r.config) {
        if ours.to_string() != *theirs {
            return Err(DecodeError::OtherConfiguration);
        }
    }
    let token = Token::new(
        AccessToken::new(r.access_token),
        Timestamp::from_millis(r.issued_at_ms),
        Timestamp::from_millis(r.stale_at_ms),
        Timestamp::from_millis(r.expires_at_ms),
    )
    .with_refresh_token(r.refresh_token.map(RefreshToken::new))
    .with_id_token(r.id_token.map(IdToken::new))
    .with_scope(r.scope)
    .with_generation(r.refresh_generation);
    usable(match r.token_type {
        Some(t) => token.with_token_type(t),
        None => token,
    })
}

/// The token, if it can go into an `Authorization` header: a poisoned
/// cache entry (a CR/LF in the token type, a space in the access token) is
/// corrupt, exactly as the same answer from an authority is unusable.
fn usable(token: Token) -> Result<Token, DecodeError> {
    match token.check_usable() {
        Ok(()) => Ok(token),
        Err(freshtoken_core::token::UnusableToken::TokenType) => Err(DecodeError::Invalid(
            "token_type is not an RFC 7235 auth-scheme",
        )),
        Err(_) => Err(DecodeError::Invalid(
            "access_token is not printable ASCII without spaces",
        )),
    }
}

fn decode_aliri(bytes: &[u8]) -> Result<Token, DecodeError> {
    let r: AliriRecord = parse(bytes)?;
    if r.access_token.is_empty() {
        return Err(DecodeError::Invalid("empty access_token"));
    }
    usable(
        Token::new(
            AccessToken::new(r.access_token),
            Timestamp::from_secs(r.issued),
            Timestamp::from_secs(r.stale),
            Timestamp::from_secs(r.expiry),
        )
        .with_id_token(r.id_token.map(IdToken::new)),
    )
}

/// serde_json with its error reduced to a category and a position: its own
/// messages may quote the offending value, which could be a secret.
fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Eof => DecodeError::Truncated,
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            DecodeError::Syntax {
                line: e.line(),
                column: e.column(),
            }
        }
        serde_json::error::Category::Data => {
            DecodeError::Invalid("a field is missing or has the wrong type (see the record format)")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Token {
        Token::new(
            AccessToken::new("access-SECRET"),
            Timestamp::from_millis(1_700_000_000_123),
            Timestamp::from_millis(1_700_000_045_123),
            Timestamp::from_millis(1_700_000_060_123),
        )
        .with_token_type("DPoP")
        .with_refresh_token(Some(RefreshToken::new("refresh-SECRET")))
        .with_id_token(Some(IdToken::new("id-SECRET")))
        .with_scope(Some("read write".into()))
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let token = sample();
        let back = decode(&encode(&token)).unwrap();
        assert_eq!(back, token);
        assert_eq!(back.token_type(), "DPoP");
        assert_eq!(
            back.refresh_token().unwrap().expose_secret(),
            "refresh-SECRET"
        );
    }

    #[test]
    fn poisoned_records_are_invalid_not_served() {
        let mut v: serde_json::Value = serde_json::from_slice(&encode(&sample())).unwrap();
        v["token_type"] = "Bearer\r\nX-Injected: 1".into();
        let e = decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(
            e,
            DecodeError::Invalid("token_type is not an RFC 7235 auth-scheme")
        );
        v["token_type"] = "Bearer".into();
        v["access_token"] = "access SECRET\n".into();
        let e = decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(e, DecodeError::Invalid(_)), "{e}");
        assert!(!e.to_string().contains("SECRET"));
        let aliri =
            br#"{"access_token":"a\u0000b","id_token":null,"issued":1,"stale":2,"expiry":3}"#;
        assert!(matches!(decode(aliri), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn records_for_another_configuration_are_refused() {
        let ours = TokenId::of(b"ours");
        let theirs = TokenId::of(b"theirs");
        let bound = encode_for(&sample(), Some(theirs));
        assert_eq!(
            decode_for(&bound, Some(ours)).unwrap_err(),
            DecodeError::OtherConfiguration
        );
        assert_eq!(decode_for(&bound, Some(theirs)).unwrap(), sample());
        // The binding is the id's 16 hex digits, nothing else.
        let v: serde_json::Value = serde_json::from_slice(&bound).unwrap();
        assert_eq!(v["config"], theirs.to_string().as_str());
        // Unbound records (earlier releases, aliri_tokens) are adopted.
        let unbound = encode(&sample());
        assert!(!String::from_utf8_lossy(&unbound).contains("config"));
        assert_eq!(decode_for(&unbound, Some(ours)).unwrap(), sample());
        let aliri = br#"{"access_token":"a","id_token":null,"issued":1,"stale":2,"expiry":3}"#;
        assert!(decode_for(aliri, Some(ours)).is_ok());
        // An ill-typed binding is an invalid record, never adopted.
        let mut v = v;
        v["config"] = 7.into();
        assert!(matches!(
            decode_for(&serde_json::to_vec(&v).unwrap(), Some(ours)),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn version_is_written_first() {
        let bytes = encode(&sample());
        assert!(bytes.starts_with(br#"{"version":1,"#));
    }

    #[test]
    fn reads_aliri_tokens_file() {
        // As aliri_tokens 0.3 writes it: pretty-printed, seconds, id_token null.
        let file = br#"{
  "access_token": "eyJhbGciOi.payload.sig",
  "id_token": null,
  "lifetime": 3600,
  "issued": 1700000000,
  "stale": 1700002700,
  "expiry": 1700003600
}"#;
        let t = decode(file).unwrap();
        assert_eq!(t.access_token().expose_secret(), "eyJhbGciOi.payload.sig");
        assert_eq!(t.issued_at(), Timestamp::from_secs(1_700_000_000));
        assert_eq!(t.stale_at(), Timestamp::from_secs(1_700_002_700));
        assert_eq!(t.expires_at(), Timestamp::from_secs(1_700_003_600));
        assert_eq!(t.token_type(), "Bearer");
        assert!(t.refresh_token().is_none() && t.id_token().is_none());

        let with_id =
            br#"{"access_token":"a","id_token":"i","lifetime":1,"issued":1,"stale":1,"expiry":2}"#;
        assert_eq!(
            decode(with_id).unwrap().id_token().unwrap().expose_secret(),
            "i"
        );
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let full = encode(&sample());
        assert_eq!(decode(b"  \n").unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode(&full[..full.len() / 2]).unwrap_err(),
            DecodeError::Truncated
        );
        assert!(matches!(
            decode(b"\x00\xff garbage").unwrap_err(),
            DecodeError::Syntax { .. }
        ));
        assert_eq!(decode(b"[1,2,3]").unwrap_err(), DecodeError::UnknownFormat);
        assert_eq!(decode(b"42").unwrap_err(), DecodeError::UnknownFormat);
        assert_eq!(
            decode(br#"{"hello":1}"#).unwrap_err(),
            DecodeError::UnknownFormat
        );
        assert_eq!(
            decode(br#"{"version":2,"x":{}}"#).unwrap_err(),
            DecodeError::UnsupportedVersion(2)
        );
        assert!(matches!(
            decode(br#"{"version":"1"}"#).unwrap_err(),
            DecodeError::Invalid(_)
        ));
        assert!(matches!(
            decode(br#"{"version":1.5}"#).unwrap_err(),
            DecodeError::Invalid(_)
        ));
        assert!(matches!(
            decode(br#"{"version":1}"#).unwrap_err(),
            DecodeError::Invalid(_)
        ));
        // Every prefix of a valid record is an error, never a panic.
        for n in 0..full.len() {
            assert!(decode(&full[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn errors_never_quote_the_input() {
        // A secret where a number belongs: serde_json would quote it.
        let bad = br#"{"version":1,"access_token":"x","issued_at_ms":"TOPSECRET","stale_at_ms":1,"expires_at_ms":2}"#;
        let e = decode(bad).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("TOPSECRET"));
        let bad = br#"{"access_token":"x","issued":1,"stale":1,"expiry":"TOPSECRET"}"#;
        let e = decode(bad).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("TOPSECRET"));
    }

    #[test]
    fn mutated_records_never_panic() {
        // A poor man's fuzz run (the cargo-fuzz target drives `decode` too):
        // every single-byte change of a v1 record and an aliri file.
        let aliri = br#"{"access_token":"a","id_token":"i","lifetime":60,"issued":1,"stale":45,"expiry":61}"#;
        for valid in [encode(&sample()), aliri.to_vec()] {
            for i in 0..valid.len() {
                for b in [b'"', b'{', b'}', b'0', b'-', b'\\', b',', b':', 0xff, b' '] {
                    let mut m = valid.clone();
                    m[i] = b;
                    let _ = decode(&m);
                    m.remove(i);
                    let _ = decode(&m);
                }
            }
        }
    }

    #[test]
    fn absurd_times_are_reordered_not_rejected() {
        let rec = br#"{"version":1,"access_token":"a","issued_at_ms":10,"stale_at_ms":99,"expires_at_ms":5}"#;
        let t = decode(rec).unwrap();
        assert!(t.issued_at() <= t.stale_at() && t.stale_at() <= t.expires_at());
        let huge = br#"{"access_token":"a","issued":18446744073709551615,"stale":0,"expiry":18446744073709551615}"#;
        assert_eq!(decode(huge).unwrap().expires_at(), Timestamp::MAX);
    }
}
