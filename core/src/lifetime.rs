//! Turning an authority's answer into token times.
//!
//! The rules, and why:
//!
//! * **Expiry counts from when the request was sent**, not from when the
//!   answer arrived: the authority starts the clock when it issues the token,
//!   so counting from the arrival would make every token look longer-lived
//!   than it is by the request's latency.
//! * **Fresh for 75 % of the lifetime, with at least a 30 s stale window**
//!   (aliri_tokens' defaults): long tokens get renewed with a quarter of their
//!   life to spare, short ones with at least 30 s for retries.
//! * **The stale window is never longer than half the lifetime**, so a 20 s
//!   token goes stale at 10 s. A fixed minimum that exceeded the lifetime
//!   would make a short token stale the moment it arrives, and every instance
//!   sharing a cache would ignore the cache and hit the authority.
//! * **A missing `expires_in`** is taken from the access token's JWT `exp`
//!   claim when it is a JWT (read, not verified: the authority vouches for it,
//!   we only want its lifetime), else a configurable default.
//! * **Absurd values** (zero, negative, larger than the maximum) are clamped
//!   and reported as a [`LifetimeNote`], never an overflow or a panic.
//! * **Clock skew**: when the answer has a `Date` header or the JWT an `iat`,
//!   the offset between the authority's clock and ours is estimated, and the
//!   expiry used is the earliest of our view (`sent_at + expires_in`), the
//!   JWT's own (`sent_at + exp - iat`) and the authority's (`exp` moved into
//!   our clock by the skew; without `iat`, by the latest skew the `Date`
//!   header allows: it has one-second resolution and was stamped somewhere
//!   between our send and the answer).
//!   So the expiry is never later than `sent_at + expires_in`, nor than
//!   `sent_at + (exp - iat)`, and a `Date` header only ever moves it earlier
//!   (a one-second `Date` used as a midpoint estimate used to cancel the
//!   `exp` correction and overshoot by up to a second).

use std::time::Duration;

use base64::Engine as _;

use crate::time::{duration_millis, Timestamp};
use crate::token::{Token, TokenResponse};

/// How token lifetimes become stale and expiry times.
///
/// ```
/// use freshtoken_core::{LifetimePolicy, Timestamp};
/// use std::time::Duration;
///
/// let policy = LifetimePolicy::default();
/// // An hour-long token is fresh for 45 minutes.
/// assert_eq!(policy.stale_window(Duration::from_secs(3600)), Duration::from_secs(900));
/// // A 60 s token keeps the 30 s minimum window.
/// assert_eq!(policy.stale_window(Duration::from_secs(60)), Duration::from_secs(30));
/// // A 20 s token goes stale at half its life, not after it expired.
/// assert_eq!(policy.stale_window(Duration::from_secs(20)), Duration::from_secs(10));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LifetimePolicy {
    fresh_fraction: f64,
    min_stale_window: Duration,
    default_lifetime: Duration,
    min_lifetime: Duration,
    max_lifetime: Duration,
}

