//! The token model: what an authority returns and what readers get.

use std::fmt;
use std::time::Duration;

use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::time::Timestamp;

/// A short, non-secret identifier of an access token.
///
/// It is the first 64 bits of SHA-256 over a domain tag and the token's
/// bytes: enough to tell tokens apart in logs, in
/// [`Invalidate`](crate::Input::Invalidate) and in the quickstart's status
/// line, and, being a cryptographic hash, no shortcut to the token: finding
/// a token from its id means searching the token's whole space, which for
/// the high-entropy tokens authorities mint is out of reach. (The FNV-1a
/// hash used before was not preimage resistant.)
///
/// Why unkeyed: ids are compared between processes. Instances sharing a
/// cache log the same id for the same token, so a fleet's logs line up, and
/// the cross-process tests check records by id. A process-random key would
/// break both. Client secrets, which may be short and guessable, get no id
/// at all (see [`ClientSecret`](crate::ClientSecret)).
///
/// `sha2` is RustCrypto's SHA-256: pure Rust, `no_std`, no I/O, the
/// well-reviewed choice among the small crates freshtoken-core may use.
///
/// ```
/// use freshtoken_core::{AccessToken, TokenId};
///
/// let id = AccessToken::new("abc").fingerprint();
/// assert_eq!(id, TokenId::of(b"abc"));
/// assert_ne!(id, TokenId::of(b"abd"));
/// // Stable across processes and releases: SHA-256("freshtoken token id v1\0abc").
/// assert_eq!(id.to_string(), "81b9011d6b54a1b0");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(u64);

impl TokenId {
    /// The identifier of a token with these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        // The tag keeps ids from being reused as a plain SHA-256 of a token.
        let digest = Sha256::new()
            .chain_update(b"freshtoken token id v1\0")
            .chain_update(bytes)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        TokenId(u64::from_be_bytes(first))
    }

    /// The raw value.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({:016x})", self.0)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a token is in its life at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenStatus {
    /// Before `stale_at`: good, and not yet due for renewal.
    Fresh,
    /// Between `stale_at` and `expires_at`: still valid, renewal is due.
    Stale,
    /// At or after `expires_at`: must not be used.
    Expired,
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenStatus::Fresh => "fresh",
            TokenStatus::Stale => "stale",
            TokenStatus::Expired => "expired",
        })
    }
}

/// An access token with its life times.
///
/// Times are wall-clock [`Timestamp`]s in the local clock's view. The
/// constructor keeps `issued_at <= stale_at <= expires_at` true whatever it is
/// given, so code that reads a token never meets a stale time after expiry.
///
/// ```
/// use freshtoken_core::{AccessToken, Timestamp, Token, TokenStatus};
///
/// let token = Token::new(
///     AccessToken::new("at"),
///     Timestamp::from_secs(0),
///     Timestamp::from_secs(45),
///     Timestamp::from_secs(60),
/// )
/// .with_scope(Some("read".into()));
/// assert_eq!(token.status(Timestamp::from_secs(10)), TokenStatus::Fresh);
/// assert_eq!(token.status(Timestamp::from_secs(50)), TokenStatus::Stale);
/// assert_eq!(token.status(Timestamp::from_secs(60)), TokenStatus::Expired);
/// assert!(!format!("{token:?}").contains("\"at\""));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    id: TokenId,
    access_token: AccessToken,
    token_type: String,
    refresh_token: Option<RefreshToken>,
    id_token: Option<IdToken>,
    scope: Option<String>,
    issued_at: Timestamp,
    stale_at: Timestamp,
    expires_at: Timestamp,
    generation: u64,
}

impl Token {
    /// A bearer token with the given times (reordered if they are out of order).
    pub fn new(
        access_token: AccessToken,
        issued_at: Timestamp,
        stale_at: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        let expires_at = expires_at.max(issued_at);
        let stale_at = stale_at.clamp(issued_at, expires_at);
        Token {
            id: access_token.fingerprint(),
            access_token,
            token_type: "Bearer".to_owned(),
            refresh_token: None,
            id_token: None,
            scope: None,
            issued_at,
            stale_at,
            expires_at,
            generation: 0,
        }
    }

    /// Moves the stale point (kept between the issue and the expiry).
    ///
    /// ```
    /// use freshtoken_core::{AccessToken, Timestamp, Token};
    /// let t = |s| Timestamp::from_secs(s);
    /// let token = Token::new(AccessToken::new("at"), t(0), t(50), t(60)).with_stale_at(t(20));
    /// assert_eq!(token.stale_at(), t(20));
    /// assert_eq!(token.clone().with_stale_at(t(90)).stale_at(), t(60));
    /// ```
    pub fn with_stale_at(mut self, stale_at: Timestamp) -> Self {
        self.stale_at = stale_at.clamp(self.issued_at, self.expires_at);
        self
    }

