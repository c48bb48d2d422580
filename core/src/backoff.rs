//! How long to wait before retrying a failed fetch.

use std::time::Duration;

use crate::error::{FetchError, FetchErrorKind};
use crate::time::duration_millis;

/// Exponential backoff with jitter, capped, that honours Retry-After.
///
/// Attempt `n` (1-based) has a nominal delay of `initial × factor^(n-1)`,
/// capped at `max`; the actual delay is drawn uniformly from the upper half
/// of that, `[nominal/2, nominal]` ("equal jitter"): retries from a fleet
/// spread out, yet every retry still waits a predictable minimum. The
/// defaults are aliri_tokens': 100 ms doubling up to 15 s.
///
/// Permanent errors (a wrong secret, an unknown scope) do not follow the
/// curve: retrying in 15 s cannot fix a configuration, so they wait
/// `permanent_interval` (default 5 minutes) and an operator's fix is picked
/// up without a restart.
///
/// A Retry-After from the authority is a floor: the delay is never shorter.
/// It is itself capped at `max_retry_after` (default one hour) so a hostile
/// or mistaken header cannot park the refresher for days.
///
/// ```
/// use freshtoken_core::{Backoff, FetchError};
/// use std::time::Duration;
///
/// let b = Backoff::default();
/// assert_eq!(b.nominal(1), Duration::from_millis(100));
/// assert_eq!(b.nominal(4), Duration::from_millis(800));
/// assert_eq!(b.nominal(30), Duration::from_secs(15));
///
/// let mut rng = fastrand::Rng::with_seed(1);
/// let e = FetchError::rate_limited("slow down").with_retry_after(Some(Duration::from_secs(20)));
/// assert!(b.delay(&e, 1, &mut rng) >= Duration::from_secs(20));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    factor: u32,
    max: Duration,
    permanent_interval: Duration,
    max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            factor: 2,
            max: Duration::from_secs(15),
            permanent_interval: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// A backoff starting at `initial`, multiplied by `factor` (at least 1)
    /// per attempt, capped at `max`.
    pub fn new(initial: Duration, factor: u32, max: Duration) -> Self {
        Backoff {
            initial: initial.max(Duration::from_millis(1)),
            factor: factor.max(1),
            max: max.max(initial),
            ..Backoff::default()
        }
    }

    /// Sets the interval for permanent errors.
    pub fn with_permanent_interval(mut self, interval: Duration) -> Self {
        self.permanent_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets the cap on honoured Retry-After values.
    pub fn with_max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    /// The cap on the exponential curve.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The interval used for permanent errors.
    pub fn permanent_interval(&self) -> Duration {
        self.permanent_interval
    }

    /// The nominal (un-jittered) delay for attempt `attempt` (1-based).
    pub fn nominal(&self, attempt: u32) -> Duration {
        let initial = duration_millis(self.initial);
        let cap = duration_millis(self.max);
        let factor = u64::from(self.factor).saturating_pow(attempt.saturating_sub(1));
        Duration::from_millis(initial.saturating_mul(factor).min(cap))
    }

    /// The range a retry delay after `error` on attempt `attempt` lies in.
    pub fn bounds(&self, error: &FetchError, attempt: u32) -> (Duration, Duration) {
        let nominal = match error.kind() {
            FetchErrorKind::Permanent | FetchErrorKind::GrantRevoked => self.permanent_interval,
            FetchErrorKind::Transient | FetchErrorKind::RateLimited => self.nominal(attempt),
        };
        let floor = error
            .retry_after()
            .map(|r| r.min(self.max_retry_after))
            .unwrap_or_default();
        ((nominal / 2).max(floor), nominal.max(floor))
    }

    /// A random delay within [`bounds`](Self::bounds).
    pub fn delay(&self, error: &FetchError, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let (lo, hi) = self.bounds(error, attempt);
        Duration::from_millis(rng.u64(duration_millis(lo)..=duration_millis(hi)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_in_bounds_and_grow() {
        let b = Backoff::default();
        let mut rng = fastrand::Rng::with_seed(3);
        let e = FetchError::transient("x");
        for attempt in 1..40 {
            let (lo, hi) = b.bounds(&e, attempt);
            let d = b.delay(&e, attempt, &mut rng);
            assert!(lo <= d && d <= hi);
            assert!(hi <= Duration::from_secs(15));
        }
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(15));
    }

    #[test]
    fn permanent_errors_wait_long_and_retry_after_is_capped() {
        let b = Backoff::default();
        let (lo, _) = b.bounds(&FetchError::permanent("bad secret"), 1);
        assert_eq!(lo, Duration::from_secs(150));
        let e =
            FetchError::rate_limited("x").with_retry_after(Some(Duration::from_secs(86_400 * 30)));
        assert_eq!(
            b.bounds(&e, 1),
            (Duration::from_secs(3600), Duration::from_secs(3600))
        );
    }
}
