//! Where client assertions come from: signed per request with a
//! [`SigningKey`], read from a file another system rotates
//! ([`AssertionFile`]), or made by a closure.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::oauth2::assertion::{
    assemble, expiry, is_stale, signing_input, AssertionClaims, JwsHeader,
};
use freshtoken_core::{Assertion, ClientSecret, FetchError, Timestamp};
use zeroize::Zeroizing;

use super::signing::{random_jti, SigningKey};

/// The default lifetime of a signed client assertion: 60 s. It is made for
/// one request, so a short life limits what a leaked one is worth, and
/// leaves room for clock skew.
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The largest assertion file read: 64 KiB (Kubernetes tokens are about
/// 1 KiB).
pub const MAX_ASSERTION_FILE_BYTES: u64 = 64 * 1024;

/// What a signed client assertion's `aud` is.
///
/// RFC 7523 3 asks for the token endpoint, and that is the default
/// (Entra ID, Okta, Auth0, oidc-provider accept it). Some authorities
/// want the issuer identifier instead (Keycloak accepts both, and the
/// current OAuth drafts move to the issuer); set it per vendor.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Audience {
    /// The token endpoint URL the request goes to.
    #[default]
    TokenEndpoint,
    /// The issuer identifier (the discovered issuer, or the one set with
    /// `SourceBuilder::issuer`).
    Issuer,
    /// A fixed value.
    Custom(String),
}

/// Makes a fresh `jti` for each assertion.
pub type JtiGenerator = Arc<dyn Fn() -> String + Send + Sync>;

/// What the source knows when it needs a client assertion.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct AssertionContext<'a> {
    /// The client id (`iss` and `sub` of a client assertion).
    pub client_id: &'a str,
    /// The token endpoint the request goes to.
    pub token_endpoint: &'a str,
    /// The issuer, when known (discovered or configured).
    pub issuer: Option<&'a str>,
    /// Now, by the system clock.
    pub now: Timestamp,
}

/// A closure that supplies client assertions.
pub type AssertionFn =
    Arc<dyn Fn(&AssertionContext<'_>) -> Result<Assertion, FetchError> + Send + Sync>;

/// Signs a client assertion per request.
#[derive(Clone)]
pub(crate) struct AssertionSigner {
    /// `None`: HS256 keyed with the client secret (`client_secret_jwt`),
    /// made per request so that the secret has one home.
    pub(crate) key: Option<Arc<SigningKey>>,
    pub(crate) audience: Audience,
    pub(crate) lifetime: Duration,
    pub(crate) jti: Option<JtiGenerator>,
}

impl AssertionSigner {
    pub(crate) fn new(key: SigningKey) -> Self {
        AssertionSigner {
            key: Some(Arc::new(key)),
            audience: Audience::TokenEndpoint,
            lifetime: DEFAULT_ASSERTION_LIFETIME,
            jti: None,
        }
    }

    pub(crate) fn with_client_secret() -> Self {
        AssertionSigner {
            key: None,
            audience: Audience::TokenEndpoint,
            lifetime: DEFAULT_ASSERTION_LIFETIME,
            jti: None,
        }
    }

    pub(crate) fn claims(
        &self,
        ctx: &AssertionContext<'_>,
        subject: Option<&str>,
    ) -> Result<AssertionClaims, FetchError> {
        let audience = match &self.audience {
            Audience::TokenEndpoint => ctx.token_endpoint.to_owned(),
            Audience::Issuer => ctx
                .issuer
                .ok_or_else(|| {
                    FetchError::permanent(
                        "the assertion audience is the issuer, but no issuer is known: \
                         build the source from an issuer or set one",
                    )
                })?
                .to_owned(),
            Audience::Custom(aud) => aud.clone(),
        };
        let jti = match &self.jti {
            Some(f) => f(),
            None => random_jti().map_err(|e| FetchError::transient(e.to_string()))?,
        };
        let mut claims =
            AssertionClaims::client_assertion(ctx.client_id, audience, jti, ctx.now, self.lifetime);
        if let Some(sub) = subject {
            claims.subject = sub.to_owned();
        }
        Ok(claims)
    }

    pub(crate) fn sign(
        &self,
        claims: &AssertionClaims,
        secret: Option<&ClientSecret>,
    ) -> Result<Assertion, FetchError> {
        let from_secret;
        let key = match &self.key {
            Some(key) => &**key,
            None => {
                let secret = secret.ok_or_else(|| {
                    FetchError::permanent("client_secret_jwt needs the client secret")
                })?;
                from_secret = SigningKey::from_client_secret(secret)
                    .map_err(|e| FetchError::permanent(e.to_string()))?;
                &from_secret
            }
        };
        let mut header = JwsHeader::new(key.alg());
        if let Some(kid) = key.kid() {
            header = header.with_kid(kid);
        }
        if let Some(t) = key.x5t_s256() {
            header = header.with_x5t_s256(t);
        }
        let input = signing_input(&header, claims)?;
        let signature = key
            .sign(input.as_bytes())
            .map_err(|e| FetchError::permanent(e.to_string()))?;
        tracing::trace!(
            alg = key.alg().as_str(),
            claims = ?claims.names(),
            "signed an assertion"
        );
        Ok(assemble(&input, &signature))
    }
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("key", &self.key)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .field("custom_jti", &self.jti.is_some())
            .finish()
    }
}

