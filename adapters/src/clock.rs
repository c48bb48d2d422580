//! Clocks: the [`SystemClock`] drivers read by default, a [`ManualClock`]
//! for tests, and the [`Clock`] trait behind both.
//!
//! # Clocks that jump
//!
//! A driver hands the machine two readings with every input: the wall
//! clock, for token times (they are shared between processes and
//! machines), and a monotonic clock, for durations and for a token's life
//! as this process measured it. A token this process fetched is stale and
//! expires at the earlier of its wall-clock points and the same offsets
//! counted on the monotonic clock from the fetch's sending; readers judge
//! by both clocks too ([`Snapshot::is_valid_at`](crate::handle::Snapshot::is_valid_at)).
//! So a wall clock stepped back (an NTP correction) never stretches a
//! token's life, and one stepped forward ages the token at once.
//!
//! What a suspend (a laptop's sleep, a paused virtual machine) gives, per
//! platform:
//!
//! * **Linux and Android**: [`SystemClock::monotonic`] reads
//!   `CLOCK_BOOTTIME`, which counts the suspended time, so the machine's
//!   durations (backoffs, waits, a token's monotonic life) include a
//!   suspend. The driver's sleeps (tokio's, smol's and async-std's timers,
//!   and the thread driver's timed waits) run on `CLOCK_MONOTONIC`, which
//!   stops during a suspend: after a resume the driver's timer is late by
//!   the suspended time. What wakes it is the first read of the token
//!   ([`TokenHandle::valid_token`](crate::TokenHandle::valid_token), the
//!   middleware's reads, `ready`), which finds the token stale by the
//!   clocks and wakes the driver, or else the heartbeat (at most one
//!   heartbeat of time the process spends awake).
//! * **Other platforms**: the monotonic clock is `std::time::Instant`,
//!   which may or may not count a suspend depending on the platform (it
//!   does not on macOS). The wall clock does move
//!   across a suspend, so a token is still judged expired at the first read
//!   after a resume, which wakes the driver; durations the machine counts
//!   on the monotonic clock (a backoff, a peer wait) may then end late by
//!   the suspended time, bounded by the heartbeat as above.

use std::sync::OnceLock;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::time::Instant;
use std::time::{Duration, SystemTime};

pub use freshtoken_core::{Clock, ManualClock, MonoTime, Now, Timestamp};

/// The operating system's clocks: the wall clock (`SystemTime::now`) for
/// token times, which are shared between processes and machines, and a
/// monotonic clock for durations, so a wall clock stepped back never
/// stretches a backoff or a token's life. The monotonic clock is
/// `CLOCK_BOOTTIME` on Linux and Android (it counts the time the machine
/// was suspended) and `std::time::Instant` elsewhere; see the [module docs](self) for what a
/// suspend gives on each.
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
        static ORIGIN: OnceLock<Duration> = OnceLock::new();
        let now = monotonic_since_boot();
        let origin = *ORIGIN.get_or_init(|| now);
        MonoTime::from_duration(now.saturating_sub(origin))
    }
}

/// `CLOCK_BOOTTIME`: monotonic, and counting suspended time. Read through
/// libc's `clock_gettime` (rustix's `use-libc` backend): rustix's own vDSO
/// call stops a process under valgrind with SIGSEGV at the first reading
/// (rustix issue 1559), and the read path's instruction counts are
/// measured under callgrind.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn monotonic_since_boot() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    // Never negative; a kernel that said otherwise would get zero.
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// `Instant`, measured from the first call.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn monotonic_since_boot() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_counts_from_the_first_reading_and_never_goes_back() {
        let first = SystemClock.monotonic();
        std::thread::sleep(Duration::from_millis(20));
        let later = SystemClock.monotonic();
        assert!(later.saturating_duration_since(first) >= Duration::from_millis(20));
        // Counted from the process's first reading, not from boot.
        assert!(later.saturating_duration_since(MonoTime::ZERO) < Duration::from_secs(3_600));
    }

    /// The clock is the kernel's boot-time clock, which a suspend does not
    /// stop: checked against the reading `/proc/uptime` gives, which is the
    /// same clock (`CLOCK_BOOTTIME`) in seconds.
    #[cfg(target_os = "linux")]
    #[test]
    fn on_linux_the_monotonic_clock_is_boottime() {
        let uptime = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
        let secs: f64 = uptime
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("uptime seconds");
        let boot = monotonic_since_boot().as_secs_f64();
        assert!(
            (boot - secs).abs() < 5.0,
            "boottime {boot} s, /proc/uptime {secs} s"
        );
    }
}
