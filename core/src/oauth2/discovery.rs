//! Authorization server metadata (RFC 8414) and OpenID Connect Discovery
//! 1.0, pure: where the document lives, and reading it.
//!
//! A client configured with an issuer URL reads the issuer's metadata
//! document, checks that the document's `issuer` is *identical* to the one
//! it asked for (RFC 8414 3.3, OIDC Discovery 4.3: otherwise a document
//! served for one tenant could redirect another tenant's credentials), and
//! takes the `token_endpoint` from it, which must be https (or http to a
//! loopback host, for local test authorities) like any token endpoint.
//!
//! The document comes from the network, so [`parse_metadata`] takes bytes
//! and returns typed [`DiscoveryError`]s: too large, not JSON, a field of
//! the wrong type or given twice, a missing field, an issuer mismatch, an
//! insecure endpoint. It never panics, and its messages quote the network
//! only through [`redacted_excerpt`].
//!
//! ```
//! use freshtoken_core::oauth2::discovery::{parse_metadata, well_known_urls, DiscoveryError};
//! use freshtoken_core::oauth2::ClientAuth;
//!
//! let issuer = "https://login.example.com/tenant-1";
//! assert_eq!(
//!     well_known_urls(issuer).unwrap(),
//!     [
//!         "https://login.example.com/tenant-1/.well-known/openid-configuration",
//!         "https://login.example.com/.well-known/oauth-authorization-server/tenant-1",
//!     ]
//! );
//! let doc = br#"{"issuer":"https://login.example.com/tenant-1",
//!     "token_endpoint":"https://login.example.com/tenant-1/oauth2/token",
//!     "token_endpoint_auth_methods_supported":["private_key_jwt","client_secret_basic"]}"#;
//! let meta = parse_metadata(doc, issuer, 64 * 1024).unwrap();
//! assert_eq!(meta.token_endpoint(), "https://login.example.com/tenant-1/oauth2/token");
//! assert!(meta.supports_auth_method(ClientAuth::PrivateKeyJwt));
//! assert!(!meta.supports_auth_method(ClientAuth::Post));
//!
//! let err = parse_metadata(doc, "https://login.example.com/tenant-2", 64 * 1024).unwrap_err();
//! assert!(matches!(err, DiscoveryError::IssuerMismatch { .. }));
//! ```

use serde::Deserialize;
use serde_json::Value;

use super::redact::redacted_excerpt;

/// "it starts with: <excerpt>", or "empty body" when there is nothing to show.
fn beginning(excerpt: &str) -> String {
    if excerpt.trim().is_empty() {
        "empty body".to_owned()
    } else {
        format!("it starts with: {excerpt}")
    }
}
use super::request::ClientAuth;
use super::response::HttpResponse;
use super::url::{check_token_url, UrlError};
use crate::error::{FetchError, FetchErrorKind};

/// The default cap on a metadata document: 256 KiB. Real ones are a few
/// KiB (Entra ID's about 2, Google's about 4, Keycloak's about 10).
pub const DEFAULT_MAX_METADATA_BYTES: usize = 256 * 1024;

/// The most entries a list field may have, and the longest a string in
/// one may be: far above any real document, low enough that a hostile
/// one cannot make the client hold much.
pub const MAX_LIST_ENTRIES: usize = 256;
/// See [`MAX_LIST_ENTRIES`].
pub const MAX_STRING_LEN: usize = 2048;

const EXCERPT_CHARS: usize = 120;