impl Default for LifetimePolicy {
    fn default() -> Self {
        LifetimePolicy {
            fresh_fraction: 0.75,
            min_stale_window: Duration::from_secs(30),
            // Without expires_in or a JWT, assume a short life: renewing a
            // long-lived token too often costs one request, while assuming
            // too long a life costs failed API calls.
            default_lifetime: Duration::from_secs(300),
            min_lifetime: Duration::from_secs(1),
            max_lifetime: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Something the policy had to decide on the authority's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeNote {
    /// `expires_in` was missing; the JWT `exp` claim gave the lifetime.
    LifetimeFromJwt,
    /// `expires_in` was missing and the token is not a JWT with `exp`; the
    /// default lifetime was used.
    DefaultLifetime,
    /// `expires_in` was out of range (seconds as sent); it was clamped.
    Clamped {
        /// What the authority sent, in seconds.
        given: i64,
        /// What was used, in seconds.
        used: u64,
    },
    /// The JWT `exp` (moved into the local clock) was earlier than
    /// `sent_at + expires_in`, and was used.
    JwtExpiryEarlier,
    /// The authority's refresh hint (`refresh_in`, seconds as sent) made
    /// the token stale earlier than the policy would have.
    RefreshHint {
        /// What the authority sent, in seconds.
        refresh_in: i64,
    },
}

/// The outcome of [`LifetimePolicy::resolve`].
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The token with its times in the local clock's view.
    pub token: Token,
    /// The estimated offset of the authority's clock from ours, in ms
    /// (positive: the authority's clock is ahead), when it could be estimated.
    pub skew_ms: Option<i64>,
    /// What the policy decided on the authority's behalf, if anything.
    pub note: Option<LifetimeNote>,
}

impl LifetimePolicy {
    /// Sets the share of the lifetime during which a token is fresh
    /// (clamped to `0.0..=1.0`; the half-lifetime cap on the stale window
    /// makes anything below 0.5 behave like 0.5).
    pub fn with_fresh_fraction(mut self, fraction: f64) -> Self {
        self.fresh_fraction = if fraction.is_nan() {
            0.75
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// Sets the minimum stale window (still capped at half the lifetime).
    pub fn with_min_stale_window(mut self, window: Duration) -> Self {
        self.min_stale_window = window;
        self
    }

    /// Sets the lifetime assumed when the authority does not say.
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// Sets the range that `expires_in` is clamped into.
    pub fn with_lifetime_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_lifetime = min.max(Duration::from_millis(1));
        self.max_lifetime = max.max(self.min_lifetime);
        self
    }

    /// The shortest lifetime used: a shorter `expires_in` is clamped up to
    /// it (and the refresh machine treats the answer as degenerate).
    pub fn min_lifetime(&self) -> Duration {
        self.min_lifetime
    }

    /// The fresh fraction in use.
    pub fn fresh_fraction(&self) -> f64 {
        self.fresh_fraction
    }

    /// The minimum stale window in use.
    pub fn min_stale_window(&self) -> Duration {
        self.min_stale_window
    }

    /// How long before expiry a token of this lifetime goes stale.
    pub fn stale_window(&self, lifetime: Duration) -> Duration {
        let lifetime_ms = duration_millis(lifetime);
        let by_fraction = (lifetime_ms as f64 * (1.0 - self.fresh_fraction)) as u64;
        let window = by_fraction.max(duration_millis(self.min_stale_window));
        Duration::from_millis(window.min(lifetime_ms / 2))
    }

    /// A token issued at `issued_at`, living `lifetime`, with its stale time.
    pub fn times(&self, issued_at: Timestamp, lifetime: Duration) -> (Timestamp, Timestamp) {
        let expires_at = issued_at + lifetime;
        (expires_at - self.stale_window(lifetime), expires_at)
    }

    /// Builds the token for `response` to a request sent at `sent_at` and
    /// answered at `received_at` (both local wall-clock times).
    pub fn resolve(
        &self,
        response: TokenResponse,
        sent_at: Timestamp,
        received_at: Timestamp,
    ) -> Resolved {
        let received_at = received_at.max(sent_at);
        let midpoint = sent_at + received_at.saturating_duration_since(sent_at) / 2;
        let jwt = JwtTimes::read(response.access_token.expose_secret());

        let skew_ms = response
            .server_date
            .or(jwt.and_then(|j| j.iat))
            .map(|authority_now| authority_now.signed_millis_since(midpoint));

        let mut note = None;
        let lifetime = match response.expires_in {
            Some(given) => {
                let used = (given.max(0) as u64).saturating_mul(1_000).clamp(
                    duration_millis(self.min_lifetime),
                    duration_millis(self.max_lifetime),
                );
                if given <= 0 || used != (given as u64).saturating_mul(1_000) {
                    note = Some(LifetimeNote::Clamped {
                        given,
                        used: used / 1_000,
                    });
                }
                Duration::from_millis(used)
            }
            None => match jwt.and_then(|j| j.lifetime_from(sent_at, skew_ms)) {
                Some(l) => {
                    note = Some(LifetimeNote::LifetimeFromJwt);
                    l.clamp(self.min_lifetime, self.max_lifetime)
                }
                None => {
                    note = Some(LifetimeNote::DefaultLifetime);
                    self.default_lifetime
                        .clamp(self.min_lifetime, self.max_lifetime)
                }
            },
        };

        let mut lifetime = lifetime;
        if let Some(j) = jwt {
            // The authority's own view of the token's life, each bound an
            // upper one: `exp - iat` (it counts from the authority's issue,
            // which is after our send), `exp` moved into our clock by the
            // skew estimate, and, without `iat`, by the latest skew a `Date`
            // header allows (it has one-second resolution and was stamped
            // somewhere between our send and the answer, so the midpoint
            // estimate can make the authority look up to a second behind
            // and `exp` a second later). The earliest wins: no `Date` can
            // move the expiry past `sent_at + expires_in` or
            // `sent_at + (exp - iat)`.
            let mut bounds = Vec::with_capacity(3);
            if let (Some(iat), Some(exp)) = (j.iat, j.exp) {
                bounds.push(exp.saturating_duration_since(iat));
            }
            if let (Some(date), None) = (response.server_date, j.iat) {
                let latest_authority_now = date + Duration::from_millis(999);
                let skew = latest_authority_now.signed_millis_since(sent_at);
                bounds.extend(j.lifetime_from(sent_at, Some(skew)));
            }
            bounds.extend(j.lifetime_from(sent_at, skew_ms));
            for jwt_lifetime in bounds {
                // Only trust the authority's view when it is plausible: an
                // `exp` already in the past in our clock means the skew could
                // not be estimated, not that the fresh token is dead.
                if jwt_lifetime < lifetime && jwt_lifetime >= self.min_lifetime {
                    lifetime = jwt_lifetime;
                    if response.expires_in.is_some() {
                        note = note.or(Some(LifetimeNote::JwtExpiryEarlier));
                    }
                }
            }
        }

        let (stale_at, expires_at) = self.times(sent_at, lifetime);
        let token = Token::new(response.access_token, sent_at, stale_at, expires_at)
            .with_token_type(response.token_type)
            .with_refresh_token(response.refresh_token)
            .with_id_token(response.id_token)
            .with_scope(response.scope);
        Resolved {
            token,
            skew_ms,
            note,
        }
    }
}

/// The `iat` and `exp` claims of a JWT access token, read without verifying
/// the signature (the authority just handed it to us; we only want times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JwtTimes {
    /// Issued-at, in the authority's clock.
    pub iat: Option<Timestamp>,
    /// Expiry, in the authority's clock.
    pub exp: Option<Timestamp>,
}

impl JwtTimes {
    /// Reads the claims; `None` when `token` is not a JWT with a JSON payload.
    ///
    /// ```
    /// use freshtoken_core::lifetime::JwtTimes;
    /// use freshtoken_core::Timestamp;
    ///
    /// // {"iat":100,"exp":160}
    /// let jwt = "eyJhbGciOiJub25lIn0.eyJpYXQiOjEwMCwiZXhwIjoxNjB9.";
    /// let t = JwtTimes::read(jwt).unwrap();
    /// assert_eq!(t.exp, Some(Timestamp::from_secs(160)));
    /// assert_eq!(JwtTimes::read("opaque-token"), None);
    /// ```
    pub fn read(token: &str) -> Option<JwtTimes> {
        // A payload larger than this is not a token we want to parse.
        const MAX_PAYLOAD: usize = 16 * 1024;
        let mut parts = token.split('.');
        let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || payload.len() > MAX_PAYLOAD {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).ok()?;
        let claim = |name: &str| {
            claims
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Timestamp::from_millis((s * 1_000.0) as u64))
        };
        let times = JwtTimes {
            iat: claim("iat"),
            exp: claim("exp"),
        };
        (times.iat.is_some() || times.exp.is_some()).then_some(times)
    }

