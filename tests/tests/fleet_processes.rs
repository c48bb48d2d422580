//! Eight real processes share one cache (a file, then Redis) against one
//! local authority with 2 s tokens for 20 s: the authority should see about
//! one request per refresh period, no process may hold an expired token
//! after its first one, and no process may read a torn cache entry.
//!
//! Run with `--nocapture` to see the request ratios.

mod fleet_support;

use fleet_support::{check, run_fleet};
use freshtoken_tests::redis_server::RedisServer;

#[test]
fn eight_processes_share_a_file_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let fleet = run_fleet("file", path.to_str().unwrap());
    // The file cache moves a file it cannot decode aside as
    // `<name>.corrupt-<ms>-<pid>`: any such file is a torn or bad read.
    let corrupt: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".corrupt-"))
        .collect();
    println!(
        "fleet[file]: files moved aside as corrupt: {}",
        corrupt.len()
    );
    assert!(corrupt.is_empty(), "corrupt cache files: {corrupt:?}");
    check("file", &fleet);
}

#[test]
fn eight_processes_share_redis() {
    let server = RedisServer::start_tcp();
    let fleet = run_fleet("redis", &server.url());
    check("redis", &fleet);
}
