//! The driver's side of the handles: [`Publisher`], [`Control`] and
//! [`Command`]. Re-exported from [`driver`](crate::driver) for authors of
//! drivers; applications never need them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshtoken_core::{Clock, Snapshot, TokenId};

use super::shared::{wait_for, wait_for_blocking, wait_until_blocking, Shared};
use super::TokenHandle;

/// A request from the application (or the driver's owner) to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// A consumer got a 401 with the token of this id.
    Invalidate(TokenId),
    /// Re-read the clock now and act on any deadline that is due (after a
    /// test moved a manual clock, or a worker finished).
    Wake,
    /// A reader found the current token stale or expired by the clocks
    /// while the driver may be asleep (its timer late after a suspend, or
    /// the wall clock stepped forward): re-read the clocks and tick, as for
    /// [`Wake`](Self::Wake). Sent at most once per token and every 100 ms.
    Stale,
    /// A reader needs a token valid for at least this long
    /// ([`TokenHandle::valid_for`]); fed to the machine as
    /// [`Input::NeedValidity`](freshtoken_core::Input::NeedValidity). Sent
    /// at most every 100 ms.
    NeedValidity(std::time::Duration),
    /// Stop the driver.
    Shutdown,
    /// The last [`TokenHandle`] was dropped: nobody reads tokens any more,
    /// so the driver should stop.
    HandlesDropped,
}

/// The driver's side: publishes snapshots to the handles and receives
/// their commands. Dropping it tells every waiting handle that no more
/// snapshots will come.
///
/// ```
/// use freshtoken::driver::{Command, Publisher};
/// use freshtoken::proto::{RefreshState, Snapshot};
/// use freshtoken::{AccessToken, ManualClock, Timestamp, Token};
/// use std::sync::Arc;
///
/// let clock = ManualClock::new(Timestamp::from_secs(100));
/// let (publisher, handle) = Publisher::new(Arc::new(clock.clone()));
/// assert!(handle.token().is_none());
///
/// // What a driver does with `Action::Publish`:
/// let token = Token::new(
///     AccessToken::new("at"),
///     Timestamp::from_secs(100),
///     Timestamp::from_secs(145),
///     Timestamp::from_secs(160),
/// );
/// let mut snapshot = Snapshot::initial();
/// snapshot.token = Some(Arc::new(token));
/// snapshot.state = RefreshState::Healthy;
/// publisher.publish(snapshot);
///
/// let token = handle.valid_token().unwrap();
/// assert_eq!(token.access_token().expose_secret(), "at");
///
/// // A 401 with that token goes back to the driver as a command.
/// handle.invalidate(&token);
/// assert_eq!(publisher.try_recv(), Some(Command::Invalidate(token.id())));
/// ```
pub struct Publisher {
    shared: Arc<Shared>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("version", &self.shared.version())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher and the first handle. `clock` is the driver's clock;
    /// handles read it to tell whether a token is still valid.
    pub fn new(clock: Arc<dyn Clock>) -> (Publisher, TokenHandle) {
        let shared = Shared::new();
        let handle = TokenHandle::new(shared.clone(), clock);
        (Publisher { shared }, handle)
    }

    /// Makes `snapshot` what readers see and wakes everyone waiting for a
    /// change.
    /// Takes the machine's `Arc` as it is (or a `Snapshot`).
    pub fn publish(&self, snapshot: impl Into<Arc<Snapshot>>) {
        self.shared.publish(snapshot.into());
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Records how the driver shares its tokens, for
    /// [`TokenHandle::sharing`]; the first call wins.
    pub(crate) fn set_sharing(&self, sharing: super::Sharing) {
        self.shared.set_sharing(sharing);
    }

    /// A way to send commands to this publisher's driver without keeping
    /// it alive (e.g. for a shutdown handle).
    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    /// The next queued command, if any.
    pub fn try_recv(&self) -> Option<Command> {
        self.shared.try_recv()
    }

    /// The next command, when one arrives. Works under any executor; the
    /// future may be dropped at any point without losing a command.
    pub async fn recv(&self) -> Command {
        wait_for(&self.shared.command_ready, || self.try_recv()).await
    }

    /// The next command, blocking until one arrives or `deadline` passes
    /// (`None`: no deadline, for a wait too long to represent).
    pub fn recv_until(&self, deadline: Option<Instant>) -> Option<Command> {
        wait_until_blocking(&self.shared.command_ready, deadline, || self.try_recv())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Sends commands to a driver and tells when it has stopped, without
/// counting as a [`TokenHandle`].
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Control {
    /// Queues `command` for the driver.
    pub fn send(&self, command: Command) {
        self.shared.send(command);
    }

    /// Whether the driver has stopped (its [`Publisher`] is gone).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Resolves once the driver has stopped.
    pub async fn closed(&self) {
        wait_for(&self.shared.changed, || self.is_closed().then_some(())).await
    }

    /// Blocks until the driver has stopped or `timeout` passes; returns
    /// whether it has stopped.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        wait_for_blocking(&self.shared.changed, timeout, || {
            self.is_closed().then_some(())
        })
        .is_some()
    }
}