    /// Sets the refresh-token generation (see [`generation`](Self::generation)).
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// How many rotations the refresh token carried by this token is from
    /// the one the grant started with (0: the configured one, or unknown).
    ///
    /// Instances sharing a cache order refresh tokens by it, never by the
    /// wall-clock times another machine stamped: a peer whose clock runs
    /// ahead must not make a spent refresh token look newer than ours.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this token, found in one cache layer, should win over
    /// `other`, found in another: a later refresh-token
    /// [`generation`](Self::generation) first (it carries the grant), then
    /// a later expiry. The one rule for every layered cache, so that a
    /// local layer can never hide a newer refresh token held below it.
    ///
    /// ```
    /// use freshtoken_core::{AccessToken, Timestamp, Token};
    /// let t = |exp, gen| Token::new(AccessToken::new("at"), Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::from_secs(exp)).with_generation(gen);
    /// assert!(t(10, 1).supersedes(&t(99, 0)));
    /// assert!(t(99, 1).supersedes(&t(10, 1)));
    /// assert!(!t(10, 1).supersedes(&t(10, 1)));
    /// ```
    pub fn supersedes(&self, other: &Token) -> bool {
        (self.generation, self.expires_at) > (other.generation, other.expires_at)
    }

    /// Whether a layered cache may answer with this token without asking
    /// the layers below: it is fresh at `now` and, when the machine holds a
    /// token that expires at `newer_than`, it expires later than that.
    pub fn satisfies(&self, now: Timestamp, newer_than: Option<Timestamp>) -> bool {
        self.status(now) == TokenStatus::Fresh && newer_than.is_none_or(|t| self.expires_at > t)
    }

    /// Sets the token type (kept as the authority spelled it).
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = token_type.into();
        self
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, refresh_token: Option<RefreshToken>) -> Self {
        self.refresh_token = refresh_token;
        self
    }

    /// Sets the id token.
    pub fn with_id_token(mut self, id_token: Option<IdToken>) -> Self {
        self.id_token = id_token;
        self
    }

    /// Sets the granted scope.
    pub fn with_scope(mut self, scope: Option<String>) -> Self {
        self.scope = scope;
        self
    }

    /// The non-secret identifier of the access token.
    pub fn id(&self) -> TokenId {
        self.id
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The token type, usually `Bearer`.
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// The refresh token, if the authority issued one.
    pub fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    /// The OpenID Connect id token, if any.
    pub fn id_token(&self) -> Option<&IdToken> {
        self.id_token.as_ref()
    }

    /// The scope the authority granted, if it said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// When the token was requested (the start of its life in the local view).
    pub fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// When the token is due for renewal.
    pub fn stale_at(&self) -> Timestamp {
        self.stale_at
    }

    /// When the token stops being valid.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// The whole lifetime, `expires_at - issued_at`.
    pub fn lifetime(&self) -> Duration {
        self.expires_at.saturating_duration_since(self.issued_at)
    }

    /// The status of the token at `now`.
    pub fn status(&self, now: Timestamp) -> TokenStatus {
        if now >= self.expires_at {
            TokenStatus::Expired
        } else if now >= self.stale_at {
            TokenStatus::Stale
        } else {
            TokenStatus::Fresh
        }
    }

    /// Whether the token can still be used at `now`.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }

    /// `Authorization` header value, e.g. `Bearer abc`. Contains the secret.
    ///
    /// Both halves come from the authority or a cache; they are checked
    /// where tokens enter (the OAuth2 parser, the cache record decoder and
    /// the drivers call [`check_usable`](Self::check_usable) or
    /// [`TokenResponse::check_usable`]), so the value cannot carry a line
    /// break into a request.
    pub fn authorization_header(&self) -> String {
        format!("{} {}", self.token_type, self.access_token.expose_secret())
    }

    /// Whether this token can go into an `Authorization` header as it is
    /// (see [`UnusableToken`]): what caches check on every token they read.
    ///
    /// ```
    /// use freshtoken_core::token::UnusableToken;
    /// use freshtoken_core::{AccessToken, Timestamp, Token};
    ///
    /// let t = |at: &str, ty: &str| {
    ///     let now = Timestamp::from_secs(0);
    ///     Token::new(AccessToken::new(at), now, now, now).with_token_type(ty)
    /// };
    /// assert_eq!(t("abc", "Bearer").check_usable(), Ok(()));
    /// assert_eq!(t("abc", "Bearer\r\nX-Injected: 1").check_usable(), Err(UnusableToken::TokenType));
    /// assert_eq!(t("a b", "Bearer").check_usable(), Err(UnusableToken::AccessToken));
    /// ```
    pub fn check_usable(&self) -> Result<(), UnusableToken> {
        check_usable(self.access_token.expose_secret(), &self.token_type)
    }
}

/// Why a token cannot be used in an `Authorization` header. It names the
/// field, never its value (which may be the secret).
///
/// * The access token must be non-empty printable ASCII without spaces
///   (RFC 6750's `b64token` is narrower; authorities mint opaque tokens of
///   other printable characters too, so only what would break or split the
///   header is refused).
/// * The token type is the header's auth-scheme, an RFC 7235 `token`:
///   letters, digits and ``!#$%&'*+-.^_`|~``. A CR or LF there (from a
///   hostile authority or a poisoned cache) would inject a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnusableToken {
    /// The access token is empty or holds a space, a control character or
    /// a non-ASCII byte.
    AccessToken,
    /// The token type is empty or not an RFC 7235 auth-scheme token.
    TokenType,
}

