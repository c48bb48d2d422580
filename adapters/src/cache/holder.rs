//! Lease holder identities.

use std::hash::{BuildHasher, Hasher};
use std::time::SystemTime;

/// A lease holder id unique across processes and cache values: the pid
/// plus randomness, since pids are reused and one process may hold several
/// caches. Not a secret; it shows up in lease entries and in `Debug`.
pub(crate) fn holder_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{}-{:016x}", std::process::id(), h.finish())
}
