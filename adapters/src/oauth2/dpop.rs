//! DPoP (RFC 9449): a key the client holds, and the proofs that bind token
//! requests to it (feature `dpop`).
//!
//! A [`DpopKey`] is an ES256 key (ECDSA on P-256 with SHA-256, signed by
//! ring), generated for one instance or loaded from a PEM PKCS#8 file or a
//! private JWK that several instances share. [`SourceBuilder::dpop`](super::SourceBuilder::dpop)
//! makes a source send a fresh proof with every token request, answer the
//! authority's `use_dpop_nonce` once with the nonce it gave, and keep the
//! latest nonce for the next request.
//!
//! The private key is kept, encoded as PKCS#8, in memory that is wiped when
//! it is dropped, and is parsed for each proof; ring's parsed key lives for
//! one signature. Parse, encoding and signature take about 37 µs per proof
//! (criterion median on a 2-core machine, `cargo bench -p freshtoken
//! --features oauth2,dpop --bench dpop`). Only the public key (as a JWK)
//! and its thumbprint are ever shown. Proofs are [`Assertion`]s: their
//! `Debug` hides them. ([`DpopKey::generate`] gets the new key from ring
//! in a buffer ring does not wipe; the copy kept is wiped.)

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use freshtoken_core::oauth2::assertion::assemble;
use freshtoken_core::oauth2::HttpResponse;
use freshtoken_core::{Assertion, Clock as _, FetchError, Timestamp};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;
use zeroize::{Zeroize as _, Zeroizing};

use super::signing::{random_jti, read_key_file, KeyError, SigningKey};
use crate::clock::SystemClock;

/// The RFC 6749 error code with which an authority asks for a nonce
/// (RFC 9449 8).
pub const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// The longest `DPoP-Nonce` kept; a longer one is ignored.
const MAX_NONCE_LEN: usize = 1024;

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK of a P-256 point (`0x04 || x || y`), its members in the
/// lexicographic order and without whitespace that RFC 7638 3 hashes.
fn public_jwk(point: &[u8]) -> Result<String, KeyError> {
    match point {
        [4, xy @ ..] if xy.len() == 64 => Ok(format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64url(&xy[..32]),
            b64url(&xy[32..])
        )),
        _ => Err(KeyError::Unsupported(
            "a P-256 public key that is not uncompressed",
        )),
    }
}

/// The RFC 7638 thumbprint of a JWK in its canonical form: base64url of
/// its SHA-256.
fn thumbprint(canonical_jwk: &str) -> String {
    b64url(ring::digest::digest(&ring::digest::SHA256, canonical_jwk.as_bytes()).as_ref())
}

/// An ES256 key that DPoP proofs are signed with.
///
/// `Debug` shows the thumbprint only; errors never hold key material.
/// `Clone` shares the key.
///
/// ```
/// use freshtoken::oauth2::DpopKey;
///
/// let key = DpopKey::generate()?;
/// assert_eq!(key.thumbprint().len(), 43); // base64url of a SHA-256
/// assert!(key.public_jwk().starts_with(r#"{"crv":"P-256","kty":"EC","#));
/// let proof = key.proof("POST", "https://auth.example.com/token?x=1").sign()?;
/// assert_eq!(proof.expose_secret().split('.').count(), 3);
/// assert!(!format!("{key:?} {proof:?}").contains(proof.expose_secret()));
/// # Ok::<_, freshtoken::oauth2::KeyError>(())
/// ```
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<Inner>,
}

