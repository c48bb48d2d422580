//! The sans-IO heart of [freshtoken]: the token model, the lifetime, jitter
//! and backoff policies, and the [`RefreshMachine`].
//!
//! # The model
//!
//! Keeping a token fresh is a small protocol: load a shared cache, maybe take
//! a lease, fetch from the authority, store, publish, sleep, retry on errors.
//! Written as async code, that protocol gets tangled with one executor, one
//! HTTP client and the real clock, and becomes hard to test: the interesting
//! cases (an outage of ten minutes, five thousand instances sharing a cache,
//! a clock jump) happen over hours of wall time.
//!
//! So, like [quinn-proto] and [str0m], this crate holds the protocol as a
//! plain state machine that performs no I/O and reads no clock:
//!
//! ```text
//!   driver                                   RefreshMachine
//!   ──────                                   ──────────────
//!   handle_input(Start, now)          ──▶    decides
//!   poll_output() ─▶ Action(LoadCache) ◀──   emits actions, one at a time
//!   ...reads the cache...
//!   handle_input(CacheLoaded(..), now) ─▶
//!   poll_output() ─▶ Action(Fetch(..))
//!   ...asks the authority...
//!   handle_input(Fetched(..), now)    ──▶
//!   poll_output() ─▶ Action(Publish(snapshot))  → readers see the token
//!   poll_output() ─▶ Timeout(refresh_at)        → sleep, then Tick
//! ```
//!
//! Every input carries `now` (wall-clock [`Timestamp`]s, because token times
//! are shared between processes); every side effect is an [`Action`]; the
//! machine is mutated through `&mut self`, so it needs no locks. The same
//! machine runs under tokio, async-std, smol or a plain thread (the drivers
//! in the `freshtoken` crate), and under the deterministic [fleet simulator]
//! in virtual time, which is what the property tests drive.
//!
//! # What the machine guarantees
//!
//! * Same configuration, seed and inputs: same outputs.
//! * At most one action that expects a result is in flight; nothing after
//!   [`Action::Stop`]; every [`Output::Timeout`] is in the future.
//! * A token is refreshed at its jittered refresh time, before it expires;
//!   while renewals fail, the still-valid token stays published and retries
//!   follow the [`Backoff`] (never sooner than a Retry-After).
//! * With a shared cache, instances adopt each other's tokens and, with a
//!   lease, one of them asks the authority per refresh period.
//! * Inputs that make no sense in the current phase are ignored and counted.
//!
//! [freshtoken]: https://docs.rs/freshtoken
//! [quinn-proto]: https://docs.rs/quinn-proto
//! [str0m]: https://docs.rs/str0m
//! [fleet simulator]: https://docs.rs/freshtoken-core/latest/freshtoken_core/sim/
// No unsafe code, except the simulator's one prefetch hint (`sim::prefetch`,
// only with the `sim` feature).
#![cfg_attr(not(feature = "sim"), forbid(unsafe_code))]
#![cfg_attr(feature = "sim", deny(unsafe_code))]
#![warn(missing_docs)]

pub mod backoff;
pub mod error;
pub mod jitter;
pub mod lifetime;
pub mod machine;
#[cfg(feature = "oauth2")]
pub mod oauth2;
pub mod secret;
pub mod time;
pub mod token;

pub use backoff::Backoff;
pub use error::{CacheError, CacheErrorKind, FetchError, FetchErrorKind};
pub use jitter::{Jitter, JitterStrategy};
pub use lifetime::{LifetimeNote, LifetimePolicy};
pub use machine::{
    Action, Event, FetchRequest, Input, InvalidationOutcome, LeaseOutcome, MachineConfig,
    MachineStats, MonoLife, Output, RefreshMachine, RefreshState, RequestId, Snapshot,
};
pub use secret::{AccessToken, Assertion, ClientSecret, IdToken, RefreshToken};
pub use time::{Clock, ManualClock, MonoTime, Now, Timestamp};
pub use token::{Token, TokenId, TokenResponse, TokenStatus};

#[cfg(feature = "sim")]
pub mod sim;
