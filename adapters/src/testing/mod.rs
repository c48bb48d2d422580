//! A local OAuth2 authority for quickstarts, tests and users' own tests
//! (feature `testing`).
//!
//! [`LocalAuthority`] is a real HTTP server (tiny_http, its own threads, no
//! async runtime) on `127.0.0.1` with an ephemeral port. It issues tokens
//! with the `client_credentials` and `refresh_token` grants, rotates refresh
//! tokens, and fails on purpose following a [`FaultPlan`]: outages with
//! `Retry-After`, rate limits, hangs, malformed answers, dropped
//! connections, from one instant to another or for the next N requests.
//! Every token request is logged ([`LoggedRequest`]) so that a test can
//! count what its code asked for.
//!
//! A refresh-token test: the authority hands out the first refresh token
//! (as an authorization-code flow would), rotates it on use, and treats a
//! second use of the same one as a replay.
//!
//! ```
//! use freshtoken::testing::LocalAuthority;
//! use freshtoken::source::TokenSource;
//! use freshtoken::FetchErrorKind;
//! use freshtoken::source::FetchRequest;
//! use std::time::Duration;
//!
//! let authority = LocalAuthority::builder()
//!     .client("app", "app-secret")
//!     .token_lifetime(Duration::from_secs(2))
//!     .start()?;
//! let source = authority.refresh_token_source("app").build()?;
//!
//! let first = authority.issue_refresh_token("app");
//! let answer = source.fetch(&FetchRequest::new(1, Some(first.clone())))?;
//! assert_eq!(answer.expires_in, Some(2));
//! assert!(answer.refresh_token.is_some()); // rotated
//!
//! let replay = source.fetch(&FetchRequest::new(1, Some(first))).unwrap_err();
//! assert_eq!(replay.kind(), FetchErrorKind::GrantRevoked);
//! assert_eq!(authority.grant_count("refresh_token"), 2);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

mod authority;
mod faults;

pub use authority::{
    AccessTokenInfo, LocalAuthority, LocalAuthorityBuilder, LoggedRequest, Outcome, TokenRejection,
};
pub use faults::{Fault, FaultPlan, FaultRule, FaultWindow, RetryAfter};
