//! Spreading refresh times so a fleet does not stampede the authority.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::time::duration_millis;
use crate::token::Token;
use crate::Timestamp;

/// A way to choose when to renew a token: implement it for a custom
/// jitter (a fixed per-host offset, a schedule aligned to your own
/// windows) and install it with [`Jitter::custom`].
///
/// Whatever it returns is kept within the token's second half of its fresh
/// period: never later than `stale_at`, never earlier than halfway from
/// `issued_at` to `stale_at` (so a custom strategy cannot make a fleet
/// renew more than twice per fresh period, or after the stale time).
///
/// ```
/// use freshtoken_core::jitter::JitterStrategy;
/// use freshtoken_core::{AccessToken, Jitter, Timestamp, Token};
/// use std::time::Duration;
///
/// /// Renews every token exactly 10 s before it goes stale.
/// #[derive(Debug)]
/// struct TenSecondsEarly;
///
/// impl JitterStrategy for TenSecondsEarly {
///     fn refresh_at(&self, token: &Token, _rng: &mut fastrand::Rng) -> Timestamp {
///         token.stale_at() - Duration::from_secs(10)
///     }
///     fn max_offset(&self, _fresh_period: Duration) -> Duration {
///         Duration::from_secs(10)
///     }
/// }
///
/// let token = Token::new(AccessToken::new("t"), Timestamp::from_secs(0),
///     Timestamp::from_secs(100), Timestamp::from_secs(120));
/// let jitter = Jitter::custom(TenSecondsEarly);
/// let mut rng = fastrand::Rng::with_seed(7);
/// assert_eq!(jitter.refresh_at(&token, &mut rng), Timestamp::from_secs(90));
/// ```
pub trait JitterStrategy: Send + Sync + fmt::Debug + 'static {
    /// When to renew `token`; `rng` is the machine's seeded generator (use
    /// it, rather than a global one, to keep runs reproducible).
    fn refresh_at(&self, token: &Token, rng: &mut fastrand::Rng) -> Timestamp;

    /// The largest amount earlier than `stale_at` that
    /// [`refresh_at`](Self::refresh_at) chooses for a token with this fresh
    /// period (the simulator's refresh period uses it).
    fn max_offset(&self, fresh_period: Duration) -> Duration;
}

/// How much earlier than `stale_at` a refresh may be scheduled.
///
/// Each machine draws, once per token, a uniform offset in
/// `[0, min(fraction × fresh period, max_early)]` from its seeded random
/// generator and refreshes that much before the token goes stale. The
/// fraction is capped at one half, so a refresh never lands in the first
/// half of a token's fresh life, and a healthy authority sees at most one
/// request per half fresh period from each instance. The default of 10 %
/// spreads an hourly token's renewals over four and a half minutes; an
/// absolute bound ([`max_early`](Self::max_early)) keeps long-lived tokens
/// from being renewed hours early (the smaller of the two wins). A custom
/// [`JitterStrategy`] replaces the draw ([`Jitter::custom`]).
///
/// ```
/// use freshtoken_core::{AccessToken, Jitter, Timestamp, Token};
/// use std::time::Duration;
///
/// let token = Token::new(AccessToken::new("t"), Timestamp::from_secs(0),
///     Timestamp::from_secs(100), Timestamp::from_secs(120));
/// let mut rng = fastrand::Rng::with_seed(7);
/// let at = Jitter::new(0.2).refresh_at(&token, &mut rng);
/// assert!(at >= Timestamp::from_secs(80) && at <= Timestamp::from_secs(100));
/// assert_eq!(Jitter::NONE.refresh_at(&token, &mut rng), token.stale_at());
/// // At most 5 s early, whatever the fraction says.
/// let bounded = Jitter::new(0.5).max_early(Duration::from_secs(5));
/// assert!(bounded.refresh_at(&token, &mut rng) >= Timestamp::from_secs(95));
/// ```
#[derive(Clone)]
pub struct Jitter {
    fraction: f64,
    max_early: Duration,
    custom: Option<Arc<dyn JitterStrategy>>,
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::new(0.1)
    }
}

impl fmt::Debug for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.custom {
            Some(custom) => f.debug_tuple("Jitter::custom").field(custom).finish(),
            None => f
                .debug_struct("Jitter")
                .field("fraction", &self.fraction)
                .field("max_early", &self.max_early)
                .finish(),
        }
    }
}

impl PartialEq for Jitter {
    fn eq(&self, other: &Self) -> bool {
        let same_custom = match (&self.custom, &other.custom) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_custom && self.fraction == other.fraction && self.max_early == other.max_early
    }
}

impl Jitter {
    /// No jitter: refresh exactly at `stale_at`.
    pub const NONE: Jitter = Jitter {
        fraction: 0.0,
        max_early: Duration::MAX,
        custom: None,
    };

