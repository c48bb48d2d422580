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

mod authority;
mod faults;

pub use authority::{LocalAuthority, LocalAuthorityBuilder, LoggedRequest, Outcome};
pub use faults::{Fault, FaultPlan, FaultRule, FaultWindow, RetryAfter};