/// Why an assertion file could not be used. Each is transient for the
/// refresher: the system that writes the file (the kubelet, the Azure
/// workload-identity webhook) is expected to put a good one there soon.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssertionFileError {
    /// The file does not exist (yet, or no more).
    #[error("the assertion file {path} does not exist")]
    Missing {
        /// The file.
        path: String,
    },
    /// The file is empty (a writer in the middle of its work).
    #[error("the assertion file {path} is empty")]
    Empty {
        /// The file.
        path: String,
    },
    /// The file is larger than [`MAX_ASSERTION_FILE_BYTES`].
    #[error("the assertion file {path} is larger than {MAX_ASSERTION_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The assertion in the file has expired, or expires within the
    /// stale margin (30 s).
    #[error("the assertion in {path} expired (exp {exp}); waiting for it to be renewed")]
    Expired {
        /// The file.
        path: String,
        /// Its `exp`.
        exp: Timestamp,
    },
    /// The path names a FIFO, a directory, a device or a socket: only a
    /// regular file is read (opened without blocking, so a FIFO never
    /// hangs the fetch).
    #[error("refusing the assertion file {path}: it is {kind}, not a regular file")]
    NotRegular {
        /// The file.
        path: String,
        /// What it is instead ("a FIFO", "a directory"...).
        kind: &'static str,
    },
    /// Another I/O error.
    #[error("cannot read the assertion file {path}: {kind}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        kind: std::io::ErrorKind,
    },
}

impl From<AssertionFileError> for FetchError {
    fn from(e: AssertionFileError) -> Self {
        FetchError::transient(e.to_string())
    }
}

/// An assertion that another system writes to a file and rotates: a
/// Kubernetes projected service-account token, the Azure workload-identity
/// token (`AZURE_FEDERATED_TOKEN_FILE`), a GKE or EKS web-identity token
/// (`AWS_WEB_IDENTITY_TOKEN_FILE`).
///
/// The file is read for every request. Token requests are minutes apart and
/// the file is about a kilobyte, so this costs nothing, and it is the one
/// way never to send an assertion that was rotated away. Symlinks are
/// followed (the kubelet swaps a `..data` symlink to replace a projected
/// volume's files atomically) and any mode is accepted (projected tokens
/// are often 0644): the strict rules of the file cache are for what
/// freshtoken writes, not for inputs others provide. Surrounding whitespace
/// is trimmed. An assertion that is a JWT and has expired, or expires
/// within 30 s, is not sent: the fetch fails with
/// [`AssertionFileError::Expired`] and is retried until the file is
/// renewed.
///
/// ```
/// use freshtoken::oauth2::{AssertionFile, AssertionFileError};
/// use freshtoken::Timestamp;
///
/// let file = AssertionFile::new("/nonexistent/token");
/// assert!(matches!(file.read(Timestamp::EPOCH), Err(AssertionFileError::Missing { .. })));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssertionFile {
    path: PathBuf,
}

impl AssertionFile {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AssertionFile { path: path.into() }
    }

    /// The Azure workload-identity file named by `AZURE_FEDERATED_TOKEN_FILE`
    /// (set by the workload-identity webhook), if the variable is set.
    pub fn from_azure_env() -> Option<Self> {
        std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").map(Self::new)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the assertion, refusing one that is stale at `now`.
    pub fn read(&self, now: Timestamp) -> Result<Assertion, AssertionFileError> {
        let path = || self.path.display().to_string();
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => AssertionFileError::Missing { path: path() },
            kind => AssertionFileError::Io { path: path(), kind },
        };
        use std::io::Read as _;
        // Non-blocking, and only a regular file: a FIFO at the path fails
        // at once instead of hanging the fetch until someone writes to it.
        let file = crate::regular_file::open(&self.path).map_err(|e| match e {
            crate::regular_file::OpenError::Io(e) => io(e),
            crate::regular_file::OpenError::NotRegular(kind) => {
                AssertionFileError::NotRegular { path: path(), kind }
            }
        })?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_ASSERTION_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_ASSERTION_FILE_BYTES {
            return Err(AssertionFileError::TooLarge { path: path() });
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| AssertionFileError::Io {
            path: path(),
            kind: std::io::ErrorKind::InvalidData,
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(AssertionFileError::Empty { path: path() });
        }
        let assertion = Assertion::new(text);
        let exp = expiry(&assertion);
        if is_stale(exp, now) {
            return Err(AssertionFileError::Expired {
                path: path(),
                exp: exp.unwrap_or(Timestamp::EPOCH),
            });
        }
        Ok(assertion)
    }
}

