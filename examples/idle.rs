//! What an idle refresher costs: holds one blocking driver with hourly
//! tokens for a while (60 s by default; pass seconds as the first argument;
//! it says how long when it starts)
//! and reports the process's resident memory and CPU time, and the driver
//! thread's CPU time and number of times it ran.
//!
//! ```text
//! cargo run --release -p freshtoken-examples --example idle -- 60
//! ```
//!
//! Linux only (it reads /proc).

use std::fs;
use std::time::{Duration, Instant};

use freshtoken::driver::Builder;
use freshtoken::source::ConstTokenSource;

#[path = "support/mod.rs"]
mod support;

/// What an idle refresher costs: one blocking driver with hourly tokens,
/// its memory and CPU time measured from /proc (Linux).
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Cli {
    /// How long to hold the idle driver, in seconds
    #[arg(default_value_t = 60, value_name = "SECONDS")]
    seconds: u64,
}

fn main() {
    let Cli { seconds: secs } = support::cli();
    println!("holding one idle blocking driver for {secs} s, then reporting what it cost...");

    let (tokens, driver) = Builder::new()
        .thread_name("freshtoken")
        .spawn_thread(ConstTokenSource::new("an-hourly-token", Some(3600)))
        .expect("driver thread");
    tokens
        .wait_ready(Duration::from_secs(5))
        .expect("first token");

    let before = Usage::now();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after = Usage::now();

    println!(
        "held one blocking driver for {:?} with hourly tokens",
        started.elapsed()
    );
    println!(
        "process RSS: {} kB (peak {} kB)",
        after.rss_kb, after.hwm_kb
    );
    println!(
        "process CPU time while idle: {:.3} ms (all threads, from schedstat)",
        (after.threads_cpu_ns - before.threads_cpu_ns) as f64 / 1e6,
    );
    println!(
        "process CPU time since start: {:.0} ms (user+system, 10 ms resolution)",
        after.cpu_ticks as f64 * TICK_MS
    );
    match (before.driver, after.driver) {
        (Some(b), Some(a)) => println!(
            "driver thread while idle: {:.3} ms CPU, ran {} times",
            (a.cpu_ns - b.cpu_ns) as f64 / 1e6,
            a.runs - b.runs
        ),
        _ => println!("driver thread: not found in /proc/self/task"),
    }
    driver.shutdown_blocking();
}

/// /proc reports CPU time in USER_HZ ticks, 100 per second on Linux.
const TICK_MS: f64 = 10.0;

struct Usage {
    rss_kb: u64,
    hwm_kb: u64,
    cpu_ticks: u64,
    threads_cpu_ns: u64,
    driver: Option<ThreadUsage>,
}

#[derive(Clone, Copy)]
struct ThreadUsage {
    cpu_ns: u64,
    runs: u64,
}

impl Usage {
    fn now() -> Usage {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Usage {
            rss_kb: field("VmRSS:"),
            hwm_kb: field("VmHWM:"),
            cpu_ticks: process_cpu_ticks(),
            threads_cpu_ns: threads().map(|(_, t)| t.cpu_ns).sum(),
            driver: threads()
                .find(|(name, _)| name == "freshtoken")
                .map(|(_, t)| t),
        }
    }
}

/// utime + stime of the whole process, from /proc/self/stat.
fn process_cpu_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may contain spaces; fields after it are
    // counted from the closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Each live thread's name, CPU time (ns) and run count, from schedstat
/// (nanosecond resolution, unlike /proc/self/stat).
fn threads() -> impl Iterator<Item = (String, ThreadUsage)> {
    let tasks = fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten();
    tasks.filter_map(|entry| {
        let dir = entry.path();
        let name = fs::read_to_string(dir.join("comm")).ok()?.trim().to_owned();
        let sched = fs::read_to_string(dir.join("schedstat")).ok()?;
        let mut f = sched.split_whitespace().map(|v| v.parse::<u64>().ok());
        let cpu_ns = f.next()??;
        let _waiting_ns = f.next();
        let runs = f.next()??;
        Some((name, ThreadUsage { cpu_ns, runs }))
    })
}