/// Why a metadata document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The issuer URL asked for cannot have a metadata document: not an
    /// https (or loopback http) URL, or it has a query or fragment.
    #[error("invalid issuer URL: {0}")]
    InvalidIssuer(String),
    /// The document was not served: a non-2xx status (redirects are not
    /// followed).
    #[error("the metadata document could not be read: HTTP {status}")]
    Status {
        /// The HTTP status.
        status: u16,
    },
    /// The document could not be fetched (network, TLS, timeout).
    #[error("the metadata document could not be fetched: {0}")]
    Unreachable(String),
    /// Larger than the cap.
    #[error("the metadata document is larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// Not JSON, or not a JSON object.
    #[error("the metadata document is not a JSON object; {}", beginning(.excerpt))]
    NotAnObject {
        /// A short, redacted excerpt.
        excerpt: String,
    },
    /// A field appears twice: an ambiguous document is not guessed at.
    #[error("the metadata document has the field `{field}` more than once")]
    DuplicateField {
        /// The field's name.
        field: &'static str,
    },
    /// A field has the wrong JSON type, or a list is too long or holds
    /// something other than short strings.
    #[error("the metadata field `{field}` is not {expected}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A required field is missing.
    #[error("the metadata document has no `{field}`")]
    Missing {
        /// The field's name.
        field: &'static str,
    },
    /// The document's `issuer` is not the issuer asked for.
    #[error("the metadata document is for issuer {found}, not {expected}")]
    IssuerMismatch {
        /// The issuer asked for.
        expected: String,
        /// The one in the document (a redacted excerpt).
        found: String,
    },
    /// An endpoint in the document is not acceptable (plain http beyond
    /// loopback, not a URL).
    #[error("the metadata field `{field}` is refused: {error}")]
    Endpoint {
        /// The field's name.
        field: &'static str,
        /// Why.
        error: UrlError,
    },
}

impl DiscoveryError {
    /// What the refresher should make of it: a server that fails (5xx,
    /// 408, 429) is transient; everything else is wrong until someone
    /// fixes it, so permanent (retried at the long interval).
    pub fn fetch_error_kind(&self) -> FetchErrorKind {
        match self {
            DiscoveryError::Status { status: 429 } => FetchErrorKind::RateLimited,
            DiscoveryError::Status {
                status: 408 | 500..=599,
            } => FetchErrorKind::Transient,
            DiscoveryError::Unreachable(_) => FetchErrorKind::Transient,
            _ => FetchErrorKind::Permanent,
        }
    }
}

impl From<DiscoveryError> for FetchError {
    fn from(e: DiscoveryError) -> Self {
        let status = match &e {
            DiscoveryError::Status { status } => Some(*status),
            _ => None,
        };
        let error = FetchError::new(e.fetch_error_kind(), format!("discovery: {e}"));
        match status {
            Some(s) => error.with_status(s),
            None => error,
        }
    }
}

/// Where an issuer's metadata may be, in the order to try them: the OpenID
/// Connect location (`{issuer}/.well-known/openid-configuration`, which
/// Entra ID, Google, Okta, Auth0 and Keycloak serve) and the RFC 8414 one
/// (`/.well-known/oauth-authorization-server` inserted before the issuer's
/// path).
pub fn well_known_urls(issuer: &str) -> Result<[String; 2], DiscoveryError> {
    check_issuer(issuer)?;
    let trimmed = issuer.trim_end_matches('/');
    let oidc = format!("{trimmed}/.well-known/openid-configuration");
    // scheme "://" authority [path]
    let (scheme, rest) = trimmed.split_once("://").unwrap_or(("https", trimmed));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let oauth = format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}");
    Ok([oidc, oauth])
}

/// Checks an issuer identifier: an https URL (or http to loopback) without
/// query or fragment (RFC 8414 2).
pub fn check_issuer(issuer: &str) -> Result<(), DiscoveryError> {
    check_token_url(issuer).map_err(|e| DiscoveryError::InvalidIssuer(e.to_string()))?;
    if issuer.contains(['?', '#']) {
        return Err(DiscoveryError::InvalidIssuer(
            "an issuer identifier has no query or fragment".to_owned(),
        ));
    }
    Ok(())
}

/// What freshtoken uses from an authority's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityMetadata {
    issuer: String,
    token_endpoint: String,
    auth_methods: Option<Vec<String>>,
    auth_signing_algs: Option<Vec<String>>,
    grant_types: Option<Vec<String>>,
    mtls_token_endpoint: Option<String>,
}

impl AuthorityMetadata {
    /// The issuer (identical to the one asked for).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint (checked: https, or http to loopback).
    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    /// `token_endpoint_auth_methods_supported`, if the document lists them.
    pub fn auth_methods(&self) -> Option<&[String]> {
        self.auth_methods.as_deref()
    }

    /// `token_endpoint_auth_signing_alg_values_supported`, if listed.
    pub fn auth_signing_algs(&self) -> Option<&[String]> {
        self.auth_signing_algs.as_deref()
    }

    /// `grant_types_supported`, if listed.
    pub fn grant_types(&self) -> Option<&[String]> {
        self.grant_types.as_deref()
    }

