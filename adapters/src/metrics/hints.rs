//! What to do about a failure: the `hint` field of the drivers' warnings.
//!
//! A warning that says "permanent error (HTTP 401): invalid_client" tells an
//! operator what happened; the hint says what to check. Hints are fixed
//! strings chosen from the error's kind, RFC 6749 code and HTTP status, so
//! they can never carry anything the authority sent (let alone a secret).

use freshtoken_core::{CacheError, CacheErrorKind, FetchError, FetchErrorKind};

/// What to check after a failed fetch, if there is something to say.
///
/// ```
/// use freshtoken::metrics::fetch_hint;
/// use freshtoken::FetchError;
///
/// let e = FetchError::permanent("invalid_client")
///     .with_status(401)
///     .with_error_code(Some("invalid_client".into()));
/// assert!(fetch_hint(&e).unwrap().contains("client secret"));
/// ```
pub fn fetch_hint(error: &FetchError) -> Option<&'static str> {
    let by_code = match error.error_code() {
        Some("invalid_client") => Some(
            "the authority does not accept this client's credentials: is the client id right, \
             and the client secret (or signing key, or certificate) the current one? Is the \
             authentication method the one registered for the client?",
        ),
        Some("unauthorized_client") => {
            Some("the client may not use this grant type: check its registration at the authority")
        }
        Some("invalid_scope") => Some(
            "the authority refused the requested scope: check the configured scopes (and \
             audience or resource) against what the client is allowed",
        ),
        Some("invalid_grant") if error.kind() == FetchErrorKind::GrantRevoked => Some(
            "the refresh token was revoked, expired or already used: the user must authorize \
             again; until a token of a live grant appears in the shared cache, the last token \
             is served until it expires",
        ),
        Some("invalid_grant") => Some(
            "the authority refused the grant: check the assertion or the grant's parameters \
             (audience, subject, lifetime)",
        ),
        Some("unsupported_grant_type") => Some(
            "the authority does not offer this grant here: is the token URL right, and the \
             grant enabled for the client?",
        ),
        Some("invalid_request") => Some(
            "the authority found the request malformed: check the token URL and the configured \
             parameters",
        ),
        _ => None,
    };
    if by_code.is_some() {
        return by_code;
    }
    match (error.kind(), error.status()) {
        (_, Some(401)) => {
            Some("the authority rejected the client's authentication: is the client secret right?")
        }
        (_, Some(403)) => Some(
            "the authority forbids this client: check its registration and any network policy \
             in front of the token endpoint",
        ),
        (_, Some(404 | 405)) => Some("no token endpoint there: is the token URL right?"),
        (FetchErrorKind::RateLimited, _) => Some(
            "the authority is rate limiting this client: retrying no sooner than its \
             Retry-After; if many instances share the client, give them a shared cache with a \
             lease so that one of them asks per refresh",
        ),
        (FetchErrorKind::Transient, Some(status)) if status >= 500 => Some(
            "the authority is failing: the current token is served while it is valid, and the \
             fetch is retried with backoff",
        ),
        (FetchErrorKind::Transient, None) if error.message().contains("timed out") => Some(
            "the authority did not answer within the fetch timeout: is it reachable from here, \
             or slower than the timeout (Builder::fetch_timeout)?",
        ),
        (FetchErrorKind::Transient, None) => Some(
            "could the token endpoint be reached? Check DNS, proxy, firewall and TLS settings \
             (the fetch is retried with backoff)",
        ),
        (FetchErrorKind::Permanent, _) => Some(
            "retrying cannot fix this: check the client's configuration; the fetch is retried \
             at a long interval in case it is fixed",
        ),
        (FetchErrorKind::GrantRevoked, _) => Some(
            "the grant is gone: the user must authorize again; the last token is served until \
             it expires",
        ),
        _ => None,
    }
}

/// What to check after a failed cache operation.
///
/// ```
/// use freshtoken::metrics::cache_hint;
/// use freshtoken::{CacheError, CacheErrorKind};
///
/// let e = CacheError::new(CacheErrorKind::Unavailable, "connection refused");
/// assert!(cache_hint(&e).contains("reachable"));
/// ```
pub fn cache_hint(error: &CacheError) -> &'static str {
    match error.kind() {
        CacheErrorKind::Unavailable => {
            "is the cache's server reachable, and are its address and credentials right? Tokens \
             are still fetched and served without it"
        }
        CacheErrorKind::Corrupt => {
            "the cached entry cannot be parsed: the next store replaces it; if this repeats, \
             another program may be writing the same key or file"
        }
        CacheErrorKind::Io => "check the cache file's directory: permissions, owner and free space",
        CacheErrorKind::Unreadable => {
            "the entry was written by a newer version or sealed with a key this instance lacks: \
             check the encryption keys and the versions of the instances sharing the cache"
        }
        // A kind added to the core later (the enum is non-exhaustive).
        _ => "see the error message",
    }
}