struct Inner {
    key: SigningKey,
    jwk: String,
    thumbprint: String,
    /// Made by [`DpopKey::generate`]: no other process holds it.
    generated: bool,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &"ES256")
            .field("jkt", &self.inner.thumbprint)
            .field("generated", &self.inner.generated)
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A new random P-256 key, from the operating system's generator: a key
    /// for this instance alone (tokens bound to it serve no other process).
    pub fn generate() -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Unsupported("the system random generator failed"))?;
        // ring's document is not wiped on drop; the copy kept here is.
        let mut key = Self::from_pkcs8_der(pkcs8.as_ref())?;
        if let Some(inner) = Arc::get_mut(&mut key.inner) {
            inner.generated = true;
        }
        Ok(key)
    }

    /// Loads an unencrypted PKCS#8 P-256 private key in PEM form (`PRIVATE
    /// KEY`; convert a SEC1 `EC PRIVATE KEY` with `openssl pkcs8 -topk8
    /// -nocrypt`).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        // The errors (not PEM, SEC1, another key type) are SigningKey's.
        SigningKey::from_pem(super::JwsAlgorithm::Es256, pem)?;
        let mut der =
            PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::Pem("unreadable PEM"))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8_der(k.secret_pkcs8_der()),
            _ => Err(KeyError::Unsupported("a DPoP key must be PKCS#8")),
        };
        der.zeroize();
        key
    }

    /// Loads a PEM key file (see [`from_pem`](Self::from_pem)): how a
    /// fleet shares one key, and with it the tokens bound to it.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        Self::from_pem(&read_key_file(path.as_ref())?)
    }

    /// Loads an unencrypted PKCS#8 P-256 private key in DER form.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        Self::from_signing_key(SigningKey::from_pkcs8_der(super::JwsAlgorithm::Es256, der)?)
    }

    /// Loads a private P-256 JWK (RFC 7517: `kty` `EC`, `crv` `P-256`,
    /// `x`, `y` and the private `d`; an `alg` other than `ES256` is
    /// refused). The key's thumbprint is computed from `x` and `y`, so it
    /// is the one any other holder of the JWK computes.
    ///
    /// ```
    /// use freshtoken::oauth2::{DpopKey, KeyError};
    ///
    /// // A public JWK (no `d`) cannot sign.
    /// let public = DpopKey::generate()?.public_jwk().to_owned();
    /// assert_eq!(
    ///     DpopKey::from_jwk(&public).unwrap_err(),
    ///     KeyError::Jwk("a required member is missing or not a string")
    /// );
    /// # Ok::<_, KeyError>(())
    /// ```
    pub fn from_jwk(jwk: &str) -> Result<Self, KeyError> {
        let key = SigningKey::from_jwk(jwk)?;
        if key.alg() != super::JwsAlgorithm::Es256 {
            return Err(KeyError::Jwk("a DPoP key must be an EC P-256 (ES256) key"));
        }
        Self::from_signing_key(key)
    }

    /// Loads a private JWK file (see [`from_jwk`](Self::from_jwk)).
    pub fn from_jwk_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let jwk = read_key_file(path.as_ref())?;
        let text = std::str::from_utf8(&jwk).map_err(|_| KeyError::Jwk("not UTF-8"))?;
        Self::from_jwk(text)
    }

    /// The key for an ES256 signing key that loaded (so its point is on
    /// the curve).
    fn from_signing_key(key: SigningKey) -> Result<Self, KeyError> {
        let point = key
            .ec_public_point()
            .ok_or(KeyError::Unsupported("a DPoP key must be an ES256 key"))?;
        let jwk = public_jwk(&point)?;
        Ok(DpopKey {
            inner: Arc::new(Inner {
                key,
                thumbprint: thumbprint(&jwk),
                jwk,
                generated: false,
            }),
        })
    }

    /// The public key as a JWK (RFC 7517), in the canonical form of RFC
    /// 7638: `{"crv":"P-256","kty":"EC","x":..,"y":..}`.
    pub fn public_jwk(&self) -> &str {
        &self.inner.jwk
    }

    /// The key's JWK SHA-256 thumbprint (RFC 7638), base64url: what an
    /// authority puts in a bound token's `cnf.jkt`, and what identifies the
    /// key in logs.
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// Whether the key was made by [`generate`](Self::generate): this
    /// process holds it alone, so the tokens bound to it serve no other
    /// instance, and a driver with a shared cache runs without it (see
    /// [`Sharing::InstanceKey`](crate::handle::Sharing::InstanceKey)).
    /// A loaded key may be shared by every process that loads it.
    ///
    /// ```
    /// use freshtoken::oauth2::DpopKey;
    ///
    /// assert!(DpopKey::generate()?.is_generated());
    /// # Ok::<_, freshtoken::oauth2::KeyError>(())
    /// ```
    pub fn is_generated(&self) -> bool {
        self.inner.generated
    }

    /// Starts a proof for a request with method `htm` to `url` (its query
    /// and fragment are left out of `htu`, RFC 9449 4.2).
    pub fn proof<'a>(&'a self, htm: &'a str, url: &'a str) -> ProofBuilder<'a> {
        ProofBuilder {
            key: self,
            htm,
            htu: htu(url),
            nonce: None,
            ath: None,
            now: None,
        }
    }
}

/// `url` without its query and fragment.
fn htu(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// A DPoP proof being built: see [`DpopKey::proof`].
#[must_use]
pub struct ProofBuilder<'a> {
    key: &'a DpopKey,
    htm: &'a str,
    htu: &'a str,
    nonce: Option<&'a str>,
    ath: Option<std::borrow::Cow<'a, str>>,
    now: Option<Timestamp>,
}

