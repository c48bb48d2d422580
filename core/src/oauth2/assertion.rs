//! JWT assertions, pure: the claims and header of an RFC 7523 assertion,
//! the JWS signing input, the compact form, and the rules for telling a
//! stale assertion from a wrong one.
//!
//! Signing needs a key, and keys are not pure protocol: the `freshtoken`
//! crate's `oauth2::SigningKey` signs the [`signing_input`] this module
//! builds, and [`assemble`] joins the two. Claims are data chosen by the
//! client (issuer, subject, audience, times, a random `jti`); they are not
//! secrets, but the assembled [`Assertion`] is one, and logs name claims
//! only by name ([`AssertionClaims::names`]).
//!
//! ```
//! use freshtoken_core::oauth2::assertion::{assemble, signing_input, AssertionClaims, JwsAlgorithm, JwsHeader};
//! use freshtoken_core::Timestamp;
//! use std::time::Duration;
//!
//! let claims = AssertionClaims::client_assertion(
//!     "my-client",
//!     "https://auth.example.com/oauth2/token",
//!     "6f1c0c4e9b2a",
//!     Timestamp::from_secs(1_700_000_000),
//!     Duration::from_secs(60),
//! );
//! let header = JwsHeader::new(JwsAlgorithm::Rs256).with_kid("key-1");
//! let input = signing_input(&header, &claims).unwrap();
//! // ... sign `input` with the private key, then:
//! let jwt = assemble(&input, b"signature bytes");
//! assert_eq!(jwt.expose_secret().split('.').count(), 3);
//! ```

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::{FetchError, FetchErrorKind};
use crate::lifetime::JwtTimes;
use crate::secret::Assertion;
use crate::time::Timestamp;

/// The longest claim value or `kid` accepted, so that a configuration
/// mistake (a key pasted where a client id belongs) cannot make megabyte
/// assertions.
pub const MAX_CLAIM_LEN: usize = 4096;

/// A JWS signing algorithm (RFC 7518 3.1) that assertions can be signed
/// with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwsAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256: what every authority accepts.
    Rs256,
    /// RSASSA-PSS with SHA-256 (FAPI profiles require PSS or ECDSA).
    Ps256,
    /// ECDSA with P-256 and SHA-256, the signature as `r || s` (64 bytes).
    Es256,
    /// HMAC with SHA-256, keyed with the client secret
    /// (`client_secret_jwt`).
    Hs256,
}

impl JwsAlgorithm {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Ps256 => "PS256",
            JwsAlgorithm::Es256 => "ES256",
            JwsAlgorithm::Hs256 => "HS256",
        }
    }

    /// The algorithm called `name`, if it is one of these.
    ///
    /// ```
    /// use freshtoken_core::oauth2::assertion::JwsAlgorithm;
    /// assert_eq!(JwsAlgorithm::from_name("ES256"), Some(JwsAlgorithm::Es256));
    /// assert_eq!(JwsAlgorithm::from_name("none"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(JwsAlgorithm::Rs256),
            "PS256" => Some(JwsAlgorithm::Ps256),
            "ES256" => Some(JwsAlgorithm::Es256),
            "HS256" => Some(JwsAlgorithm::Hs256),
            _ => None,
        }
    }
}

impl fmt::Display for JwsAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JOSE header of an assertion: `alg`, `typ: JWT`, and optionally the
/// key's `kid` and the SHA-256 thumbprint of its certificate (`x5t#S256`,
/// which Entra ID uses to pick a certificate credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwsHeader {
    alg: JwsAlgorithm,
    kid: Option<String>,
    x5t_s256: Option<String>,
}

impl JwsHeader {
    /// A header for `alg`.
    pub fn new(alg: JwsAlgorithm) -> Self {
        JwsHeader {
            alg,
            kid: None,
            x5t_s256: None,
        }
    }

