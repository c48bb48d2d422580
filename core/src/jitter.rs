//! Spreading refresh times so a fleet does not stampede the authority.

use std::time::Duration;

use crate::time::duration_millis;
use crate::token::Token;
use crate::Timestamp;

/// How much earlier than `stale_at` a refresh may be scheduled.
///
/// Each machine draws, once per token, a uniform offset in
/// `[0, fraction × fresh period]` from its seeded random generator and
/// refreshes that much before the token goes stale. The fraction is capped
/// at one half, so a refresh never lands in the first half of a token's
/// fresh life, and a healthy authority sees at most one request per half
/// fresh period from each instance. The default of 10 % spreads an hourly
/// token's renewals over four and a half minutes.
///
/// ```
/// use freshtoken_core::{AccessToken, Jitter, Timestamp, Token};
///
/// let token = Token::new(AccessToken::new("t"), Timestamp::from_secs(0),
///     Timestamp::from_secs(100), Timestamp::from_secs(120));
/// let mut rng = fastrand::Rng::with_seed(7);
/// let at = Jitter::new(0.2).refresh_at(&token, &mut rng);
/// assert!(at >= Timestamp::from_secs(80) && at <= Timestamp::from_secs(100));
/// assert_eq!(Jitter::NONE.refresh_at(&token, &mut rng), token.stale_at());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    fraction: f64,
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter { fraction: 0.1 }
    }
}

impl Jitter {
    /// No jitter: refresh exactly at `stale_at`.
    pub const NONE: Jitter = Jitter { fraction: 0.0 };

    /// Jitter of up to `fraction` of the fresh period (clamped to `0..=0.5`).
    pub fn new(fraction: f64) -> Self {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 0.5)
        };
        Jitter { fraction }
    }

    /// The fraction in use.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The largest offset for a token with this fresh period.
    pub fn max_offset(&self, fresh_period: Duration) -> Duration {
        Duration::from_millis((duration_millis(fresh_period) as f64 * self.fraction) as u64)
    }

    /// When to refresh `token`: its `stale_at`, moved earlier by a random
    /// offset within [`max_offset`](Self::max_offset).
    pub fn refresh_at(&self, token: &Token, rng: &mut fastrand::Rng) -> Timestamp {
        let fresh = token
            .stale_at()
            .saturating_duration_since(token.issued_at());
        let max = duration_millis(self.max_offset(fresh));
        let offset = if max == 0 { 0 } else { rng.u64(0..=max) };
        token.stale_at() - Duration::from_millis(offset)
    }
}