impl fmt::Debug for ProofBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofBuilder")
            .field("htm", &self.htm)
            .field("htu", &self.htu)
            .field("nonce", &self.nonce.is_some())
            .field("ath", &self.ath.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> ProofBuilder<'a> {
    /// With the `nonce` the server gave (in a `DPoP-Nonce` header).
    pub fn nonce(mut self, nonce: &'a str) -> Self {
        self.nonce = Some(nonce);
        self
    }

    /// With `ath`, the base64url SHA-256 of the access token the request
    /// presents (for a resource server, RFC 9449 7).
    pub fn access_token(self, token: &'a str) -> Self {
        self.ath(std::borrow::Cow::Owned(token_hash(token)))
    }

    /// With `ath` already computed by [`token_hash`] (the middleware
    /// computes it once per token).
    pub(crate) fn ath(mut self, hash: std::borrow::Cow<'a, str>) -> Self {
        self.ath = Some(hash);
        self
    }

    /// With `iat` at `now` instead of the system clock's time.
    pub fn issued_at(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    /// Signs the proof: a JWT whose header is `typ: dpop+jwt`, `alg: ES256`
    /// and the public `jwk`, with the claims `jti` (16 random bytes),
    /// `htm`, `htu`, `iat`, and `nonce` and `ath` when given.
    pub fn sign(self) -> Result<Assertion, KeyError> {
        let jwk: serde_json::Value = serde_json::from_str(&self.key.inner.jwk)
            .map_err(|_| KeyError::Jwk("the public JWK is not JSON"))?;
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let mut claims = serde_json::Map::new();
        claims.insert("jti".into(), random_jti()?.into());
        claims.insert("htm".into(), self.htm.into());
        claims.insert("htu".into(), self.htu.into());
        let now = self.now.unwrap_or_else(|| SystemClock.now());
        claims.insert("iat".into(), now.as_secs().into());
        if let Some(nonce) = self.nonce {
            claims.insert("nonce".into(), nonce.into());
        }
        if let Some(hash) = self.ath {
            claims.insert("ath".into(), hash.into_owned().into());
        }
        // Serializing maps of strings and numbers cannot fail.
        let input = Zeroizing::new(format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).unwrap_or_default()),
            b64url(&serde_json::to_vec(&claims).unwrap_or_default())
        ));
        let signature = self.key.inner.key.sign(input.as_bytes())?;
        Ok(assemble(&input, &signature))
    }
}