    /// RFC 8705's `mtls_endpoint_aliases.token_endpoint`, if any.
    pub fn mtls_token_endpoint(&self) -> Option<&str> {
        self.mtls_token_endpoint.as_deref()
    }

    /// The token endpoint to use with `auth`: the mTLS alias for the RFC
    /// 8705 methods when there is one, else the token endpoint.
    pub fn token_endpoint_for(&self, auth: ClientAuth) -> &str {
        match &self.mtls_token_endpoint {
            Some(alias) if auth.uses_mtls() => alias,
            _ => &self.token_endpoint,
        }
    }

    /// Whether the document says the token endpoint takes `auth`. Without
    /// a list, RFC 8414 2 says the default is `client_secret_basic` only.
    pub fn supports_auth_method(&self, auth: ClientAuth) -> bool {
        match &self.auth_methods {
            Some(methods) => methods.iter().any(|m| m == auth.as_str()),
            None => auth == ClientAuth::Basic,
        }
    }
}

/// The fields read, each kept untyped so that a wrong type gets our
/// message; serde refuses a field given twice.
#[derive(Deserialize)]
struct RawMetadata {
    issuer: Option<Value>,
    token_endpoint: Option<Value>,
    token_endpoint_auth_methods_supported: Option<Value>,
    token_endpoint_auth_signing_alg_values_supported: Option<Value>,
    grant_types_supported: Option<Value>,
    mtls_endpoint_aliases: Option<Value>,
}

const FIELDS: [&str; 6] = [
    "token_endpoint_auth_signing_alg_values_supported",
    "token_endpoint_auth_methods_supported",
    "mtls_endpoint_aliases",
    "grant_types_supported",
    "token_endpoint",
    "issuer",
];

/// Reads a discovery answer: a 2xx status, then [`parse_metadata`].
pub fn parse_metadata_response(
    response: &HttpResponse,
    expected_issuer: &str,
    max_bytes: usize,
) -> Result<AuthorityMetadata, DiscoveryError> {
    if !(200..300).contains(&response.status()) {
        return Err(DiscoveryError::Status {
            status: response.status(),
        });
    }
    parse_metadata(response.body(), expected_issuer, max_bytes)
}

/// Parses a metadata document and checks it against the issuer asked for.
pub fn parse_metadata(
    body: &[u8],
    expected_issuer: &str,
    max_bytes: usize,
) -> Result<AuthorityMetadata, DiscoveryError> {
    if body.len() > max_bytes {
        return Err(DiscoveryError::TooLarge { limit: max_bytes });
    }
    let raw: RawMetadata = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        match FIELDS
            .into_iter()
            .find(|f| msg.starts_with("duplicate field") && msg.contains(&format!("`{f}`")))
        {
            Some(field) => DiscoveryError::DuplicateField { field },
            None => DiscoveryError::NotAnObject {
                excerpt: redacted_excerpt(body, EXCERPT_CHARS),
            },
        }
    })?;

    let issuer = required_string("issuer", raw.issuer)?;
    if issuer != expected_issuer {
        return Err(DiscoveryError::IssuerMismatch {
            expected: expected_issuer.to_owned(),
            found: redacted_excerpt(issuer.as_bytes(), EXCERPT_CHARS),
        });
    }
    let token_endpoint = required_string("token_endpoint", raw.token_endpoint)?;
    endpoint("token_endpoint", &token_endpoint)?;

    let mtls_token_endpoint = match raw.mtls_endpoint_aliases {
        None | Some(Value::Null) => None,
        Some(Value::Object(aliases)) => match aliases.get("token_endpoint") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= MAX_STRING_LEN => {
                endpoint("mtls_endpoint_aliases.token_endpoint", s)?;
                Some(s.clone())
            }
            Some(_) => {
                return Err(DiscoveryError::WrongType {
                    field: "mtls_endpoint_aliases.token_endpoint",
                    expected: "a URL string",
                })
            }
        },
        Some(_) => {
            return Err(DiscoveryError::WrongType {
                field: "mtls_endpoint_aliases",
                expected: "an object",
            })
        }
    };

    Ok(AuthorityMetadata {
        issuer,
        token_endpoint,
        auth_methods: string_list(
            "token_endpoint_auth_methods_supported",
            raw.token_endpoint_auth_methods_supported,
        )?,
        auth_signing_algs: string_list(
            "token_endpoint_auth_signing_alg_values_supported",
            raw.token_endpoint_auth_signing_alg_values_supported,
        )?,
        grant_types: string_list("grant_types_supported", raw.grant_types_supported)?,
        mtls_token_endpoint,
    })
}

