//! The system's wall clock.

use std::time::SystemTime;

use freshtoken_core::{Clock, Timestamp};

/// The operating system's wall clock (`SystemTime::now`).
///
/// Wall-clock time, not a monotonic one, because token times are shared
/// between processes and machines; drivers re-read it at every heartbeat so
/// that jumps and suspends are noticed.
///
/// ```
/// use freshtoken::{Clock, SystemClock};
/// assert!(SystemClock.now().as_secs() > 1_600_000_000);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}