/// Where a source's client assertions come from.
#[derive(Clone)]
pub(crate) enum AssertionProvider {
    Signed(AssertionSigner),
    File(AssertionFile),
    Fn(AssertionFn),
}

impl fmt::Debug for AssertionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionProvider::Signed(s) => f.debug_tuple("Signed").field(s).finish(),
            AssertionProvider::File(file) => f.debug_tuple("File").field(&file.path).finish(),
            AssertionProvider::Fn(_) => f.write_str("Fn"),
        }
    }
}

impl AssertionProvider {
    /// Whether the assertion is made by someone else, so that a refusal
    /// may mean it went stale rather than that it is wrong.
    pub(crate) fn is_supplied(&self) -> bool {
        !matches!(self, AssertionProvider::Signed(_))
    }

    pub(crate) fn assertion(
        &self,
        ctx: &AssertionContext<'_>,
        secret: Option<&ClientSecret>,
    ) -> Result<Assertion, FetchError> {
        match self {
            AssertionProvider::Signed(signer) => signer.sign(&signer.claims(ctx, None)?, secret),
            AssertionProvider::File(file) => Ok(file.read(ctx.now)?),
            AssertionProvider::Fn(f) => f(ctx),
        }
    }

    /// After a refusal: whether the assertion has been renewed since
    /// `sent` (a file holding a different one now).
    pub(crate) fn renewed_since(&self, sent: &Assertion, now: Timestamp) -> bool {
        match self {
            AssertionProvider::File(file) => file
                .read(now)
                .is_ok_and(|current| current.fingerprint() != sent.fingerprint()),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt(exp: u64) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256"}"#),
            b64(&format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn assertion_files_read_and_refuse_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = AssertionFile::new(&path);
        let now = Timestamp::from_secs(1_000);
        let path_s = path.display().to_string();
        assert_eq!(
            file.read(now).unwrap_err(),
            AssertionFileError::Missing {
                path: path_s.clone()
            }
        );
        std::fs::write(&path, " \n").unwrap();
        assert_eq!(
            file.read(now).unwrap_err(),
            AssertionFileError::Empty {
                path: path_s.clone()
            }
        );
        std::fs::write(&path, format!("\n{}\n", jwt(2_000))).unwrap();
        assert_eq!(file.read(now).unwrap().expose_secret(), jwt(2_000));
        // Within the 30 s margin, or past: expired.
        std::fs::write(&path, jwt(1_020)).unwrap();
        assert_eq!(
            file.read(now).unwrap_err(),
            AssertionFileError::Expired {
                path: path_s.clone(),
                exp: Timestamp::from_secs(1_020)
            }
        );
        // Opaque tokens have no exp to check: sent as they are.
        std::fs::write(&path, "opaque-token").unwrap();
        assert_eq!(file.read(now).unwrap().expose_secret(), "opaque-token");
        std::fs::write(&path, vec![b'a'; MAX_ASSERTION_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(
            file.read(now).unwrap_err(),
            AssertionFileError::TooLarge {
                path: path_s.clone()
            }
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(matches!(file.read(now), Err(AssertionFileError::Io { .. })));
        let e: FetchError = AssertionFileError::Missing { path: path_s }.into();
        assert_eq!(e.kind(), freshtoken_core::FetchErrorKind::Transient);
        // A directory is refused as not a regular file, not a panic.
        assert!(matches!(
            AssertionFile::new(dir.path()).read(now),
            Err(AssertionFileError::NotRegular {
                kind: "a directory",
                ..
            })
        ));
    }

    #[test]
    fn signer_claims_follow_the_audience_choice() {
        let signer = AssertionSigner::new(SigningKey::hs256(&[1; 32]).unwrap());
        let ctx = AssertionContext {
            client_id: "app",
            token_endpoint: "https://a.example/token",
            issuer: None,
            now: Timestamp::from_secs(100),
        };
        let c = signer.claims(&ctx, None).unwrap();
        assert_eq!(
            (c.issuer.as_str(), c.subject.as_str(), c.audience.as_str()),
            ("app", "app", "https://a.example/token")
        );
        assert_eq!(c.expires_at, Timestamp::from_secs(160));
        assert_ne!(c.jwt_id, signer.claims(&ctx, None).unwrap().jwt_id);
        let mut issuer = signer.clone();
        issuer.audience = Audience::Issuer;
        assert_eq!(
            issuer.claims(&ctx, None).unwrap_err().kind(),
            freshtoken_core::FetchErrorKind::Permanent
        );
        let ctx = AssertionContext {
            issuer: Some("https://a.example"),
            ..ctx
        };
        assert_eq!(
            issuer.claims(&ctx, None).unwrap().audience,
            "https://a.example"
        );
        // client_secret_jwt without a secret: permanent.
        let s = AssertionSigner::with_client_secret();
        let c = s.claims(&ctx, None).unwrap();
        assert!(s.sign(&c, None).is_err());
        assert!(s.sign(&c, Some(&ClientSecret::new("x".repeat(32)))).is_ok());
    }
}
