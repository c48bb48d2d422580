//! Secret strings that never show themselves.
//!
//! Access, refresh and id tokens and client secrets are bearer credentials:
//! whoever reads one can use it. Each is a newtype whose `Debug` and `Display`
//! print only the type name, whose memory is wiped on drop (by
//! [`zeroize::Zeroizing`], the well-kept crate for exactly this, rather than a
//! hand-rolled volatile write), and whose value is reached only through an
//! explicit [`expose_secret`](AccessToken::expose_secret) call that is easy to
//! find in review.
//!
//! The types deliberately do not implement `serde::Serialize`: a cache that
//! persists a token calls `expose_secret()` in its own record type, so no
//! `serde_json::to_string(&token)` in a log statement can leak one by accident.

use std::fmt;
use zeroize::Zeroizing;

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Zeroizing<String>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                $name(Zeroizing::new(value.into()))
            }

            /// The secret value. Every call site is a place where the secret
            /// leaves its box: keep them few and never log the result.
            pub fn expose_secret(&self) -> &str {
                self.0.as_str()
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name::new(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name::new(value)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }
    };
}

/// Fingerprints for the token types only. A client secret has none: it is
/// often a short, human-chosen string, and any published function of it
/// (even a cryptographic hash) lets whoever reads a log test guesses against
/// it offline. Tokens are minted by the authority with far more entropy
/// than a search could cover, so a SHA-256-based [`TokenId`](crate::TokenId)
/// of one reveals nothing usable.
macro_rules! token_fingerprint {
    ($($name:ident),*) => {$(
        impl $name {
            /// A short, stable, non-reversible fingerprint of the value (a
            /// [`TokenId`](crate::TokenId): truncated SHA-256), for telling
            /// tokens apart in logs and comparisons.
            pub fn fingerprint(&self) -> $crate::token::TokenId {
                $crate::token::TokenId::of(self.0.as_bytes())
            }
        }
    )*};
}

secret_type!(
    /// An OAuth2 access token (the bearer credential sent to APIs).
    ///
    /// ```
    /// use freshtoken_core::AccessToken;
    ///
    /// let t = AccessToken::new("eyJhbGciOi...");
    /// assert_eq!(format!("{t:?}"), "AccessToken(<redacted>)");
    /// assert_eq!(t.to_string(), "<redacted>");
    /// assert_eq!(t.expose_secret(), "eyJhbGciOi...");
    /// ```
    AccessToken
);
secret_type!(
    /// An OAuth2 refresh token. Rotating authorities replace it on every use.
    ///
    /// ```
    /// use freshtoken_core::RefreshToken;
    /// assert_eq!(format!("{:?}", RefreshToken::new("rt")), "RefreshToken(<redacted>)");
    /// ```
    RefreshToken
);
secret_type!(
    /// An OpenID Connect id token.
    ///
    /// ```
    /// use freshtoken_core::IdToken;
    /// assert_eq!(format!("{}", IdToken::new("idt")), "<redacted>");
    /// ```
    IdToken
);
secret_type!(
    /// An OAuth2 client secret.
    ///
    /// Unlike the token types it has no `fingerprint()`: a client secret may
    /// be short and guessable, and a fingerprint in a log would let anyone
    /// check guesses offline.
    ///
    /// ```
    /// use freshtoken_core::ClientSecret;
    /// let s = ClientSecret::new("hunter2");
    /// assert!(!format!("{s:?} {s}").contains("hunter2"));
    /// ```
    ///
    /// ```compile_fail
    /// // No fingerprint of a client secret: an offline guessing oracle.
    /// freshtoken_core::ClientSecret::new("hunter2").fingerprint();
    /// ```
    ClientSecret
);
secret_type!(
    /// A signed JWT presented as a credential: an RFC 7523 client assertion
    /// (`private_key_jwt`, `client_secret_jwt`, a federated workload
    /// identity token), a JWT-bearer grant's assertion, or an RFC 8693
    /// subject or actor token. Whoever holds one can replay it until it
    /// expires, so it is a secret like the others.
    ///
    /// ```
    /// use freshtoken_core::Assertion;
    /// let a = Assertion::new("eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
    /// assert_eq!(format!("{a:?}"), "Assertion(<redacted>)");
    /// ```
    Assertion
);

// Assertions are signed JWTs: as high in entropy as tokens, so a
// fingerprint is no guessing oracle (unlike a client secret's).
token_fingerprint!(AccessToken, RefreshToken, IdToken, Assertion);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_in_debug_or_display() {
        let value = "s3cr3t-value-123";
        let reprs = [
            format!("{:?} {}", AccessToken::new(value), AccessToken::new(value)),
            format!(
                "{:?} {}",
                RefreshToken::new(value),
                RefreshToken::new(value)
            ),
            format!("{:?} {}", IdToken::new(value), IdToken::new(value)),
            format!(
                "{:?} {}",
                ClientSecret::new(value),
                ClientSecret::new(value)
            ),
            format!("{:?} {}", Assertion::new(value), Assertion::new(value)),
            format!("{:#?}", Some(AccessToken::new(value))),
        ];
        for r in reprs {
            assert!(!r.contains(value), "leaked in {r}");
            assert!(r.contains("redacted"));
        }
    }

    #[test]
    fn fingerprint_differs_per_value_and_hides_it() {
        let a = AccessToken::new("aaaa").fingerprint();
        let b = AccessToken::new("aaab").fingerprint();
        assert_ne!(a, b);
        assert_eq!(a, AccessToken::new("aaaa").fingerprint());
        assert!(!a.to_string().contains("aaaa"));
    }
}
