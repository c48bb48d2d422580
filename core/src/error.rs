//! Errors that cross the machine's boundary, classified by what to do next.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The cause kept behind an error's message ([`Error::source`]), shared so
/// that errors stay `Clone`; boxed inside the `Arc` so that the pointer is
/// thin (a `FetchError` travels in every published snapshot).
type Source = Arc<Box<dyn Error + Send + Sync + 'static>>;

/// What kind of failure a fetch was, which decides the retry policy.
///
/// Non-exhaustive: kinds may be added in a minor release, so a match needs
/// a `_` arm:
///
/// ```compile_fail,E0004
/// use freshtoken_core::FetchErrorKind;
///
/// fn retried(kind: FetchErrorKind) -> bool {
///     match kind {
///         FetchErrorKind::Transient | FetchErrorKind::RateLimited => true,
///         FetchErrorKind::Permanent | FetchErrorKind::GrantRevoked => false,
///     }
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FetchErrorKind {
    /// Network trouble, timeouts, 5xx, `temporarily_unavailable`: retry with
    /// exponential backoff.
    Transient,
    /// 429 or `slow_down`: retry with backoff, never sooner than Retry-After.
    RateLimited,
    /// The request itself is wrong (`invalid_client`, `invalid_scope`, 400,
    /// 401, 403, ...): retrying soon cannot help, so retry at a long interval
    /// in case an operator fixes the configuration.
    Permanent,
    /// The refresh token was revoked or rotated away (`invalid_grant` on a
    /// refresh-token flow): no retry can succeed; the machine stops
    /// refreshing and reports a permanent failure.
    GrantRevoked,
}

impl fmt::Display for FetchErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FetchErrorKind::Transient => "transient error",
            FetchErrorKind::RateLimited => "rate limited",
            FetchErrorKind::Permanent => "permanent error",
            FetchErrorKind::GrantRevoked => "grant revoked",
        })
    }
}

/// A failed fetch, as a source reports it to the machine.
///
/// The message must never contain a secret; sources build it from status
/// codes, RFC 6749 error codes and redacted excerpts.
///
/// ```
/// use freshtoken_core::{FetchError, FetchErrorKind};
/// use std::time::Duration;
///
/// let e = FetchError::rate_limited("too many requests")
///     .with_status(429)
///     .with_retry_after(Some(Duration::from_secs(7)));
/// assert_eq!(e.kind(), FetchErrorKind::RateLimited);
/// assert_eq!(e.to_string(), "rate limited (HTTP 429): too many requests");
/// ```
#[derive(Clone, Debug)]
pub struct FetchError {
    kind: FetchErrorKind,
    message: String,
    status: Option<u16>,
    retry_after: Option<Duration>,
    // Boxed: a `FetchError` travels in every published snapshot.
    error_code: Option<Box<str>>,
    source: Option<Source>,
}

impl Error for FetchError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| &**e as &(dyn Error + 'static))
    }
}

/// Equal when everything but the [`source`](Error::source) is: the cause is
/// context, already summarized in the message.
impl PartialEq for FetchError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.message == other.message
            && self.status == other.status
            && self.retry_after == other.retry_after
            && self.error_code == other.error_code
    }
}

impl Eq for FetchError {}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl FetchError {
    /// An error of the given kind.
    pub fn new(kind: FetchErrorKind, message: impl Into<String>) -> Self {
        FetchError {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
            error_code: None,
            source: None,
        }
    }

