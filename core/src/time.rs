//! Wall-clock time as plain data.
//!
//! The core never reads a clock: every instant it sees is handed to it. Token
//! times are persisted and shared between processes, so they are wall-clock
//! milliseconds since the Unix epoch rather than [`std::time::Instant`]s, which
//! mean nothing outside the process that made them.

use std::fmt;
use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall-clock instant: milliseconds since the Unix epoch.
///
/// Arithmetic saturates (at the epoch and at `u64::MAX` milliseconds) instead
/// of overflowing, because the durations it meets come from the network and
/// from files and may be absurd. It serializes as a plain integer.
///
/// ```
/// use freshtoken_core::Timestamp;
/// use std::time::Duration;
///
/// let t = Timestamp::from_millis(1_000);
/// assert_eq!((t + Duration::from_secs(2)).as_millis(), 3_000);
/// assert_eq!(t - Duration::from_secs(5), Timestamp::EPOCH); // saturates
/// assert_eq!(Timestamp::from_millis(3_000).saturating_duration_since(t), Duration::from_secs(2));
/// ```
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The largest representable instant; used as "never".
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// An instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// An instant `s` seconds after the epoch (saturating).
    pub const fn from_secs(s: u64) -> Self {
        Timestamp(s.saturating_mul(1_000))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000
    }

    /// Converts a [`SystemTime`]; instants before the epoch become the epoch.
    ///
    /// This is a pure conversion: reading the clock is the caller's business.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(duration_millis(d)),
            Err(_) => Timestamp::EPOCH,
        }
    }

    /// The instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_millis(self.0))
            .unwrap_or(UNIX_EPOCH)
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// `self - d`, saturating at [`Timestamp::EPOCH`].
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_millis(d)))
    }

    /// How long after `earlier` this instant is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The signed distance `self - other` in milliseconds (saturating).
    pub fn signed_millis_since(self, other: Timestamp) -> i64 {
        let d = i128::from(self.0) - i128::from(other.0);
        d.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Shifts the instant by a signed number of milliseconds (saturating).
    pub fn offset_millis(self, ms: i64) -> Self {
        if ms >= 0 {
            Timestamp(self.0.saturating_add(ms as u64))
        } else {
            Timestamp(self.0.saturating_sub(ms.unsigned_abs()))
        }
    }
}

/// Whole milliseconds of `d`, saturating at `u64::MAX` (so `Duration::MAX`
/// means "as long as can be said", never a panic or a wrap): the one
/// conversion the machine, the policies and the adapters' caches share.
///
/// ```
/// use freshtoken_core::time::duration_millis;
/// use std::time::Duration;
/// assert_eq!(duration_millis(Duration::from_micros(1_999)), 1);
/// assert_eq!(duration_millis(Duration::MAX), u64::MAX);
/// ```
pub fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        self.saturating_sub(d)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}.{:03}s)", self.0 / 1_000, self.0 % 1_000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1_000, self.0 % 1_000)
    }
}

/// A monotonic instant: milliseconds since an arbitrary origin (a driver's
/// start, a simulation's). It never goes back, whatever the wall clock does,
/// so the machine measures durations (backoff, peer waits, lease holds,
/// request deadlines) on it; token times stay [`Timestamp`]s.
///
/// ```
/// use freshtoken_core::MonoTime;
/// use std::time::Duration;
///
/// let t = MonoTime::from_millis(500);
/// assert_eq!((t + Duration::from_millis(250)).as_millis(), 750);
/// assert_eq!((t + Duration::MAX), MonoTime::MAX); // saturates
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(u64);

impl MonoTime {
    /// The origin.
    pub const ZERO: MonoTime = MonoTime(0);
    /// The largest representable instant; used as "never".
    pub const MAX: MonoTime = MonoTime(u64::MAX);

    /// An instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        MonoTime(ms)
    }

    /// An instant `d` after the origin (saturating).
    pub fn from_duration(d: Duration) -> Self {
        MonoTime(duration_millis(d))
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this instant is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: MonoTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;
    fn add(self, d: Duration) -> MonoTime {
        MonoTime(self.0.saturating_add(duration_millis(d)))
    }
}

/// Both clocks at one moment, as every machine input gets them: the wall
/// clock for token times (shared between processes) and the monotonic
/// clock for durations.
///
/// A plain [`Timestamp`] converts into a `Now` whose monotonic reading is
/// the wall-clock one, which is what tests and single-clock callers want;
/// drivers pass both.
///
/// ```
/// use freshtoken_core::{MonoTime, Now, Timestamp};
///
/// let now: Now = Timestamp::from_millis(7).into();
/// assert_eq!(now.mono, MonoTime::from_millis(7));
/// let stepped = Now::new(Timestamp::EPOCH, MonoTime::from_millis(9));
/// assert_eq!(stepped.wall, Timestamp::EPOCH);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// The wall-clock time.
    pub wall: Timestamp,
    /// The monotonic time.
    pub mono: MonoTime,
}

impl Now {
    /// Both readings.
    pub const fn new(wall: Timestamp, mono: MonoTime) -> Self {
        Now { wall, mono }
    }