    /// Jitter of up to `fraction` of the fresh period (clamped to `0..=0.5`;
    /// NaN counts as 0), with no absolute bound.
    pub fn new(fraction: f64) -> Self {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 0.5)
        };
        Jitter {
            fraction,
            max_early: Duration::MAX,
            custom: None,
        }
    }

    /// Bounds the offset absolutely as well: never more than `bound` before
    /// `stale_at` (the smaller of this and the fraction wins).
    pub fn max_early(mut self, bound: Duration) -> Self {
        self.max_early = bound;
        self
    }

    /// Uses `strategy` to choose refresh times (kept within the second
    /// half of the fresh period, see [`JitterStrategy`]).
    pub fn custom(strategy: impl JitterStrategy) -> Self {
        Jitter {
            custom: Some(Arc::new(strategy)),
            ..Jitter::NONE
        }
    }

    /// The fraction in use (0 for a custom strategy).
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The absolute bound in use ([`Duration::MAX`]: none).
    pub fn max_early_bound(&self) -> Duration {
        self.max_early
    }

    /// The largest offset for a token with this fresh period: never more
    /// than half of it.
    pub fn max_offset(&self, fresh_period: Duration) -> Duration {
        let half = fresh_period / 2;
        match &self.custom {
            Some(custom) => custom.max_offset(fresh_period).min(half),
            None => {
                let by_fraction = (duration_millis(fresh_period) as f64 * self.fraction) as u64;
                Duration::from_millis(by_fraction)
                    .min(self.max_early)
                    .min(half)
            }
        }
    }

    /// When to refresh `token`: its `stale_at`, moved earlier by a random
    /// offset within [`max_offset`](Self::max_offset) (or the custom
    /// strategy's choice, kept within the second half of the fresh period).
    pub fn refresh_at(&self, token: &Token, rng: &mut fastrand::Rng) -> Timestamp {
        let fresh = token
            .stale_at()
            .saturating_duration_since(token.issued_at());
        let earliest = token.stale_at() - fresh / 2;
        match &self.custom {
            Some(custom) => custom
                .refresh_at(token, rng)
                .clamp(earliest, token.stale_at()),
            None => {
                let max = duration_millis(self.max_offset(fresh));
                let offset = if max == 0 { 0 } else { rng.u64(0..=max) };
                token.stale_at() - Duration::from_millis(offset)
            }
        }
    }
}

impl JitterStrategy for Jitter {
    fn refresh_at(&self, token: &Token, rng: &mut fastrand::Rng) -> Timestamp {
        Jitter::refresh_at(self, token, rng)
    }

    fn max_offset(&self, fresh_period: Duration) -> Duration {
        Jitter::max_offset(self, fresh_period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AccessToken;

    fn token(fresh_s: u64) -> Token {
        Token::new(
            AccessToken::new("t"),
            Timestamp::from_secs(1_000),
            Timestamp::from_secs(1_000 + fresh_s),
            Timestamp::from_secs(1_000 + fresh_s * 2),
        )
    }

    #[test]
    fn the_smaller_bound_wins_and_never_more_than_half() {
        let j = Jitter::new(0.5).max_early(Duration::from_secs(60));
        assert_eq!(
            j.max_offset(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            j.max_offset(Duration::from_secs(100)),
            Duration::from_secs(50)
        );
        let j = Jitter::new(0.1).max_early(Duration::from_secs(600));
        assert_eq!(
            j.max_offset(Duration::from_secs(3600)),
            Duration::from_secs(360)
        );
        let mut rng = fastrand::Rng::with_seed(1);
        let t = token(3600);
        for _ in 0..100 {
            let at = Jitter::new(0.5)
                .max_early(Duration::from_secs(60))
                .refresh_at(&t, &mut rng);
            assert!(at >= t.stale_at() - Duration::from_secs(60) && at <= t.stale_at());
        }
    }

    #[test]
    fn a_custom_strategy_is_kept_in_the_second_half_of_the_fresh_period() {
        #[derive(Debug)]
        struct Wild(i64);
        impl JitterStrategy for Wild {
            fn refresh_at(&self, token: &Token, _rng: &mut fastrand::Rng) -> Timestamp {
                token.stale_at().offset_millis(self.0)
            }
            fn max_offset(&self, _fresh: Duration) -> Duration {
                Duration::MAX
            }
        }
        let t = token(100);
        let mut rng = fastrand::Rng::with_seed(1);
        let early = Jitter::custom(Wild(-1_000_000_000));
        assert_eq!(early.refresh_at(&t, &mut rng), Timestamp::from_secs(1_050));
        assert_eq!(
            early.max_offset(Duration::from_secs(100)),
            Duration::from_secs(50)
        );
        let late = Jitter::custom(Wild(1_000_000_000));
        assert_eq!(late.refresh_at(&t, &mut rng), t.stale_at());
        assert!(format!("{early:?}").contains("Wild"));
        assert_eq!(early.clone(), early);
        assert_ne!(early, Jitter::NONE);
    }
}
