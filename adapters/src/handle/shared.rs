//! What a driver's [`Publisher`](super::Publisher), its
//! [`Control`](super::Control)s and the application's
//! [`TokenHandle`](super::TokenHandle)s share, and the one way to wait on
//! it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use event_listener::{Event, Listener};
use freshtoken_core::Snapshot;

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
}

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
        })
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub(crate) fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
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
