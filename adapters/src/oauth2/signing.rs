//! Signing keys for JWT assertions: RS256, PS256, ES256 and HS256, with
//! [ring].
//!
//! # Why ring
//!
//! The TLS stack is rustls with ring, so ring is already in every build
//! that has the `oauth2` feature: using it for assertions adds no crate and
//! no code to audit. Its RSA and ECDSA private-key operations are constant
//! time, which RustCrypto's `rsa` crate does not promise (RUSTSEC-2023-0071,
//! the Marvin timing attack, is open against it). `jsonwebtoken` would
//! bring a second copy of the JOSE logic and its own key handling; the
//! JOSE part here is small and lives, pure and property-tested, in
//! `freshtoken_core::oauth2::assertion`.
//!
//! ring does not wipe its parsed keys when they are dropped, so a
//! [`SigningKey`] keeps only the encoded key (PKCS#8, PKCS#1 or the JWK's
//! numbers) in [`Zeroizing`] memory and parses it for each signature; the
//! parsed form lives for one signature. Token requests are minutes apart,
//! so the parse costs nothing that matters: parse and signature together
//! take 1.1 ms for RS256 and 1.3 ms for PS256 with RSA-2048, 74 µs for
//! ES256 and 0.9 µs for HS256 (criterion medians on a 2-core machine,
//! `cargo bench -p freshtoken --features oauth2 --bench signing`). Keys
//! are never written anywhere.
//!
//! [ring]: https://docs.rs/ring

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use freshtoken_core::oauth2::assertion::JwsAlgorithm;
use freshtoken_core::ClientSecret;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::{Zeroize as _, Zeroizing};