/// `ath` of an access token (RFC 9449 4.2): the base64url SHA-256 of its
/// ASCII form. A hash, not the token, so it may be kept.
pub(crate) fn token_hash(token: &str) -> String {
    b64url(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// A source's DPoP state: its key and the latest nonce its authority gave.
#[derive(Clone)]
pub(crate) struct DpopState {
    key: DpopKey,
    nonce: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for DpopState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopState")
            .field("key", &self.key)
            .field("has_nonce", &self.current_nonce().is_some())
            .finish()
    }
}

impl DpopState {
    pub(crate) fn new(key: DpopKey) -> Self {
        DpopState {
            key,
            nonce: Arc::default(),
        }
    }

    /// The key.
    pub(crate) fn key(&self) -> &DpopKey {
        &self.key
    }

    fn current_nonce(&self) -> Option<String> {
        self.nonce.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// A fresh proof for a request to `url` with `method`, with the latest
    /// nonce.
    pub(crate) fn proof(&self, method: &str, url: &str) -> Result<Assertion, FetchError> {
        self.proof_for(method, url, None)
            .map_err(|e| FetchError::permanent(format!("cannot sign a DPoP proof: {e}")))
    }

    /// A fresh proof for a request to `url` with `method`, with the latest
    /// nonce and, for a resource server, the presented token's `ath`.
    pub(crate) fn proof_for(
        &self,
        method: &str,
        url: &str,
        ath: Option<&str>,
    ) -> Result<Assertion, KeyError> {
        let nonce = self.current_nonce();
        let mut proof = self.key.proof(method, url);
        if let Some(n) = &nonce {
            proof = proof.nonce(n);
        }
        if let Some(hash) = ath {
            proof = proof.ath(std::borrow::Cow::Borrowed(hash));
        }
        let proof = proof.sign()?;
        crate::metrics::dpop_proof(if ath.is_some() {
            crate::metrics::DpopServer::Resource
        } else {
            crate::metrics::DpopServer::Authority
        });
        Ok(proof)
    }

    /// Keeps the `DPoP-Nonce` of `response`, if it has a usable one, and
    /// says whether it had.
    pub(crate) fn take_nonce(&self, response: &HttpResponse) -> bool {
        self.keep_nonce(response.header("dpop-nonce"))
    }

    /// Keeps `nonce` if it is a usable one, and says whether it was.
    pub(crate) fn keep_nonce(&self, nonce: Option<&str>) -> bool {
        let Some(nonce) = nonce else {
            return false;
        };
        if !is_nonce(nonce) {
            tracing::warn!(
                len = nonce.len(),
                "ignoring a DPoP-Nonce that is empty, too long or not of the allowed characters"
            );
            return false;
        }
        if let Ok(mut kept) = self.nonce.lock() {
            *kept = Some(nonce.to_owned());
        }
        true
    }
}

/// A `use_dpop_nonce` refusal that a retry with a nonce cannot answer now:
/// transient (the next fetch sends the latest nonce), with its status and
/// code.
pub(crate) fn nonce_refusal(e: &FetchError, message: &'static str) -> FetchError {
    let error = FetchError::transient(message).with_error_code(Some(USE_DPOP_NONCE.to_owned()));
    match e.status() {
        Some(status) => error.with_status(status),
        None => error,
    }
}

/// RFC 9449 8.1: `nonce = 1*NQCHAR`, NQCHAR = %x21 / %x23-5B / %x5D-7E.
fn is_nonce(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NONCE_LEN
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// RFC 9449's example key (section 4.1's proof header) and the `jkt`
    /// the RFC gives for it (section 6.1); the digest was also checked
    /// with Python's hashlib over the canonical JSON.
    #[test]
    fn thumbprint_matches_rfc_9449() {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs")
            .unwrap();
        let y = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA")
            .unwrap();
        let mut point = vec![4u8];
        point.extend(x);
        point.extend(y);
        let jwk = public_jwk(&point).unwrap();
        assert_eq!(
            jwk,
            r#"{"crv":"P-256","kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}"#
        );
        assert_eq!(
            thumbprint(&jwk),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
        assert!(public_jwk(&point[1..]).is_err());
    }

    #[test]
    fn proofs_carry_the_claims_and_verify_with_the_embedded_key() {
        let key = DpopKey::generate().unwrap();
        let proof = key
            .proof("POST", "https://as.example/token?a=1#frag")
            .nonce("n-1")
            .access_token("the-token")
            .issued_at(Timestamp::from_secs(1_700_000_000))
            .sign()
            .unwrap();
        let parts: Vec<&str> = proof.expose_secret().split('.').collect();
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert!(header["jwk"].get("d").is_none());
        assert_eq!(header["jwk"].to_string(), key.public_jwk());
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://as.example/token");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nonce"], "n-1");
        // base64url(SHA-256("the-token")), computed with Python's hashlib.
        let ath = b64url(ring::digest::digest(&ring::digest::SHA256, b"the-token").as_ref());
        assert_eq!(claims["ath"], ath.as_str());
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);

        // The signature verifies with the public key from the header.
        let b = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let mut point = vec![4u8];
        point.extend(b(header["jwk"]["x"].as_str().unwrap()));
        point.extend(b(header["jwk"]["y"].as_str().unwrap()));
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            point,
        );
        let input = format!("{}.{}", parts[0], parts[1]);
        public.verify(input.as_bytes(), &b(parts[2])).unwrap();

        let plain = key.proof("GET", "https://rs.example/x").sign().unwrap();
        let claims = decode(plain.expose_secret().split('.').nth(1).unwrap());
        assert!(claims.get("nonce").is_none() && claims.get("ath").is_none());
        assert_ne!(claims["jti"], decode(parts[1])["jti"]);
    }

    #[test]
    fn the_private_key_never_shows() {
        let key = DpopKey::generate().unwrap();
        // The private scalar, as a JWK's `d` would hold it.
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let from_der = DpopKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();
        // PKCS#8 for P-256 from ring: the 32-byte scalar follows `04 20`
        // at offset 36 (RFC 5915 inside RFC 5208).
        let der = pkcs8.as_ref();
        assert_eq!(&der[34..36], &[0x04, 0x20]);
        let scalar = &der[36..68];
        let forms = [
            b64url(scalar),
            base64::engine::general_purpose::STANDARD.encode(scalar),
            scalar
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            format!("{scalar:?}"),
        ];
        let state = DpopState::new(from_der.clone());
        let proof = from_der
            .proof("POST", "https://as.example/t")
            .sign()
            .unwrap();
        let shown = format!(
            "{from_der:?} {key:?} {state:?} {proof:?} {:?} {} {}",
            from_der.proof("POST", "https://as.example/t"),
            from_der.public_jwk(),
            proof.expose_secret(),
        );
        for form in &forms {
            assert!(!shown.contains(form.as_str()), "{form} in {shown}");
        }
        assert!(shown.contains(from_der.thumbprint()));
        assert!(!format!("{proof:?}").contains(proof.expose_secret()));
    }

    #[test]
    fn keys_load_from_pem_and_refuse_others_typed() {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let a = DpopKey::from_pem(pem.as_bytes()).unwrap();
        let b = DpopKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();
        assert_eq!(a.thumbprint(), b.thumbprint());
        assert_ne!(a.thumbprint(), DpopKey::generate().unwrap().thumbprint());
        assert!(matches!(
            DpopKey::from_pem(b"no key here"),
            Err(KeyError::Pem(_))
        ));
        assert!(matches!(
            DpopKey::from_pkcs8_der(b"\x30\x03\x02\x01\x00"),
            Err(KeyError::Rejected { .. })
        ));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            DpopKey::from_pem(sec1.as_bytes()),
            Err(KeyError::Unsupported(_))
        ));
        let missing = DpopKey::from_pem_file("/nonexistent/dpop.pem").unwrap_err();
        assert!(matches!(missing, KeyError::Io { .. }), "{missing}");
    }

    #[test]
    fn keys_load_from_a_private_jwk_file_as_from_pkcs8() {
        let generate = || {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap()
        };
        let (pkcs8, other) = (generate(), generate());
        // ring's P-256 PKCS#8 document: the private scalar at 36..68, the
        // public point (0x04 || x || y) at 73..138.
        let der = pkcs8.as_ref();
        assert_eq!((der.len(), der[73]), (138, 4));
        let jwk = |d: &[u8]| {
            format!(
                r#"{{"kty":"EC","crv":"P-256","alg":"ES256","x":"{}","y":"{}","d":"{}"}}"#,
                b64url(&der[74..106]),
                b64url(&der[106..138]),
                b64url(d)
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpop.jwk");
        std::fs::write(&path, jwk(&der[36..68])).unwrap();
        let from_jwk = DpopKey::from_jwk_file(&path).unwrap();
        let from_der = DpopKey::from_pkcs8_der(der).unwrap();
        assert_eq!(from_jwk.thumbprint(), from_der.thumbprint());
        assert_eq!(from_jwk.public_jwk(), from_der.public_jwk());
        assert!(!from_jwk.is_generated());
        let proof = from_jwk.proof("POST", "https://a.example/token").sign();
        assert!(proof.is_ok());

        // Another key's private scalar with these x and y: refused.
        assert!(matches!(
            DpopKey::from_jwk(&jwk(&other.as_ref()[36..68])),
            Err(KeyError::Rejected { .. })
        ));
        let refused = [
            r#"{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ"}"#,
            r#"{"kty":"EC","crv":"P-384","x":"AA","y":"AA","d":"AA"}"#,
            "not json",
        ];
        for text in refused {
            let e = DpopKey::from_jwk(text).unwrap_err();
            assert!(matches!(e, KeyError::Jwk(_)), "{text}: {e:?}");
        }
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            DpopKey::from_jwk_file(&path).unwrap_err(),
            KeyError::Jwk("not UTF-8")
        );
        let missing = DpopKey::from_jwk_file("/nonexistent/dpop.jwk").unwrap_err();
        assert!(matches!(missing, KeyError::Io { .. }), "{missing}");
    }

    #[test]
    fn nonces_are_kept_only_when_well_formed() {
        let state = DpopState::new(DpopKey::generate().unwrap());
        let with = |v: &str| HttpResponse::new(400, vec![("DPoP-Nonce".into(), v.into())], vec![]);
        assert!(!state.take_nonce(&HttpResponse::new(200, vec![], vec![])));
        assert!(state.take_nonce(&with("eyJ7S_zG.eyJH0-Z.HX4w-7v")));
        assert_eq!(
            state.current_nonce().as_deref(),
            Some("eyJ7S_zG.eyJH0-Z.HX4w-7v")
        );
        for bad in ["", "a b", "a\"b", "a\\b", &"n".repeat(MAX_NONCE_LEN + 1)] {
            assert!(!state.take_nonce(&with(bad)), "{bad:?}");
        }
        assert_eq!(
            state.current_nonce().as_deref(),
            Some("eyJ7S_zG.eyJH0-Z.HX4w-7v")
        );
        let proof = state.proof("POST", "https://as.example/t").unwrap();
        let claims = decode(proof.expose_secret().split('.').nth(1).unwrap());
        assert_eq!(claims["nonce"], "eyJ7S_zG.eyJH0-Z.HX4w-7v");
        assert_eq!(htu("https://a/b"), "https://a/b");
        assert_eq!(htu("https://a/b#x?y"), "https://a/b");
    }
}
