//! A process whose wall clock the test steps (`tests/clock_steps.rs`): it
//! runs a real driver (the thread driver, or the async one on tokio)
//! against the test's `LocalAuthority` with the default settings, reads
//! the token in a loop, and steps its own wall clock once, through
//! libfaketime's timestamp file, as a resume from suspend or an NTP step
//! looks to a process: only the wall clock moves (the test runs it with
//! `FAKETIME_DONT_FAKE_MONOTONIC=1`, so `Instant` and the driver's timers
//! keep counting real time).
//!
//! `clock_worker <thread|tokio> <token url> <client id> <faketime file>
//! <step at ms> <step by s> <run ms> <read every ms>`; the client secret
//! comes through `CLOCK_CLIENT_SECRET`. At `step at ms` it writes
//! `+<step by>` or `-<step by>` to the faketime file (which libfaketime
//! re-reads at every clock reading with `FAKETIME_NO_CACHE=1`).
//!
//! It prints one line per event, each with the milliseconds since it
//! started on the monotonic clock:
//!
//! * `request <ms>`: a token request goes out;
//! * `token <ms>`: a read found a new valid token;
//! * `expired <ms>` / `valid <ms>`: reads went from a valid token to none
//!   (expired, by the handle's judgement) and back;
//! * `step <ms> <wall jump ms>`: the wall clock was stepped, and by how
//!   much it moved against the monotonic clock (as measured here);
//! * `end <ms> <reads>`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use freshtoken::driver::Builder;
use freshtoken::oauth2::ClientCredentials;
use freshtoken::source::{FetchRequest, TokenResponse, TokenSource};
use freshtoken::{FetchError, TokenHandle};

/// Logs every request, then asks the authority.
struct Logged {
    inner: ClientCredentials,
    start: Instant,
}

impl TokenSource for Logged {
    fn fetch(&self, request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        say(&format!("request {}", ms(self.start)));
        self.inner.fetch(request)
    }
}

fn ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The test reads the lines as they come; a closed pipe ends nothing.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 8 {
        eprintln!(
            "usage: clock_worker <thread|tokio> <token url> <client id> <faketime file> \
             <step at ms> <step by s> <run ms> <read every ms>"
        );
        std::process::exit(2);
    }
    let secret = std::env::var("CLOCK_CLIENT_SECRET").expect("CLOCK_CLIENT_SECRET");
    let number = |i: usize| -> i64 { args[i].parse().expect("a number") };
    let (step_at, step_by) = (number(4) as u64, number(5));
    let (run, every) = (number(6) as u64, number(7) as u64);
    let source = Logged {
        inner: ClientCredentials::builder(&args[1], &args[2], secret)
            .build()
            .expect("a loopback token URL"),
        start,
    };
    // The defaults, as an application would run it: a 60 s token goes
    // stale at 30 s, refreshed up to 3 s (10 % of that) earlier; a 30 s
    // heartbeat.
    let builder = Builder::new();
    let runtime;
    let (tokens, driver) = match args[0].as_str() {
        "thread" => builder.spawn_thread(source).expect("a thread"),
        "tokio" => {
            runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            builder.spawn(
                freshtoken::runtime::Tokio::new(runtime.handle().clone()),
                source,
            )
        }
        other => panic!("unknown driver {other}"),
    };
    let reads = read_loop(
        &tokens,
        start,
        Path::new(&args[3]),
        Duration::from_millis(step_at),
        step_by,
        Duration::from_millis(run),
        Duration::from_millis(every),
    );
    drop(tokens);
    driver.shutdown_blocking();
    say(&format!("end {} {reads}", ms(start)));
}

/// Reads the token every `every` until `run` has passed, stepping the
/// wall clock once at `step_at`; returns how many reads it made.
fn read_loop(
    tokens: &TokenHandle,
    start: Instant,
    faketime: &Path,
    step_at: Duration,
    step_by: i64,
    run: Duration,
    every: Duration,
) -> u64 {
    let mut reads = 0;
    let mut stepped = false;
    let mut last = None;
    let mut valid = false;
    while start.elapsed() < run {
        if !stepped && start.elapsed() >= step_at {
            stepped = true;
            step(start, faketime, step_by);
        }
        reads += 1;
        match tokens.valid_token() {
            Ok(token) => {
                if !valid && last.is_some() {
                    say(&format!("valid {}", ms(start)));
                }
                valid = true;
                if last != Some(token.id()) {
                    last = Some(token.id());
                    say(&format!("token {}", ms(start)));
                }
            }
            Err(_) => {
                if valid {
                    say(&format!("expired {}", ms(start)));
                }
                valid = false;
            }
        }
        std::thread::sleep(every);
    }
    reads
}

/// Steps this process's wall clock by `by` seconds and says how far it
/// moved against the monotonic clock.
fn step(start: Instant, faketime: &Path, by: i64) {
    let offset = |wall: SystemTime, mono: Instant| -> i128 {
        let wall = match wall.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i128,
            Err(e) => -(e.duration().as_millis() as i128),
        };
        wall - mono.duration_since(start).as_millis() as i128
    };
    let before = offset(SystemTime::now(), Instant::now());
    let text = if by >= 0 {
        format!("+{by}\n")
    } else {
        format!("{by}\n")
    };
    // Written whole, then renamed over: libfaketime never reads half a line.
    let tmp = faketime.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the faketime file");
    std::fs::rename(&tmp, faketime).expect("replace the faketime file");
    let after = offset(SystemTime::now(), Instant::now());
    say(&format!("step {} {}", ms(start), after - before));
}
