//! Known defects, put back on demand (feature `mutants`), so the model
//! checker's own tests show that it finds each of them.
//!
//! A checker that finds nothing on a correct machine proves little until it
//! is seen to find what was wrong before. Each [`Mutant`] re-introduces one
//! defect that outside testing found in an earlier machine, at the one place
//! the fix lives; `core/tests/model_check.rs` (`each_known_defect_is_found`)
//! runs the exploration with each mutant and requires the violation it
//! causes. Without the feature the field does not exist, and with it the
//! default is `None`: the machine is the correct one.

/// One known defect to put back ([`MachineConfig::mutant`](super::MachineConfig)).
/// For the model checker's tests only: never set it in a real program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mutant {
    /// A late fetch answer's store goes out at once, beside a store in
    /// flight, instead of waiting as the follow-up (defect 1: two stores
    /// at once, the older token possibly landing last).
    StoreBesideStore,
    /// `Stop` comes right after the lease's release is sent, before its
    /// answer (defect 2: the lease outlives the process).
    StopBeforeRelease,
    /// A follower with a valid token re-reads the cache every peer wait
    /// (jittered), its own token's expiry not pulling the look earlier
    /// (defect 3: a follower misses the token that is already there).
    FollowerIgnoresExpiry,
}

impl super::RefreshMachine {
    /// Whether `mutant` is put back in this machine.
    pub(super) fn mutant(&self, mutant: Mutant) -> bool {
        self.config.mutant == Some(mutant)
    }
}