    /// The lifetime left at `sent_at` according to `exp`, moved into the
    /// local clock by `skew_ms` when known.
    fn lifetime_from(self, sent_at: Timestamp, skew_ms: Option<i64>) -> Option<Duration> {
        let exp_local = self.exp?.offset_millis(-skew_ms.unwrap_or(0));
        (exp_local > sent_at).then(|| exp_local.saturating_duration_since(sent_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AccessToken;

    fn jwt(payload: &str) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(r#"{"alg":"RS256"}"#),
            enc.encode(payload)
        )
    }

    fn resolve(resp: TokenResponse, sent: u64, recv: u64) -> Resolved {
        LifetimePolicy::default().resolve(
            resp,
            Timestamp::from_secs(sent),
            Timestamp::from_secs(recv),
        )
    }

    #[test]
    fn expiry_counts_from_the_send() {
        let r = resolve(
            TokenResponse::new(AccessToken::new("x")).with_expires_in(Some(3600)),
            1000,
            1010,
        );
        assert_eq!(r.token.issued_at(), Timestamp::from_secs(1000));
        assert_eq!(r.token.expires_at(), Timestamp::from_secs(4600));
        assert_eq!(r.token.stale_at(), Timestamp::from_secs(1000 + 2700));
        assert_eq!(r.note, None);
    }

    #[test]
    fn short_tokens_go_stale_at_half_life() {
        for secs in [1u64, 2, 20, 59] {
            let r = resolve(
                TokenResponse::new(AccessToken::new("x")).with_expires_in(Some(secs as i64)),
                0,
                0,
            );
            assert_eq!(r.token.stale_at().as_millis(), secs * 500, "{secs}");
            assert!(r.token.stale_at() < r.token.expires_at());
        }
    }

    #[test]
    fn absurd_expires_in_is_clamped_and_reported() {
        for (given, used) in [(-5i64, 1u64), (0, 1), (i64::MAX, 30 * 24 * 3600)] {
            let r = resolve(
                TokenResponse::new(AccessToken::new("x")).with_expires_in(Some(given)),
                10,
                10,
            );
            assert_eq!(r.token.lifetime(), Duration::from_secs(used), "{given}");
            assert_eq!(r.note, Some(LifetimeNote::Clamped { given, used }));
        }
    }

    #[test]
    fn missing_expires_in_uses_jwt_then_default() {
        let at = jwt(r#"{"iat":1000,"exp":1600}"#);
        let r = resolve(TokenResponse::new(AccessToken::new(at)), 1000, 1000);
        assert_eq!(r.token.lifetime(), Duration::from_secs(600));
        assert_eq!(r.note, Some(LifetimeNote::LifetimeFromJwt));

        let r = resolve(TokenResponse::new(AccessToken::new("opaque")), 1000, 1000);
        assert_eq!(r.token.lifetime(), Duration::from_secs(300));
        assert_eq!(r.note, Some(LifetimeNote::DefaultLifetime));
    }

    #[test]
    fn skew_moves_the_authoritys_expiry_into_our_clock() {
        // Our clock is 100 s behind the authority's: iat=1100 when we sent at 1000.
        let at = jwt(r#"{"iat":1100,"exp":1400}"#);
        let r = resolve(
            TokenResponse::new(AccessToken::new(at)).with_expires_in(Some(3600)),
            1000,
            1000,
        );
        assert_eq!(r.skew_ms, Some(100_000));
        // The JWT says 300 s of life; expires_in says 3600. The earlier wins.
        assert_eq!(r.token.expires_at(), Timestamp::from_secs(1300));
        assert_eq!(r.note, Some(LifetimeNote::JwtExpiryEarlier));
    }

    #[test]
    fn date_header_gives_the_skew() {
        let resp = TokenResponse::new(AccessToken::new("x"))
            .with_expires_in(Some(60))
            .with_server_date(Some(Timestamp::from_secs(900)));
        let r = resolve(resp, 1000, 1002);
        assert_eq!(r.skew_ms, Some(-101_000));
    }

    #[test]
    fn hostile_jwts_are_not_jwts() {
        for t in [
            "a.b.c",
            "..",
            "a.b",
            "a.b.c.d",
            &jwt("[1,2]"),
            &jwt(r#"{"exp":"x"}"#),
            &jwt(r#"{"exp":-1}"#),
        ] {
            assert_eq!(JwtTimes::read(t), None, "{t}");
        }
        let huge = jwt(r#"{"exp":1e300}"#);
        assert_eq!(JwtTimes::read(&huge).unwrap().exp, Some(Timestamp::MAX));
    }

    /// The issue's case: our clock and the authority's agree, the `Date`
    /// header truncates the authority's time to the second, and the JWT
    /// says the same as `expires_in`. The midpoint estimate from the
    /// truncated `Date` made the authority look up to a second behind, which
    /// moved `exp` a second later than `sent + expires_in`.
    #[test]
    fn a_one_second_date_header_never_moves_the_expiry_later() {
        // Sent at 1000.900, answered at 1000.950; the authority stamped
        // `Date: 1000` (truly 1000.920) and exp = 1000.920 + 60.
        let sent = Timestamp::from_millis(1_000_900);
        let received = Timestamp::from_millis(1_000_950);
        let at = jwt(r#"{"iat":1000.92,"exp":1060.92}"#);
        for expires_in in [None, Some(60)] {
            let response = TokenResponse::new(AccessToken::new(at.clone()))
                .with_expires_in(expires_in)
                .with_server_date(Some(Timestamp::from_secs(1_000)));
            let r = LifetimePolicy::default().resolve(response, sent, received);
            let true_expiry = Timestamp::from_millis(1_060_920);
            assert!(
                r.token.expires_at() <= true_expiry,
                "{expires_in:?}: {:?}",
                r.token.expires_at()
            );
            assert!(r.token.expires_at() <= sent + Duration::from_secs(60));
        }
    }

    #[test]
    fn a_backdated_iat_does_not_overshoot_expires_in() {
        // iat backdated by 5 minutes: exp - iat says 3900 s, expires_in 3600.
        let at = jwt(r#"{"iat":700,"exp":4600}"#);
        let r = resolve(
            TokenResponse::new(AccessToken::new(at)).with_expires_in(Some(3600)),
            1000,
            1000,
        );
        assert_eq!(r.token.expires_at(), Timestamp::from_secs(4600));
        // Without expires_in, exp - iat (3900 s) and exp in our clock (the
        // iat-based skew says the authority is 300 s behind: 4900) are both
        // upper bounds; without a Date header nothing better is known.
        let at = jwt(r#"{"iat":1000,"exp":1300}"#);
        let r = resolve(
            TokenResponse::new(AccessToken::new(at)).with_expires_in(Some(3600)),
            1000,
            1001,
        );
        assert!(r.token.expires_at() <= Timestamp::from_secs(1300));
    }

    #[test]
    fn exp_minus_iat_bounds_the_expiry_when_the_clocks_disagree() {
        // The authority's clock is 100 s ahead; the Date header says so.
        // exp - iat = 300 s; expires_in says 3600 s.
        let at = jwt(r#"{"iat":1100,"exp":1400}"#);
        let r = resolve(
            TokenResponse::new(AccessToken::new(at))
                .with_expires_in(Some(3600))
                .with_server_date(Some(Timestamp::from_secs(1100))),
            1000,
            1000,
        );
        assert!(r.token.expires_at() <= Timestamp::from_secs(1300));
        assert!(r.token.expires_at() >= Timestamp::from_secs(1299));
    }
}
