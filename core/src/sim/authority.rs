//! The simulated authority: issues tokens, or fails as its fault plan says.

use std::time::Duration;

use crate::error::FetchError;
use crate::secret::AccessToken;
use crate::time::Timestamp;
use crate::token::TokenResponse;

/// How the authority misbehaves during a [`Fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answers 503: a transient error.
    Outage,
    /// Answers 429 with this Retry-After.
    RateLimited {
        /// The Retry-After sent.
        retry_after: Duration,
    },
    /// Answers 401 `invalid_client`: a permanent error.
    Permanent,
}

/// A window of time, counted from the start of the simulation, during which
/// the authority misbehaves.
///
/// ```
/// use freshtoken_core::sim::{Fault, FaultKind};
/// use std::time::Duration;
///
/// let outage = Fault::new(FaultKind::Outage, Duration::from_secs(3600), Duration::from_secs(600));
/// assert!(outage.active_at(Duration::from_secs(3700)));
/// assert!(!outage.active_at(Duration::from_secs(4200)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    kind: FaultKind,
    from: Duration,
    length: Duration,
}

impl Fault {
    /// `kind` from `from` after the start, for `length`.
    pub fn new(kind: FaultKind, from: Duration, length: Duration) -> Self {
        Fault { kind, from, length }
    }

    /// Whether the fault is active `offset` after the start.
    pub fn active_at(&self, offset: Duration) -> bool {
        offset >= self.from && offset < self.from.saturating_add(self.length)
    }

    /// The kind.
    pub fn kind(&self) -> FaultKind {
        self.kind
    }

    fn error(&self) -> FetchError {
        match self.kind {
            FaultKind::Outage => FetchError::transient("service unavailable").with_status(503),
            FaultKind::RateLimited { retry_after } => FetchError::rate_limited("too many requests")
                .with_status(429)
                .with_retry_after(Some(retry_after)),
            FaultKind::Permanent => FetchError::permanent("invalid_client").with_status(401),
        }
    }
}

pub(super) struct Authority {
    lifetime_secs: i64,
    latency: Duration,
    faults: Vec<Fault>,
    start: Timestamp,
    rng: fastrand::Rng,
    issued: u64,
}

impl Authority {
    pub(super) fn new(
        start: Timestamp,
        lifetime: Duration,
        latency: Duration,
        faults: Vec<Fault>,
        seed: u64,
    ) -> Self {
        Authority {
            start,
            rng: fastrand::Rng::with_seed(seed),
            lifetime_secs: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX).max(1),
            latency,
            faults,
            issued: 0,
        }
    }

    /// The answer to a request sent at `now`, and when it arrives.
    pub(super) fn answer(
        &mut self,
        now: Timestamp,
    ) -> (Result<TokenResponse, FetchError>, Timestamp) {
        let offset = now.saturating_duration_since(self.start);
        // Latency varies by ±50 %, so answers can overtake each other.
        let ms = crate::time::duration_millis(self.latency);
        let at = now + Duration::from_millis(self.rng.u64(ms / 2..=ms + ms / 2));
        if let Some(fault) = self.faults.iter().find(|f| f.active_at(offset)) {
            return (Err(fault.error()), at);
        }
        self.issued += 1;
        let token = AccessToken::new(format!("sim-token-{}", self.issued));
        (
            Ok(TokenResponse::new(token).with_expires_in(Some(self.lifetime_secs))),
            at,
        )
    }
}