impl fmt::Display for UnusableToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnusableToken::AccessToken => {
                "unusable access token (empty, or not printable ASCII without spaces)"
            }
            UnusableToken::TokenType => {
                "unusable token_type (not an RFC 7235 auth-scheme: letters, digits and !#$%&'*+-.^_`|~ only)"
            }
        })
    }
}

impl std::error::Error for UnusableToken {}

/// Whether `token_type` is an RFC 7235 auth-scheme (`1*tchar`).
///
/// ```
/// use freshtoken_core::token::is_auth_scheme;
/// assert!(is_auth_scheme("Bearer") && is_auth_scheme("DPoP") && is_auth_scheme("N_A"));
/// assert!(!is_auth_scheme("") && !is_auth_scheme("Bearer x") && !is_auth_scheme("Bearer\r\nX: 1"));
/// ```
pub fn is_auth_scheme(token_type: &str) -> bool {
    !token_type.is_empty()
        && token_type.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn check_usable(access_token: &str, token_type: &str) -> Result<(), UnusableToken> {
    if access_token.is_empty() || !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UnusableToken::AccessToken);
    }
    if !is_auth_scheme(token_type) {
        return Err(UnusableToken::TokenType);
    }
    Ok(())
}

/// What a token source returns: the authority's answer, before the lifetime
/// policy has turned it into a [`Token`].
///
/// `expires_in` is kept as the authority sent it (seconds, possibly absent,
/// zero or negative); [`LifetimePolicy`](crate::LifetimePolicy) decides what
/// to make of it. `server_date` is the answer's `Date` header, used to
/// estimate clock skew.
///
/// ```
/// use freshtoken_core::{AccessToken, TokenResponse};
///
/// let r = TokenResponse::new(AccessToken::new("at")).with_expires_in(Some(3600));
/// assert_eq!(r.expires_in, Some(3600));
/// assert_eq!(r.token_type, "Bearer");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenResponse {
    /// The access token.
    pub access_token: AccessToken,
    /// The token type as sent (not normalized; `Bearer` when absent).
    pub token_type: String,
    /// Lifetime in seconds as sent, if sent.
    pub expires_in: Option<i64>,
    /// A new refresh token (a rotation), if sent.
    pub refresh_token: Option<RefreshToken>,
    /// An OpenID Connect id token, if sent.
    pub id_token: Option<IdToken>,
    /// The granted scope, if sent.
    pub scope: Option<String>,
    /// The authority's `Date` header, if it sent one.
    pub server_date: Option<Timestamp>,
    /// The authority's refresh hint in seconds (`refresh_in`, as Entra ID
    /// sends), if sent: the token is to be renewed no later than this.
    pub refresh_in: Option<i64>,
}

impl TokenResponse {
    /// A bearer response with only an access token.
    pub fn new(access_token: AccessToken) -> Self {
        TokenResponse {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in: None,
            refresh_token: None,
            id_token: None,
            scope: None,
            server_date: None,
            refresh_in: None,
        }
    }

    /// Sets the refresh hint (`refresh_in`, seconds).
    pub fn with_refresh_in(mut self, refresh_in: Option<i64>) -> Self {
        self.refresh_in = refresh_in;
        self
    }

    /// Sets `expires_in` (seconds).
    pub fn with_expires_in(mut self, expires_in: Option<i64>) -> Self {
        self.expires_in = expires_in;
        self
    }

    /// Sets the token type.
    pub fn with_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.token_type = token_type.into();
        self
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, refresh_token: Option<RefreshToken>) -> Self {
        self.refresh_token = refresh_token;
        self
    }

    /// Sets the id token.
    pub fn with_id_token(mut self, id_token: Option<IdToken>) -> Self {
        self.id_token = id_token;
        self
    }

    /// Sets the scope.
    pub fn with_scope(mut self, scope: Option<String>) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the server's `Date`.
    pub fn with_server_date(mut self, server_date: Option<Timestamp>) -> Self {
        self.server_date = server_date;
        self
    }

    /// Whether the answer's token can go into an `Authorization` header
    /// (see [`UnusableToken`]): what the drivers check on every answer a
    /// source returns, and the OAuth2 parser on every answer it reads.
    ///
    /// ```
    /// use freshtoken_core::token::UnusableToken;
    /// use freshtoken_core::{AccessToken, TokenResponse};
    ///
    /// let r = TokenResponse::new(AccessToken::new("at")).with_token_type("Bearer\r\nX-Injected: 1");
    /// assert_eq!(r.check_usable(), Err(UnusableToken::TokenType));
    /// ```
    pub fn check_usable(&self) -> Result<(), UnusableToken> {
        check_usable(self.access_token.expose_secret(), &self.token_type)
    }
}