    /// With a key id.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// With a certificate thumbprint (base64url of the SHA-256 of the DER
    /// certificate).
    pub fn with_x5t_s256(mut self, thumbprint: impl Into<String>) -> Self {
        self.x5t_s256 = Some(thumbprint.into());
        self
    }

    /// The algorithm.
    pub fn alg(&self) -> JwsAlgorithm {
        self.alg
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("alg".into(), self.alg.as_str().into());
        m.insert("typ".into(), "JWT".into());
        if let Some(kid) = &self.kid {
            m.insert("kid".into(), kid.clone().into());
        }
        if let Some(t) = &self.x5t_s256 {
            m.insert("x5t#S256".into(), t.clone().into());
        }
        m
    }
}

/// The claims of an RFC 7523 assertion.
///
/// For a client assertion (RFC 7523 2.2, OIDC Core 9) `iss` and `sub` are
/// both the client id and `aud` is the token endpoint (or, for some
/// authorities, the issuer); for a JWT-bearer grant (2.1) `sub` is the
/// principal the token is for, and `extra` carries what the authority
/// wants besides (Google: `scope`).
#[derive(Clone, Debug, PartialEq)]
pub struct AssertionClaims {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud`.
    pub audience: String,
    /// `jti`: unique per assertion (authorities refuse a replayed one).
    pub jwt_id: String,
    /// `iat`.
    pub issued_at: Timestamp,
    /// `exp`.
    pub expires_at: Timestamp,
    /// `nbf`, if wanted.
    pub not_before: Option<Timestamp>,
    /// Other claims. The standard names above cannot be overridden here.
    pub extra: Map<String, Value>,
}

impl AssertionClaims {
    /// A client assertion: `iss` = `sub` = `client_id`, `aud`, a `jti`,
    /// `iat` = `now` and `exp` = `now + lifetime`.
    pub fn client_assertion(
        client_id: impl Into<String>,
        audience: impl Into<String>,
        jwt_id: impl Into<String>,
        now: Timestamp,
        lifetime: Duration,
    ) -> Self {
        let client_id = client_id.into();
        AssertionClaims {
            issuer: client_id.clone(),
            subject: client_id,
            audience: audience.into(),
            jwt_id: jwt_id.into(),
            issued_at: now,
            expires_at: now.saturating_add(lifetime),
            not_before: None,
            extra: Map::new(),
        }
    }

    /// The names of the claims, for logs (values never are).
    pub fn names(&self) -> Vec<&str> {
        let mut names = vec!["iss", "sub", "aud", "jti", "iat", "exp"];
        if self.not_before.is_some() {
            names.push("nbf");
        }
        names.extend(
            self.extra
                .keys()
                .map(String::as_str)
                .filter(|k| !RESERVED.contains(k)),
        );
        names
    }

    fn to_json(&self) -> Result<Map<String, Value>, AssertionError> {
        for (claim, value) in [
            ("iss", &self.issuer),
            ("sub", &self.subject),
            ("aud", &self.audience),
            ("jti", &self.jwt_id),
        ] {
            if value.is_empty() {
                return Err(AssertionError::EmptyClaim { claim });
            }
            if value.len() > MAX_CLAIM_LEN {
                return Err(AssertionError::ClaimTooLong { claim });
            }
        }
        // In whole seconds, as the claims are written.
        if self.expires_at.as_secs() <= self.issued_at.as_secs() {
            return Err(AssertionError::NotLiving);
        }
        let mut m = Map::new();
        for (name, value) in &self.extra {
            if !RESERVED.contains(&name.as_str()) {
                m.insert(name.clone(), value.clone());
            }
        }
        m.insert("iss".into(), self.issuer.clone().into());
        m.insert("sub".into(), self.subject.clone().into());
        m.insert("aud".into(), self.audience.clone().into());
        m.insert("jti".into(), self.jwt_id.clone().into());
        m.insert("iat".into(), self.issued_at.as_secs().into());
        m.insert("exp".into(), self.expires_at.as_secs().into());
        if let Some(nbf) = self.not_before {
            m.insert("nbf".into(), nbf.as_secs().into());
        }
        Ok(m)
    }
}

const RESERVED: [&str; 7] = ["iss", "sub", "aud", "jti", "iat", "exp", "nbf"];

/// Why an assertion could not be built. Messages name claims, never values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssertionError {
    /// A required claim is empty.
    #[error("the assertion's `{claim}` claim is empty")]
    EmptyClaim {
        /// The claim's name.
        claim: &'static str,
    },
    /// A claim or header value is longer than [`MAX_CLAIM_LEN`].
    #[error("the assertion's `{claim}` is longer than {MAX_CLAIM_LEN} bytes")]
    ClaimTooLong {
        /// The claim's name.
        claim: &'static str,
    },
    /// `exp` is not after `iat`.
    #[error("the assertion would expire before it is issued (exp <= iat)")]
    NotLiving,
}

impl From<AssertionError> for FetchError {
    fn from(e: AssertionError) -> Self {
        FetchError::permanent(e.to_string())
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWS signing input, `BASE64URL(header) "." BASE64URL(claims)`
/// (RFC 7515 5.1), for the key to sign.
pub fn signing_input(
    header: &JwsHeader,
    claims: &AssertionClaims,
) -> Result<Zeroizing<String>, AssertionError> {
    for (claim, value) in [("kid", &header.kid), ("x5t#S256", &header.x5t_s256)] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_CLAIM_LEN) {
            return Err(AssertionError::ClaimTooLong { claim });
        }
    }
    // Serializing maps of strings and numbers cannot fail.
    let h = serde_json::to_vec(&header.to_json()).unwrap_or_default();
    let c = Zeroizing::new(serde_json::to_vec(&claims.to_json()?).unwrap_or_default());
    Ok(Zeroizing::new(format!("{}.{}", b64(&h), b64(&c))))
}

/// The compact JWS: the signing input, a dot, the base64url signature.
pub fn assemble(signing_input: &str, signature: &[u8]) -> Assertion {
    let mut jwt = Zeroizing::new(String::with_capacity(
        signing_input.len() + 1 + signature.len().div_ceil(3) * 4,
    ));
    jwt.push_str(signing_input);
    jwt.push('.');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
    Assertion::new(jwt.as_str())
}

/// The `exp` of a JWT assertion (read, not verified: it is ours to send,
/// and we only want to know when it stops being worth sending).
///
/// ```
/// use freshtoken_core::oauth2::assertion::expiry;
/// use freshtoken_core::{Assertion, Timestamp};
/// // {"exp":160}
/// assert_eq!(expiry(&Assertion::new("e30.eyJleHAiOjE2MH0.c2ln")), Some(Timestamp::from_secs(160)));
/// assert_eq!(expiry(&Assertion::new("not a jwt")), None);
/// ```
pub fn expiry(assertion: &Assertion) -> Option<Timestamp> {
    JwtTimes::read(assertion.expose_secret()).and_then(|t| t.exp)
}

/// How close to its `exp` an assertion counts as stale: the authority's
/// clock may run ahead of ours by this much, and the request takes time.
pub const STALE_MARGIN: Duration = Duration::from_secs(30);

/// Whether an assertion that expires at `exp` is too close to expiry to be
/// sent at `now` (within [`STALE_MARGIN`]).
pub fn is_stale(exp: Option<Timestamp>, now: Timestamp) -> bool {
    exp.is_some_and(|exp| exp <= now.saturating_add(STALE_MARGIN))
}

/// Reclassifies the authority's refusal of a request that carried an
/// assertion made by someone else (a federated token file, a supplied
/// JWT-bearer assertion or subject token).
///
/// An `invalid_grant` or `invalid_client` for such an assertion usually
/// means it went stale: it expired, or the system that rotates it had
/// already replaced it. That is retried soon ([`FetchErrorKind::Transient`])
/// when the assertion has been `renewed` since it was sent, or when it was
/// [stale](is_stale) by the time of the answer; otherwise the refusal stays
/// [`Permanent`](FetchErrorKind::Permanent) (a wrong audience, an
/// unregistered issuer). It is never
/// [`GrantRevoked`](FetchErrorKind::GrantRevoked): there is no grant to
/// lose, the next assertion starts afresh. Other errors keep their kind.
///
/// ```
/// use freshtoken_core::oauth2::assertion::reclassify_supplied_assertion_error;
/// use freshtoken_core::{FetchError, FetchErrorKind, Timestamp};
///
/// let refused = || FetchError::permanent("invalid_grant").with_error_code(Some("invalid_grant".into()));
/// let now = Timestamp::from_secs(1_000);
/// let e = reclassify_supplied_assertion_error(refused(), Some(Timestamp::from_secs(1_010)), now, false);
/// assert_eq!(e.kind(), FetchErrorKind::Transient); // it had 10 s left: stale
/// let e = reclassify_supplied_assertion_error(refused(), Some(Timestamp::from_secs(4_600)), now, false);
/// assert_eq!(e.kind(), FetchErrorKind::Permanent); // fresh and unchanged: wrong
/// let e = reclassify_supplied_assertion_error(refused(), Some(Timestamp::from_secs(4_600)), now, true);
/// assert_eq!(e.kind(), FetchErrorKind::Transient); // renewed since: try the new one
/// ```
pub fn reclassify_supplied_assertion_error(
    error: FetchError,
    sent_exp: Option<Timestamp>,
    now: Timestamp,
    renewed: bool,
) -> FetchError {
    let refused = matches!(error.error_code(), Some("invalid_grant" | "invalid_client"));
    if !refused
        || !matches!(
            error.kind(),
            FetchErrorKind::Permanent | FetchErrorKind::GrantRevoked
        )
    {
        return error;
    }
    if renewed || is_stale(sent_exp, now) {
        error.with_kind(FetchErrorKind::Transient)
    } else {
        error.with_kind(FetchErrorKind::Permanent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(part: &str) -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn header_and_claims_round_trip() {
        let mut claims = AssertionClaims::client_assertion(
            "app",
            "https://a/token",
            "j1",
            Timestamp::from_millis(1_000_999),
            Duration::from_secs(60),
        );
        claims.extra.insert("scope".into(), "x y".into());
        claims.extra.insert("iss".into(), "overridden?".into());
        let header = JwsHeader::new(JwsAlgorithm::Es256)
            .with_kid("k")
            .with_x5t_s256("t");
        let input = signing_input(&header, &claims).unwrap();
        let (h, c) = input.split_once('.').unwrap();
        assert_eq!(
            decode(h),
            serde_json::json!({"alg":"ES256","typ":"JWT","kid":"k","x5t#S256":"t"})
        );
        assert_eq!(
            decode(c),
            serde_json::json!({"iss":"app","sub":"app","aud":"https://a/token","jti":"j1",
                               "iat":1000,"exp":1060,"scope":"x y"})
        );
        assert_eq!(
            claims.names(),
            ["iss", "sub", "aud", "jti", "iat", "exp", "scope"]
        );
        let jwt = assemble(&input, &[0xff, 0xfe]);
        assert!(jwt.expose_secret().ends_with(".__4"));
        assert_eq!(expiry(&jwt), Some(Timestamp::from_secs(1060)));
    }

    #[test]
    fn bad_claims_are_typed_errors() {
        let now = Timestamp::from_secs(10);
        let ok = AssertionClaims::client_assertion("a", "b", "c", now, Duration::from_secs(1));
        let h = JwsHeader::new(JwsAlgorithm::Rs256);
        let mut c = ok.clone();
        c.audience.clear();
        assert_eq!(
            signing_input(&h, &c).unwrap_err(),
            AssertionError::EmptyClaim { claim: "aud" }
        );
        let mut c = ok.clone();
        c.expires_at = now.saturating_add(Duration::from_millis(999));
        assert_eq!(
            signing_input(&h, &c).unwrap_err(),
            AssertionError::NotLiving
        );
        let mut c = ok.clone();
        c.subject = "x".repeat(MAX_CLAIM_LEN + 1);
        assert_eq!(
            signing_input(&h, &c).unwrap_err(),
            AssertionError::ClaimTooLong { claim: "sub" }
        );
        let h = h.with_kid("k".repeat(MAX_CLAIM_LEN + 1));
        assert_eq!(
            signing_input(&h, &ok).unwrap_err(),
            AssertionError::ClaimTooLong { claim: "kid" }
        );
        let e: FetchError = AssertionError::NotLiving.into();
        assert_eq!(e.kind(), FetchErrorKind::Permanent);
    }

    #[test]
    fn reclassification_leaves_other_errors_alone() {
        let now = Timestamp::from_secs(1000);
        let stale = Some(now);
        for e in [
            FetchError::transient("x"),
            FetchError::rate_limited("x").with_error_code(Some("invalid_grant".into())),
            FetchError::permanent("x").with_error_code(Some("invalid_scope".into())),
        ] {
            let kind = e.kind();
            assert_eq!(
                reclassify_supplied_assertion_error(e, stale, now, true).kind(),
                kind
            );
        }
        let revoked = FetchError::grant_revoked("x").with_error_code(Some("invalid_grant".into()));
        assert_eq!(
            reclassify_supplied_assertion_error(revoked.clone(), None, now, false).kind(),
            FetchErrorKind::Permanent
        );
        assert_eq!(
            reclassify_supplied_assertion_error(revoked, stale, now, false).kind(),
            FetchErrorKind::Transient
        );
    }

    proptest! {
        /// Whatever the claims, the builder gives a typed error or a
        /// signing input whose two parts decode to exactly what was asked.
        #[test]
        fn signing_input_round_trips(
            iss in ".{0,40}", sub in ".{0,40}", aud in ".{0,40}", jti in ".{0,40}",
            iat in any::<u64>(), life in any::<u64>(),
            kid in prop::option::of(".{0,20}"),
            extra in prop::collection::btree_map("[a-z]{1,4}", ".{0,10}", 0..4),
        ) {
            let claims = AssertionClaims {
                issuer: iss.clone(), subject: sub.clone(), audience: aud.clone(), jwt_id: jti.clone(),
                issued_at: Timestamp::from_millis(iat),
                expires_at: Timestamp::from_millis(iat).saturating_add(Duration::from_millis(life)),
                not_before: None,
                extra: extra.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect(),
            };
            let mut header = JwsHeader::new(JwsAlgorithm::Ps256);
            if let Some(kid) = &kid { header = header.with_kid(kid.clone()); }
            match signing_input(&header, &claims) {
                Err(_) => prop_assert!(
                    [&iss, &sub, &aud, &jti].iter().any(|v| v.is_empty())
                    || claims.expires_at.as_secs() <= claims.issued_at.as_secs()
                ),
                Ok(input) => {
                    let (h, c) = input.split_once('.').unwrap();
                    let h = decode(h);
                    prop_assert_eq!(h["alg"].as_str(), Some("PS256"));
                    prop_assert_eq!(h["kid"].as_str(), kid.as_deref());
                    let c = decode(c);
                    prop_assert_eq!(c["iss"].as_str(), Some(iss.as_str()));
                    prop_assert_eq!(c["sub"].as_str(), Some(sub.as_str()));
                    prop_assert_eq!(c["aud"].as_str(), Some(aud.as_str()));
                    prop_assert_eq!(c["jti"].as_str(), Some(jti.as_str()));
                    prop_assert_eq!(c["exp"].as_u64(), Some(claims.expires_at.as_secs()));
                    for (k, v) in &extra {
                        if !RESERVED.contains(&k.as_str()) {
                            prop_assert_eq!(c[k].as_str(), Some(v.as_str()));
                        }
                    }
                }
            }
        }
    }
}
