//! Lease holder identities.

/// A lease holder id unique across processes and cache values: the pid
/// plus 64 random bits (fastrand, seeded per thread from the OS-randomized
/// std hasher), since pids are reused and one process may hold several
/// caches. Not a secret; it shows up in lease entries and in `Debug`.
pub(crate) fn holder_id() -> String {
    format!("{}-{:016x}", std::process::id(), fastrand::u64(..))
}
