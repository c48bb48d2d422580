//! Clocks: the [`SystemClock`] drivers read by default, a [`ManualClock`]
//! for tests, and the [`Clock`] trait behind both.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

pub use freshtoken_core::{Clock, ManualClock, MonoTime, Now, Timestamp};

/// The operating system's clocks: the wall clock (`SystemTime::now`) for
/// token times, which are shared between processes and machines, and the
/// monotonic clock (`Instant::now`) for durations, so a wall clock stepped
/// back never stretches a backoff. Drivers re-read both at every heartbeat
/// so that jumps and suspends are noticed.
///
/// ```
/// use freshtoken::{Clock, SystemClock};
/// assert!(SystemClock.now().as_secs() > 1_600_000_000);
/// let (a, b) = (SystemClock.monotonic(), SystemClock.monotonic());
/// assert!(b >= a);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    fn monotonic(&self) -> MonoTime {
        // Milliseconds since the first reading in this process.
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        MonoTime::from_duration(ORIGIN.get_or_init(Instant::now).elapsed())
    }
}
