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
/// A Retry-After from the authority is a floor: the delay is never shorter,
/// and it is jittered above (by up to a tenth, at least 100 ms), so
/// instances told the same Retry-After do not come back in the same
/// millisecond. It is itself capped at `max_retry_after` (default one hour)
/// so a hostile or mistaken header cannot park the refresher for days.
///
/// While the current token has expired (the application has nothing to
/// send), transient failures are retried on a short cap instead
/// (`expired_cap`, default 1 s; delays on it lie between the cap and a
/// fifth more), so the instance that probes sends at most one request a
/// second and is back within 1.2 s of the authority's recovery, and a Retry-After is obeyed
/// only up to `expired_retry_after` (default 30 s) past expiry. Permanent
/// errors keep their long interval either way.
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
    expired_cap: Duration,
    expired_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            factor: 2,
            max: Duration::from_secs(15),
            permanent_interval: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(3600),
            expired_cap: Duration::from_secs(1),
            expired_retry_after: Duration::from_secs(30),
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

    /// Sets the cap used while the current token has expired, and the
    /// longest Retry-After obeyed then.
    pub fn with_expired_caps(mut self, cap: Duration, retry_after: Duration) -> Self {
        self.expired_cap = cap.max(Duration::from_millis(1));
        self.expired_retry_after = retry_after;
        self
    }

    /// The cap on the exponential curve.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The cap while the current token has expired.
    pub fn expired_cap(&self) -> Duration {
        self.expired_cap
    }

    /// How many attempts of the curve fit, one after the other, into
    /// `elapsed`: an instance that takes over a lease after waiting that
    /// long for a failing holder continues the fleet's curve from there
    /// instead of starting it again.
    ///
    /// ```
    /// use freshtoken_core::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::default(); // 100 ms, 200 ms, 400 ms, ...
    /// assert_eq!(b.steps_within(Duration::from_millis(50)), 0);
    /// assert_eq!(b.steps_within(Duration::from_millis(700)), 3);
    /// ```
    pub fn steps_within(&self, elapsed: Duration) -> u32 {
        let mut total = Duration::ZERO;
        let mut steps = 0u32;
        while steps < 64 {
            total = total.saturating_add(self.nominal(steps + 1));
            if total > elapsed {
                break;
            }
            steps += 1;
        }
        steps
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

    /// The range a retry delay after `error` on attempt `attempt` lies in,
    /// while the current token is valid.
    pub fn bounds(&self, error: &FetchError, attempt: u32) -> (Duration, Duration) {
        self.bounds_for(error, attempt, false)
    }

    /// The range a retry delay lies in; `expired`: the current token has
    /// expired (or there is none yet).
    pub fn bounds_for(
        &self,
        error: &FetchError,
        attempt: u32,
        expired: bool,
    ) -> (Duration, Duration) {
        let (nominal, ra_cap) = match (error.kind(), expired) {
            (FetchErrorKind::Permanent | FetchErrorKind::GrantRevoked, _) => {
                (self.permanent_interval, self.max_retry_after)
            }
            (_, false) => (self.nominal(attempt), self.max_retry_after),
            (_, true) => (
                self.nominal(attempt).min(self.expired_cap),
                self.expired_retry_after.min(self.max_retry_after),
            ),
        };
        let floor = error
            .retry_after()
            .map(|r| r.min(ra_cap))
            .unwrap_or_default();
        if floor.is_zero() {
            // On the expired cap, wait between the cap and a fifth more:
            // at most one request a second from the probing holder, and
            // back within 1.2 s of the authority's recovery.
            return if expired && nominal == self.expired_cap {
                (nominal, nominal.saturating_add(nominal / 5))
            } else {
                (nominal / 2, nominal)
            };
        }
        let above = (floor / 10).max(Duration::from_millis(100));
        (
            (nominal / 2).max(floor),
            nominal.max(floor.saturating_add(above)),
        )
    }

    /// A random delay within [`bounds`](Self::bounds).
    pub fn delay(&self, error: &FetchError, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        self.delay_for(error, attempt, false, rng)
    }

    /// A random delay within [`bounds_for`](Self::bounds_for).
    pub fn delay_for(
        &self,
        error: &FetchError,
        attempt: u32,
        expired: bool,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let (lo, hi) = self.bounds_for(error, attempt, expired);
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
            (Duration::from_secs(3600), Duration::from_secs(3960))
        );
        // With the token expired, a Retry-After is obeyed up to 30 s only,
        // and transient failures retry within a second.
        assert_eq!(b.bounds_for(&e, 1, true).0, Duration::from_secs(30));
        let t = FetchError::transient("503");
        assert_eq!(
            b.bounds_for(&t, 20, true),
            (Duration::from_secs(1), Duration::from_millis(1200))
        );
        assert_eq!(
            b.bounds_for(&FetchError::permanent("x"), 1, true).0,
            Duration::from_secs(150)
        );
    }

    #[test]
    fn retry_after_is_jittered_above_its_floor() {
        let b = Backoff::default();
        let e = FetchError::rate_limited("x").with_retry_after(Some(Duration::from_secs(30)));
        let mut rng = fastrand::Rng::with_seed(9);
        let delays: std::collections::BTreeSet<_> =
            (0..20).map(|_| b.delay(&e, 1, &mut rng)).collect();
        assert!(delays.len() > 10, "spread out: {delays:?}");
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_secs(30) && *d <= Duration::from_secs(33)));
    }
}