fn required_string(field: &'static str, v: Option<Value>) -> Result<String, DiscoveryError> {
    match v {
        None | Some(Value::Null) => Err(DiscoveryError::Missing { field }),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_STRING_LEN => Ok(s),
        Some(_) => Err(DiscoveryError::WrongType {
            field,
            expected: "a non-empty string of at most 2048 bytes",
        }),
    }
}

fn endpoint(field: &'static str, url: &str) -> Result<(), DiscoveryError> {
    check_token_url(url).map_err(|error| DiscoveryError::Endpoint { field, error })
}

fn string_list(
    field: &'static str,
    v: Option<Value>,
) -> Result<Option<Vec<String>>, DiscoveryError> {
    let wrong = DiscoveryError::WrongType {
        field,
        expected: "a list of at most 256 short strings",
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() <= MAX_LIST_ENTRIES => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) if s.len() <= MAX_STRING_LEN => Ok(s),
                _ => Err(wrong.clone()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ISS: &str = "https://auth.example.com";
    const CAP: usize = DEFAULT_MAX_METADATA_BYTES;

    fn doc(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn base() -> Value {
        json!({"issuer": ISS, "token_endpoint": "https://auth.example.com/token"})
    }

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut v = base();
        v[field] = value;
        doc(v)
    }

    #[test]
    fn well_known_locations() {
        assert_eq!(
            well_known_urls("https://a.example/").unwrap(),
            [
                "https://a.example/.well-known/openid-configuration",
                "https://a.example/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            well_known_urls("http://127.0.0.1:8080").unwrap()[1],
            "http://127.0.0.1:8080/.well-known/oauth-authorization-server"
        );
        for bad in [
            "http://a.example",
            "https://a.example/?x=1",
            "https://a.example/#f",
            "a.example",
        ] {
            assert!(
                matches!(well_known_urls(bad), Err(DiscoveryError::InvalidIssuer(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn fields_are_read() {
        let meta = parse_metadata(
            &doc(json!({
                "issuer": ISS,
                "token_endpoint": "https://auth.example.com/token",
                "token_endpoint_auth_methods_supported": ["tls_client_auth"],
                "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
                "grant_types_supported": ["client_credentials"],
                "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.auth.example.com/token"},
                "jwks_uri": 12,
            })),
            ISS,
            CAP,
        )
        .unwrap();
        assert_eq!(meta.issuer(), ISS);
        assert_eq!(
            meta.token_endpoint_for(ClientAuth::TlsClientAuth),
            "https://mtls.auth.example.com/token"
        );
        assert_eq!(
            meta.token_endpoint_for(ClientAuth::PrivateKeyJwt),
            "https://auth.example.com/token"
        );
        assert!(meta.supports_auth_method(ClientAuth::TlsClientAuth));
        assert_eq!(meta.auth_signing_algs(), Some(&["ES256".to_owned()][..]));
        assert_eq!(
            meta.grant_types(),
            Some(&["client_credentials".to_owned()][..])
        );
        // Without a list, only client_secret_basic (RFC 8414 2).
        let meta = parse_metadata(&doc(base()), ISS, CAP).unwrap();
        assert!(meta.supports_auth_method(ClientAuth::Basic));
        assert!(!meta.supports_auth_method(ClientAuth::PrivateKeyJwt));
    }

    #[test]
    fn an_empty_document_says_empty_body() {
        let e = parse_metadata(b"", ISS, CAP).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the metadata document is not a JSON object; empty body"
        );
        let e = parse_metadata(b"<html>", ISS, CAP).unwrap_err();
        assert!(e.to_string().ends_with("; it starts with: <html>"), "{e}");
    }

    #[test]
    fn hostile_documents_are_typed_errors() {
        use DiscoveryError as E;
        let cases: Vec<(Vec<u8>, E)> = vec![
            (
                b"<html>".to_vec(),
                E::NotAnObject {
                    excerpt: "<html>".into(),
                },
            ),
            (
                b"[]".to_vec(),
                E::NotAnObject {
                    excerpt: "[]".into(),
                },
            ),
            (
                doc(json!({"token_endpoint": "https://a/t"})),
                E::Missing { field: "issuer" },
            ),
            (
                with("token_endpoint", Value::Null),
                E::Missing {
                    field: "token_endpoint",
                },
            ),
            (
                with("token_endpoint", json!(["https://a/t"])),
                E::WrongType {
                    field: "token_endpoint",
                    expected: "a non-empty string of at most 2048 bytes",
                },
            ),
            (
                with("issuer", json!("https://auth.example.com/")),
                E::IssuerMismatch {
                    expected: ISS.into(),
                    found: "https://auth.example.com/".into(),
                },
            ),
            (
                with("token_endpoint", json!("http://auth.example.com/token")),
                E::Endpoint {
                    field: "token_endpoint",
                    error: UrlError::Insecure {
                        host: "auth.example.com".into(),
                    },
                },
            ),
            (
                with(
                    "mtls_endpoint_aliases",
                    json!({"token_endpoint": "http://10.0.0.1/t"}),
                ),
                E::Endpoint {
                    field: "mtls_endpoint_aliases.token_endpoint",
                    error: UrlError::Insecure {
                        host: "10.0.0.1".into(),
                    },
                },
            ),
            (
                with("mtls_endpoint_aliases", json!("x")),
                E::WrongType {
                    field: "mtls_endpoint_aliases",
                    expected: "an object",
                },
            ),
            (
                with(
                    "token_endpoint_auth_methods_supported",
                    json!("private_key_jwt"),
                ),
                E::WrongType {
                    field: "token_endpoint_auth_methods_supported",
                    expected: "a list of at most 256 short strings",
                },
            ),
            (
                with(
                    "grant_types_supported",
                    json!(vec!["x"; MAX_LIST_ENTRIES + 1]),
                ),
                E::WrongType {
                    field: "grant_types_supported",
                    expected: "a list of at most 256 short strings",
                },
            ),
            (
                format!(r#"{{"issuer":"{ISS}","issuer":"https://evil.example"}}"#).into_bytes(),
                E::DuplicateField { field: "issuer" },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_metadata(&body, ISS, CAP).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        let huge = with("x", json!("a".repeat(CAP)));
        assert_eq!(
            parse_metadata(&huge, ISS, CAP).unwrap_err(),
            E::TooLarge { limit: CAP }
        );
        let r = HttpResponse::new(503, vec![], doc(base()));
        let e = parse_metadata_response(&r, ISS, CAP).unwrap_err();
        assert_eq!(e.fetch_error_kind(), FetchErrorKind::Transient);
        let fe: FetchError = e.into();
        assert_eq!(fe.status(), Some(503));
        let e = parse_metadata(&with("issuer", json!("https://x")), ISS, CAP).unwrap_err();
        assert_eq!(e.fetch_error_kind(), FetchErrorKind::Permanent);
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
            Just(Value::from(ISS)),
            Just(Value::from("https://auth.example.com/token")),
            Just(Value::from("http://evil.example/token")),
            Just(Value::from("http://127.0.0.1:1/token")),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_field() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
            "[a-z_]{1,12}",
        ]
    }

    proptest! {
        /// Any document: a typed error, or metadata that satisfies every
        /// rule (issuer identical, endpoints acceptable, lists bounded).
        #[test]
        fn documents_are_accepted_only_when_sound(
            fields in prop::collection::vec((arb_field(), arb_value()), 0..8),
            cap in prop_oneof![Just(CAP), 0usize..200],
        ) {
            let body = doc(Value::Object(fields.into_iter().collect()));
            match parse_metadata(&body, ISS, cap) {
                Err(e) => { let _ = e.to_string(); }
                Ok(meta) => {
                    prop_assert!(body.len() <= cap);
                    prop_assert_eq!(meta.issuer(), ISS);
                    prop_assert!(check_token_url(meta.token_endpoint()).is_ok());
                    if let Some(alias) = meta.mtls_token_endpoint() {
                        prop_assert!(check_token_url(alias).is_ok());
                    }
                    for list in [meta.auth_methods(), meta.auth_signing_algs(), meta.grant_types()].into_iter().flatten() {
                        prop_assert!(list.len() <= MAX_LIST_ENTRIES);
                    }
                }
            }
        }

        #[test]
        fn bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..400), issuer in ".{0,30}") {
            let _ = parse_metadata(&body, &issuer, CAP);
            let _ = well_known_urls(&issuer);
        }
    }
}