    /// Whether the wall clock is as far from the monotonic clock as at
    /// `other` (neither stepped in between).
    pub(crate) fn same_offset(self, other: Now) -> bool {
        let offset = |n: Now| i128::from(n.wall.0) - i128::from(n.mono.0);
        offset(self) == offset(other)
    }

    /// The wall-clock instant at which the monotonic instant `at` falls,
    /// seen from now (for `Timeout`s, which drivers sleep towards).
    pub fn wall_at(self, at: MonoTime) -> Timestamp {
        if at == MonoTime::MAX {
            return Timestamp::MAX;
        }
        self.wall + at.saturating_duration_since(self.mono)
    }
}

impl Now {
    /// The wall-clock time as a clock anchored at `anchor` reads it now:
    /// the anchor's wall reading advanced by the monotonic time elapsed
    /// since, or the wall clock, whichever is later.
    ///
    /// A token's times are judged on it: a wall clock stepped back never
    /// stretches a token's life (the monotonic clock keeps counting), and
    /// one stepped forward, as after a resume from suspend, ages the token
    /// at once (the wall clock is later).
    ///
    /// ```
    /// use freshtoken_core::{MonoTime, Now, Timestamp};
    ///
    /// let anchor = Now::new(Timestamp::from_secs(1_000), MonoTime::from_millis(0));
    /// // 10 s later the wall clock was stepped back 120 s: 10 s have passed.
    /// let back = Now::new(Timestamp::from_secs(890), MonoTime::from_millis(10_000));
    /// assert_eq!(back.token_clock(anchor), Timestamp::from_secs(1_010));
    /// // Stepped forward 120 s instead (a suspend the monotonic clock missed).
    /// let ahead = Now::new(Timestamp::from_secs(1_130), MonoTime::from_millis(10_000));
    /// assert_eq!(ahead.token_clock(anchor), Timestamp::from_secs(1_130));
    /// ```
    pub fn token_clock(self, anchor: Now) -> Timestamp {
        let steady = anchor.wall + self.mono.saturating_duration_since(anchor.mono);
        self.wall.max(steady)
    }

    /// The monotonic instant at which a clock anchored here (see
    /// [`token_clock`](Self::token_clock)) reads `at`; this instant if
    /// `at` is not after the anchor's wall reading.
    pub fn mono_of(self, at: Timestamp) -> MonoTime {
        if at == Timestamp::MAX {
            return MonoTime::MAX;
        }
        self.mono + at.saturating_duration_since(self.wall)
    }
}

impl From<Timestamp> for Now {
    fn from(wall: Timestamp) -> Self {
        Now {
            wall,
            mono: MonoTime(wall.0),
        }
    }
}

/// A source of time for drivers.
///
/// The core never calls it; drivers read it and pass both readings into the
/// machine. The system implementation lives in the `freshtoken` crate
/// (`SystemClock`); [`ManualClock`] is for tests and simulations.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;

    /// The current monotonic time. The default reads the wall clock, which
    /// is only right for a clock that never steps back; real clocks
    /// override it.
    fn monotonic(&self) -> MonoTime {
        MonoTime(self.now().0)
    }

    /// Both readings.
    fn read(&self) -> Now {
        Now::new(self.now(), self.monotonic())
    }
}

/// A clock that moves only when told to; clones share one time.
///
/// ```
/// use freshtoken_core::{Clock, ManualClock, Timestamp};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Timestamp::from_secs(100));
/// let view = clock.clone();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(view.now(), Timestamp::from_secs(105));
/// ```
///
/// Its monotonic reading moves with [`advance`](Self::advance) only:
/// [`set`](Self::set) steps the wall clock (backwards too) as an operator or
/// NTP would, and leaves the monotonic clock where it was.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
    mono: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            millis: Arc::new(AtomicU64::new(start.as_millis())),
            mono: Arc::new(AtomicU64::new(start.as_millis())),
        }
    }

    /// Steps the wall clock to `t` (it may go backwards, like a real wall
    /// clock can); the monotonic clock does not move.
    pub fn set(&self, t: Timestamp) {
        self.millis.store(t.as_millis(), Ordering::SeqCst);
    }

    /// Moves both clocks forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = duration_millis(d);
        for clock in [&self.millis, &self.mono] {
            let _ = clock.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(ms))
            });
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.millis.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> MonoTime {
        MonoTime(self.mono.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(Timestamp::EPOCH - Duration::from_secs(1), Timestamp::EPOCH);
        assert_eq!(Timestamp::from_secs(u64::MAX), Timestamp::MAX);
        assert_eq!(Timestamp::EPOCH + Duration::MAX, Timestamp::MAX);
        assert_eq!(
            Timestamp::MAX.signed_millis_since(Timestamp::EPOCH),
            i64::MAX
        );
        assert_eq!(
            Timestamp::from_millis(5).offset_millis(-10),
            Timestamp::EPOCH
        );
        assert_eq!(
            Timestamp::from_millis(5).offset_millis(10),
            Timestamp::from_millis(15)
        );
    }

    #[test]
    fn serde_is_an_integer() {
        let json = serde_json::to_string(&Timestamp::from_millis(42)).unwrap();
        assert_eq!(json, "42");
        let back: Timestamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Timestamp::from_millis(42));
    }

    #[test]
    fn system_time_round_trip() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
    }
}
