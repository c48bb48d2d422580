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

#[test]
fn eight_processes_share_postgres() {
    let server = freshtoken_tests::postgres_server::PostgresServer::start();
    let fleet = run_fleet("postgres", &server.conn_str());
    check("postgres", &fleet);
    // The bound for the PostgreSQL cache: one request per refresh
    // period, give or take a tenth (counts, not times).
    assert!(
        fleet.requests as f64 <= 1.1 * fleet.periods,
        "postgres: {} requests for {:.1} refresh periods",
        fleet.requests,
        fleet.periods
    );
    assert!(
        fleet.periods >= 20.0,
        "only {:.1} refresh periods",
        fleet.periods
    );
}

#[test]
fn eight_processes_share_an_encrypted_file_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let fleet = run_fleet("file+sealed", path.to_str().unwrap());
    check("file+sealed", &fleet);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"FTSEAL2:fleet2:"), "not sealed");
}

#[test]
fn eight_processes_share_an_encrypted_redis() {
    let server = RedisServer::start_tcp();
    let fleet = run_fleet("redis+sealed", &server.url());
    check("redis+sealed", &fleet);
}
