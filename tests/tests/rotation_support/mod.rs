//! What `fleet_rotation.rs` and `fleet_redis_rotation.rs` share about their
//! `rotation_worker` processes: collecting the lines a worker prints, and
//! reading its `valid`/`invalid` changes from them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::ChildStdout;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Collects the lines of a worker's stdout as they come, on a thread that
/// ends with the stream.
pub fn collect_lines(stdout: ChildStdout) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    (lines, reader)
}

/// The `valid`/`invalid` changes a worker printed, as (unix ms, valid).
pub fn changes(lines: &[String]) -> Vec<(u64, bool)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut words = l.split(' ');
            let valid = match words.next()? {
                "valid" => true,
                "invalid" => false,
                _ => return None,
            };
            Some((words.next()?.parse().ok()?, valid))
        })
        .collect()
}
