//! What a driver's [`Publisher`](super::Publisher), its
//! [`Control`](super::Control)s and the application's
//! [`TokenHandle`](super::TokenHandle)s share, and the one way to wait on
//! it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use event_listener::{Event, Listener};
use freshtoken_core::{MonoTime, Snapshot, TokenId};

use super::Command;
use crate::sync::lock;

pub(crate) struct Shared {
    /// Behind its own `Arc` so that a [`TokenReader`](super::TokenReader)
    /// can hold it.
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    /// Bumped on every publish, so waiters can tell a change from a
    /// spurious wake-up.
    pub(crate) version: AtomicU64,
    /// Notified on every publish and when the publisher goes away.
    pub(crate) changed: Event,
    /// The publisher (the driver) is gone.
    closed: AtomicBool,
    /// Commands for the driver. A mutex is enough: commands are rare
    /// (401s, shutdown) and never on the read path.
    commands: Mutex<VecDeque<Command>>,
    /// Notified whenever a command is queued.
    pub(crate) command_ready: Event,
    /// Live [`TokenHandle`](super::TokenHandle)s.
    pub(crate) handles: AtomicUsize,
    /// The token a reader last woke the driver for, having found it stale
    /// ([`TokenId::as_u64`]; 0 before the first), so one stale token wakes
    /// it once.
    woken_for: AtomicU64,
    /// When a reader last woke the driver (the handles' monotonic clock, in
    /// milliseconds; `u64::MAX` before the first), for the rate limit.
    woken_at: AtomicU64,
    /// When a reader last asked for a token valid for longer (as
    /// `woken_at`), for the same rate limit.
    asked_at: AtomicU64,
    /// Whether the driver shares its tokens through a cache.
    sharing: OnceLock<super::Sharing>,
}

/// The shortest time between two wakes of the driver by readers.
const STALE_WAKE_INTERVAL_MS: u64 = 100;

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::initial())),
            version: AtomicU64::new(0),
            changed: Event::new(),
            closed: AtomicBool::new(false),
            commands: Mutex::new(VecDeque::new()),
            command_ready: Event::new(),
            handles: AtomicUsize::new(1),
            woken_for: AtomicU64::new(0),
            woken_at: AtomicU64::new(u64::MAX),
            asked_at: AtomicU64::new(u64::MAX),
            sharing: OnceLock::new(),
        })
    }

    /// Set once, by the driver's builder.
    pub(crate) fn set_sharing(&self, sharing: super::Sharing) {
        let _ = self.sharing.set(sharing);
    }

    /// What the builder set; [`Unshared`](super::Sharing::Unshared) for a
    /// publisher made by hand.
    pub(crate) fn sharing(&self) -> super::Sharing {
        self.sharing
            .get()
            .cloned()
            .unwrap_or(super::Sharing::Unshared)
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub(crate) fn publish(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
        self.version.fetch_add(1, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }

    pub(crate) fn send(&self, command: Command) {
        {
            let mut queue = lock(&self.commands);
            // Ten 401s with one token are one invalidation: keep the queue
            // bounded whatever the application does.
            if !queue.contains(&command) {
                queue.push_back(command);
            }
        }
        self.command_ready.notify(usize::MAX);
    }

    /// A reader found `token` stale or expired at `now`: wakes the driver
    /// with [`Command::Stale`], unless a reader already did for this token,
    /// or did for any less than 100 ms ago. Of readers racing, one sends.
    pub(crate) fn wake_for_stale(&self, token: TokenId, now: MonoTime) {
        let id = token.as_u64();
        let seen = self.woken_for.load(Ordering::Relaxed);
        if seen == id {
            return;
        }
        let now_ms = now.saturating_duration_since(MonoTime::ZERO).as_millis();
        let now_ms = u64::try_from(now_ms).unwrap_or(u64::MAX);
        let last = self.woken_at.load(Ordering::Relaxed);
        if last != u64::MAX && now_ms.saturating_sub(last) < STALE_WAKE_INTERVAL_MS {
            return;
        }
        if self
            .woken_for
            .compare_exchange(seen, id, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.woken_at.store(now_ms, Ordering::Relaxed);
            self.send(Command::Stale);
        }
    }

    /// A reader needs a token valid for `needed` more: tells the driver
    /// with [`Command::NeedValidity`], at most every 100 ms (the machine
    /// rate-limits the refreshes themselves). Of readers racing, one sends.
    pub(crate) fn ask_for_validity(&self, needed: Duration, now: MonoTime) {
        let now_ms = u64::try_from(now.saturating_duration_since(MonoTime::ZERO).as_millis())
            .unwrap_or(u64::MAX);
        let last = self.asked_at.load(Ordering::Relaxed);
        if last != u64::MAX && now_ms.saturating_sub(last) < STALE_WAKE_INTERVAL_MS {
            return;
        }
        if self
            .asked_at
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.send(Command::NeedValidity(needed));
        }
    }

    pub(crate) fn try_recv(&self) -> Option<Command> {
        lock(&self.commands).pop_front()
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Resolves with the first `Some` of `check`, re-checking whenever `event`
/// is notified. It listens before checking again, so a notification
/// between a check and the listen is never missed.
pub(crate) async fn wait_for<T>(event: &Event, mut check: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = check() {
            return v;
        }
        let listener = event.listen();
        if let Some(v) = check() {
            return v;
        }
        listener.await;
    }
}

/// [`wait_for`], blocking the thread for at most `timeout`; `None` if it
/// passed first.
pub(crate) fn wait_for_blocking<T>(
    event: &Event,
    timeout: Duration,
    check: impl FnMut() -> Option<T>,
) -> Option<T> {
    // A timeout too far to represent is no timeout.
    wait_until_blocking(event, Instant::now().checked_add(timeout), check)
}

/// [`wait_for`], blocking the thread until `deadline` (`None`: no
/// deadline); `None` if it passed first.
pub(crate) fn wait_until_blocking<T>(
    event: &Event,
    deadline: Option<Instant>,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        let listener = event.listen();
        if let Some(v) = check() {
            return Some(v);
        }
        match deadline {
            Some(d) => {
                if listener.wait_deadline(d).is_none() {
                    return check();
                }
            }
            None => listener.wait(),
        }
    }
}