    /// Keeps `source` as the error's cause ([`Error::source`]), for reports
    /// that walk the chain; the message should already say what it means.
    /// The cause must hold no secret either (its `Display` and `Debug` are
    /// shown by such reports).
    ///
    /// ```
    /// use std::error::Error as _;
    /// use freshtoken_core::FetchError;
    ///
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    /// let e = FetchError::transient(format!("connection lost: {io}")).with_source(io);
    /// let cause = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
    /// assert_eq!(cause.map(|c| c.kind()), Some(std::io::ErrorKind::ConnectionReset));
    /// ```
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(Arc::new(source.into()));
        self
    }

    /// A transient error.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::Transient, message)
    }

    /// A rate-limit error.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::RateLimited, message)
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::Permanent, message)
    }

    /// A revoked grant.
    pub fn grant_revoked(message: impl Into<String>) -> Self {
        Self::new(FetchErrorKind::GrantRevoked, message)
    }

    /// Records the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Records the authority's Retry-After.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Records the authority's RFC 6749 error code (`invalid_grant`, ...),
    /// already sanitized by the parser.
    pub fn with_error_code(mut self, code: Option<String>) -> Self {
        self.error_code = code.map(String::into_boxed_str);
        self
    }

    /// Changes the kind, keeping everything else: for a source that knows
    /// more than the parser (an `invalid_client` caused by an assertion that
    /// has since been renewed is worth a quick retry).
    pub fn with_kind(mut self, kind: FetchErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The kind.
    pub fn kind(&self) -> FetchErrorKind {
        self.kind
    }

    /// The authority's RFC 6749 error code, when its answer had one.
    ///
    /// ```
    /// use freshtoken_core::FetchError;
    /// let e = FetchError::permanent("invalid_client").with_error_code(Some("invalid_client".into()));
    /// assert_eq!(e.error_code(), Some("invalid_client"));
    /// ```
    pub fn error_code(&self) -> Option<&str> {
        self.error_code.as_deref()
    }

    /// The message (free of secrets).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status, if the failure had one.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The authority's Retry-After, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// What kind of failure a cache operation was.
///
/// Non-exhaustive: kinds may be added in a minor release (`Unreadable`
/// was), so a match needs a `_` arm:
///
/// ```compile_fail,E0004
/// use freshtoken_core::CacheErrorKind;
///
/// fn is_miss(kind: CacheErrorKind) -> bool {
///     match kind {
///         CacheErrorKind::Unavailable | CacheErrorKind::Corrupt | CacheErrorKind::Io => true,
///         CacheErrorKind::Unreadable => false,
///     }
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheErrorKind {
    /// The backend could not be reached (Redis down, timeout).
    Unavailable,
    /// The stored entry could not be read (corrupt, truncated, foreign).
    Corrupt,
    /// Any other I/O failure.
    Io,
    /// An entry exists but this instance cannot read it (a newer format
    /// version, a key it does not hold). Unlike [`Corrupt`](Self::Corrupt)
    /// it is not a miss: a cache never overwrites such an entry, and a
    /// refresh-token flow never fetches because of it (the entry may hold
    /// the newest refresh token, written by a newer peer).
    Unreadable,
}

/// A failed cache operation. The machine treats a failed load as a miss and
/// a failed store as a warning: a cache never stops refreshing.
///
/// ```
/// use freshtoken_core::{CacheError, CacheErrorKind};
/// let e = CacheError::new(CacheErrorKind::Unavailable, "connection refused");
/// assert_eq!(e.to_string(), "cache unavailable: connection refused");
/// ```
#[derive(Clone, Debug)]
pub struct CacheError {
    kind: CacheErrorKind,
    message: String,
    source: Option<Source>,
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            CacheErrorKind::Unavailable => "cache unavailable",
            CacheErrorKind::Corrupt => "cache entry corrupt",
            CacheErrorKind::Io => "cache I/O error",
            CacheErrorKind::Unreadable => "cache entry unreadable by this instance",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl Error for CacheError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| &**e as &(dyn Error + 'static))
    }
}

/// Equal when the kind and the message are: the
/// [`source`](Error::source) is context, already summarized in the message.
impl PartialEq for CacheError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for CacheError {}

impl CacheError {
    /// A cache error.
    pub fn new(kind: CacheErrorKind, message: impl Into<String>) -> Self {
        CacheError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the error's cause ([`Error::source`]), for reports
    /// that walk the chain; the message should already say what it means.
    /// The cause must hold no secret either.
    ///
    /// ```
    /// use std::error::Error as _;
    /// use freshtoken_core::{CacheError, CacheErrorKind};
    ///
    /// let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    /// let e = CacheError::new(CacheErrorKind::Io, format!("cannot read token.json: {io}")).with_source(io);
    /// let cause = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
    /// assert_eq!(cause.map(|c| c.kind()), Some(std::io::ErrorKind::PermissionDenied));
    /// ```
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(Arc::new(source.into()));
        self
    }

    /// The kind.
    pub fn kind(&self) -> CacheErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}