/// Why a key could not be loaded or used. Messages never hold key
/// material; they name the file, the format and ring's reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read the key file {path}: {kind}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        kind: std::io::ErrorKind,
    },
    /// No usable PEM section (`PRIVATE KEY`, `RSA PRIVATE KEY`) was found,
    /// or it is not valid PEM.
    #[error("no private key in PEM form found ({0})")]
    Pem(&'static str),
    /// The key's format is not supported (an encrypted PKCS#8 key, a SEC1
    /// `EC PRIVATE KEY`: convert it with
    /// `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.p8.pem`).
    #[error("unsupported key format: {0}")]
    Unsupported(&'static str),
    /// ring refused the key for this algorithm (wrong type, too small, not
    /// consistent).
    #[error("the key is not a valid {alg} key: {reason}")]
    Rejected {
        /// The algorithm it was loaded for.
        alg: JwsAlgorithm,
        /// ring's reason (a fixed name such as `InvalidEncoding`).
        reason: String,
    },
    /// A JWK could not be used.
    #[error("unusable JWK: {0}")]
    Jwk(&'static str),
    /// The certificate given for `x5t#S256` is not a PEM certificate.
    #[error("no certificate in PEM form found")]
    Certificate,
    /// Signing failed (should not happen with a key that loaded).
    #[error("signing with the {0} key failed")]
    Signing(JwsAlgorithm),
}

/// The numbers of an RSA JWK (RFC 7518 6.3), big-endian.
#[derive(Clone)]
struct RsaNumbers {
    n: Vec<u8>,
    e: Vec<u8>,
    d: Zeroizing<Vec<u8>>,
    p: Zeroizing<Vec<u8>>,
    q: Zeroizing<Vec<u8>>,
    dp: Zeroizing<Vec<u8>>,
    dq: Zeroizing<Vec<u8>>,
    qi: Zeroizing<Vec<u8>>,
}

#[derive(Clone)]
enum Material {
    RsaPkcs8(Zeroizing<Vec<u8>>),
    RsaPkcs1(Zeroizing<Vec<u8>>),
    RsaJwk(Box<RsaNumbers>),
    EcPkcs8(Zeroizing<Vec<u8>>),
    EcJwk {
        d: Zeroizing<Vec<u8>>,
        /// The uncompressed point, 0x04 || x || y.
        public: Vec<u8>,
    },
    Hmac(Zeroizing<Vec<u8>>),
}

/// A key file's bytes, wiped when dropped.
pub(crate) fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let bytes = std::fs::read(path).map_err(|e| KeyError::Io {
        path: path.display().to_string(),
        kind: e.kind(),
    })?;
    Ok(Zeroizing::new(bytes))
}

/// A private key (or an HMAC secret) that signs JWT assertions, with the
/// optional `kid` and `x5t#S256` that go in their header.
///
/// Load it from PEM (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`),
/// from PKCS#8 DER, or from a private JWK; or make an HS256 key from a
/// client secret. The key is checked when it is loaded, so a wrong file
/// fails at start-up, not at the first refresh.
///
/// `Debug` shows the algorithm and the `kid`, never the key. `Clone`
/// copies the key material, each copy in memory zeroed when it is dropped:
///
/// ```
/// use freshtoken::oauth2::SigningKey;
///
/// let key = SigningKey::hs256(b"a client secret of enough length")?.with_kid("k1");
/// let shown = format!("{key:?}");
/// assert!(shown.contains("HS256") && shown.contains("k1") && !shown.contains("secret of"));
/// let copy = key.clone();
/// assert_eq!(format!("{copy:?}"), shown);
/// # Ok::<_, freshtoken::oauth2::KeyError>(())
/// ```
#[derive(Clone)]
pub struct SigningKey {
    alg: JwsAlgorithm,
    material: Material,
    kid: Option<String>,
    x5t_s256: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let form = match &self.material {
            Material::RsaPkcs8(_) | Material::EcPkcs8(_) => "PKCS#8",
            Material::RsaPkcs1(_) => "PKCS#1",
            Material::RsaJwk(_) | Material::EcJwk { .. } => "JWK",
            Material::Hmac(_) => "secret",
        };
        f.debug_struct("SigningKey")
            .field("alg", &self.alg.as_str())
            .field("form", &form)
            .field("kid", &self.kid)
            .field("x5t#S256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// Loads a PEM private key for `alg` (RS256 or PS256: an RSA key of
    /// 2048 to 8192 bits, PKCS#8 or PKCS#1; ES256: a P-256 key, PKCS#8).
    ///
    /// ```no_run
    /// use freshtoken::oauth2::{JwsAlgorithm, SigningKey};
    ///
    /// let pem = std::fs::read("/etc/my-app/client-key.pem")?;
    /// let key = SigningKey::from_pem(JwsAlgorithm::Rs256, &pem)?.with_kid("2024-05");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_pem(alg: JwsAlgorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let mut der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            KeyError::Pem(match e {
                rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section",
                rustls_pki_types::pem::Error::MissingSectionEnd { .. } => "a section is not closed",
                rustls_pki_types::pem::Error::Base64Decode(_) => "invalid base64",
                _ => "unreadable PEM",
            })
        })?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8_der(alg, k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => {
                let bytes = Zeroizing::new(k.secret_pkcs1_der().to_vec());
                Self::checked(alg, Material::RsaPkcs1(bytes))
            }
            PrivateKeyDer::Sec1(_) => Err(KeyError::Unsupported(
                "a SEC1 `EC PRIVATE KEY`; convert it to PKCS#8 with \
                 `openssl pkcs8 -topk8 -nocrypt`",
            )),
            _ => Err(KeyError::Unsupported("an unknown private key type")),
        };
        // pki-types does not wipe on drop: the decoded copy is wiped here.
        der.zeroize();
        key
    }

    /// Loads a PEM private key file (see [`from_pem`](Self::from_pem)).
    /// Symlinks are followed (keys mounted from a secret store often are).
    pub fn from_pem_file(alg: JwsAlgorithm, path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let pem = read_key_file(path.as_ref())?;
        Self::from_pem(alg, &pem)
    }

    /// Loads an unencrypted PKCS#8 DER private key for `alg`.
    pub fn from_pkcs8_der(alg: JwsAlgorithm, der: &[u8]) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(der.to_vec());
        match alg {
            JwsAlgorithm::Rs256 | JwsAlgorithm::Ps256 => {
                Self::checked(alg, Material::RsaPkcs8(bytes))
            }
            JwsAlgorithm::Es256 => Self::checked(alg, Material::EcPkcs8(bytes)),
            _ => Err(KeyError::Unsupported(
                "a private key cannot sign HS256; use SigningKey::hs256",
            )),
        }
    }

    /// Loads a private JWK (RFC 7517): `kty` `RSA` (RS256, or PS256 when
    /// its `alg` says so) or `EC` with `crv` `P-256` (ES256), or `oct`
    /// (HS256). Its `kid`, if any, is kept for the header.
    ///
    /// ```
    /// use freshtoken::oauth2::SigningKey;
    ///
    /// let jwk = r#"{"kty":"oct","kid":"hmac-1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ"}"#;
    /// let key = SigningKey::from_jwk(jwk)?;
    /// assert_eq!(key.alg().as_str(), "HS256");
    /// assert_eq!(key.kid(), Some("hmac-1"));
    /// # Ok::<_, freshtoken::oauth2::KeyError>(())
    /// ```
    pub fn from_jwk(jwk: &str) -> Result<Self, KeyError> {
        let v: Zeroizing<String> = Zeroizing::new(jwk.to_owned());
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&v).map_err(|_| KeyError::Jwk("not a JSON object"))?;
        let text = |name: &'static str| -> Result<&str, KeyError> {
            map.get(name).and_then(|v| v.as_str()).ok_or(KeyError::Jwk(
                "a required member is missing or not a string",
            ))
        };
        let bytes = |name: &'static str| -> Result<Zeroizing<Vec<u8>>, KeyError> {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text(name)?.trim_end_matches('='))
                .map(Zeroizing::new)
                .map_err(|_| KeyError::Jwk("a member is not base64url"))
        };
        let named_alg = match map.get("alg").and_then(|v| v.as_str()) {
            None => None,
            Some(name) => Some(
                JwsAlgorithm::from_name(name)
                    .ok_or(KeyError::Jwk("its alg is not RS256, PS256, ES256 or HS256"))?,
            ),
        };
        let key = match text("kty")? {
            "RSA" => {
                let alg = named_alg.unwrap_or(JwsAlgorithm::Rs256);
                if !matches!(alg, JwsAlgorithm::Rs256 | JwsAlgorithm::Ps256) {
                    return Err(KeyError::Jwk("an RSA key's alg must be RS256 or PS256"));
                }
                let numbers = RsaNumbers {
                    n: bytes("n")?.to_vec(),
                    e: bytes("e")?.to_vec(),
                    d: bytes("d")?,
                    p: bytes("p").map_err(|_| {
                        KeyError::Jwk(
                            "an RSA JWK needs its primes and CRT members (p, q, dp, dq, qi)",
                        )
                    })?,
                    q: bytes("q")?,
                    dp: bytes("dp")?,
                    dq: bytes("dq")?,
                    qi: bytes("qi")?,
                };
                Self::checked(alg, Material::RsaJwk(Box::new(numbers)))?
            }
            "EC" => {
                if text("crv")? != "P-256" {
                    return Err(KeyError::Jwk("only the P-256 curve is supported"));
                }
                if named_alg.is_some_and(|a| a != JwsAlgorithm::Es256) {
                    return Err(KeyError::Jwk("a P-256 key's alg must be ES256"));
                }
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::Jwk("x and y must be 32 bytes each"));
                }
                let mut public = Vec::with_capacity(65);
                public.push(4);
                public.extend_from_slice(&x);
                public.extend_from_slice(&y);
                Self::checked(
                    JwsAlgorithm::Es256,
                    Material::EcJwk {
                        d: bytes("d")?,
                        public,
                    },
                )?
            }
            "oct" => {
                if named_alg.is_some_and(|a| a != JwsAlgorithm::Hs256) {
                    return Err(KeyError::Jwk("a symmetric key's alg must be HS256"));
                }
                Self::hs256(&bytes("k")?)?
            }
            _ => return Err(KeyError::Jwk("its kty is not RSA, EC or oct")),
        };
        Ok(match map.get("kid").and_then(|v| v.as_str()) {
            Some(kid) => key.with_kid(kid),
            None => key,
        })
    }

    /// An HS256 key (RFC 7518 3.2 wants at least 32 bytes; shorter keys
    /// are refused).
    pub fn hs256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::Rejected {
                alg: JwsAlgorithm::Hs256,
                reason: "an HS256 key must have at least 32 bytes (RFC 7518 3.2)".to_owned(),
            });
        }
        Ok(SigningKey {
            alg: JwsAlgorithm::Hs256,
            material: Material::Hmac(Zeroizing::new(secret.to_vec())),
            kid: None,
            x5t_s256: None,
        })
    }

    /// The HS256 key of `client_secret_jwt`: the client secret's bytes.
    pub fn from_client_secret(secret: &ClientSecret) -> Result<Self, KeyError> {
        Self::hs256(secret.expose_secret().as_bytes())
    }

    /// Sets the `kid` header.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Sets the `x5t#S256` header from the key's certificate (the first
    /// certificate in `pem`): the base64url SHA-256 of its DER.
    pub fn with_certificate_pem(mut self, pem: &[u8]) -> Result<Self, KeyError> {
        let cert = CertificateDer::from_pem_slice(pem).map_err(|_| KeyError::Certificate)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &cert);
        self.x5t_s256 = Some(b64url(digest.as_ref()));
        Ok(self)
    }

    /// The algorithm.
    pub fn alg(&self) -> JwsAlgorithm {
        self.alg
    }

    /// The `kid`, if set.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The `x5t#S256` thumbprint, if set.
    pub fn x5t_s256(&self) -> Option<&str> {
        self.x5t_s256.as_deref()
    }

    /// An ES256 key's public point, `0x04 || x || y`; `None` for other
    /// keys.
    #[cfg(feature = "dpop")]
    pub(crate) fn ec_public_point(&self) -> Option<Vec<u8>> {
        match &self.material {
            Material::EcJwk { public, .. } => Some(public.clone()),
            Material::EcPkcs8(der) => EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                der,
                &SystemRandom::new(),
            )
            .ok()
            .map(|pair| pair.public_key().as_ref().to_vec()),
            _ => None,
        }
    }

    fn checked(alg: JwsAlgorithm, material: Material) -> Result<Self, KeyError> {
        let key = SigningKey {
            alg,
            material,
            kid: None,
            x5t_s256: None,
        };
        key.sign(b"freshtoken key check")?;
        Ok(key)
    }

    /// Signs `message` (a JWS signing input) and returns the signature:
    /// PKCS#1 v1.5 or PSS for RSA, `r || s` for ES256, the MAC for HS256.
    pub fn sign(&self, message: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let rng = SystemRandom::new();
        let alg = self.alg;
        let rejected = |e: ring::error::KeyRejected| KeyError::Rejected {
            alg,
            reason: e.to_string(),
        };
        let rsa = |pair: RsaKeyPair| -> Result<Zeroizing<Vec<u8>>, KeyError> {
            let padding: &'static dyn signature::RsaEncoding = match alg {
                JwsAlgorithm::Ps256 => &signature::RSA_PSS_SHA256,
                _ => &signature::RSA_PKCS1_SHA256,
            };
            let mut sig = Zeroizing::new(vec![0; pair.public().modulus_len()]);
            pair.sign(padding, &rng, message, &mut sig)
                .map_err(|_| KeyError::Signing(alg))?;
            Ok(sig)
        };
        let is_rsa = matches!(alg, JwsAlgorithm::Rs256 | JwsAlgorithm::Ps256);
        match &self.material {
            Material::RsaPkcs8(der) if is_rsa => {
                rsa(RsaKeyPair::from_pkcs8(der).map_err(rejected)?)
            }
            Material::RsaPkcs1(der) if is_rsa => rsa(RsaKeyPair::from_der(der).map_err(rejected)?),
            Material::RsaJwk(n) if is_rsa => {
                let components = ring::rsa::KeyPairComponents {
                    public_key: ring::rsa::PublicKeyComponents {
                        n: &n.n[..],
                        e: &n.e[..],
                    },
                    d: &n.d[..],
                    p: &n.p[..],
                    q: &n.q[..],
                    dP: &n.dp[..],
                    dQ: &n.dq[..],
                    qInv: &n.qi[..],
                };
                rsa(RsaKeyPair::from_components(&components).map_err(rejected)?)
            }
            Material::EcPkcs8(der) if alg == JwsAlgorithm::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(rejected)?;
                let sig = pair
                    .sign(&rng, message)
                    .map_err(|_| KeyError::Signing(alg))?;
                // The public key is checked to be on the curve by ring.
                debug_assert_eq!(pair.public_key().as_ref().len(), 65);
                Ok(Zeroizing::new(sig.as_ref().to_vec()))
            }
            Material::EcJwk { d, public } if alg == JwsAlgorithm::Es256 => {
                let pair = EcdsaKeyPair::from_private_key_and_public_key(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    d,
                    public,
                    &rng,
                )
                .map_err(rejected)?;
                let sig = pair
                    .sign(&rng, message)
                    .map_err(|_| KeyError::Signing(alg))?;
                Ok(Zeroizing::new(sig.as_ref().to_vec()))
            }
            Material::Hmac(k) if alg == JwsAlgorithm::Hs256 => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k);
                Ok(Zeroizing::new(
                    ring::hmac::sign(&key, message).as_ref().to_vec(),
                ))
            }
            _ => Err(KeyError::Rejected {
                alg,
                reason: "the key type does not match the algorithm".to_owned(),
            }),
        }
    }
}

/// A fresh random `jti`: 16 bytes from the operating system's generator,
/// base64url (22 characters).
pub(crate) fn random_jti() -> Result<String, KeyError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Unsupported("the system random generator failed"))?;
    Ok(b64url(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_jwk_errors() {
        assert!(matches!(
            SigningKey::hs256(b"short"),
            Err(KeyError::Rejected { .. })
        ));
        let key = SigningKey::hs256(&[7u8; 32]).unwrap();
        let a = key.sign(b"m").unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, key.sign(b"m").unwrap());
        for (jwk, why) in [
            ("[]", "not a JSON object"),
            (r#"{"kty":"OKP"}"#, "its kty is not RSA, EC or oct"),
            (
                r#"{"kty":"EC","crv":"P-384"}"#,
                "only the P-256 curve is supported",
            ),
            (r#"{"kty":"oct","k":"!!"}"#, "a member is not base64url"),
            (
                r#"{"kty":"oct","alg":"none","k":"AA"}"#,
                "its alg is not RS256, PS256, ES256 or HS256",
            ),
            (
                r#"{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}"#,
                "an RSA JWK needs its primes and CRT members (p, q, dp, dq, qi)",
            ),
        ] {
            assert_eq!(
                SigningKey::from_jwk(jwk).unwrap_err(),
                KeyError::Jwk(why),
                "{jwk}"
            );
        }
        assert!(matches!(
            SigningKey::from_pem(JwsAlgorithm::Rs256, b"nothing here"),
            Err(KeyError::Pem(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8_der(JwsAlgorithm::Es256, b"\x30\x03\x02\x01\x00"),
            Err(KeyError::Rejected {
                alg: JwsAlgorithm::Es256,
                ..
            })
        ));
        let jti = random_jti().unwrap();
        assert_eq!(jti.len(), 22);
        assert_ne!(jti, random_jti().unwrap());
    }
}
