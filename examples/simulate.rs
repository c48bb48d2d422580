//! What will a fleet with these settings do to the authority and to the
//! shared cache?
//!
//! Runs one scenario, taken from the command line, through the
//! deterministic fleet simulator (virtual time, no network, no threads) and
//! prints what the authority and the cache saw, what consumers got, and how
//! refresh tokens fared. `--json` prints the same for scripts. The same
//! arguments and seed always give the same report.
//!
//! ```text
//! cargo run --release --example simulate -- --help
//! # 10,000 instances sharing a cache with a lease, hourly tokens, a
//! # 20-minute outage 30 minutes in, restarts every 2 h (1 in 5 a kill):
//! cargo run --release --example simulate -- -n 10000 \
//!     --outage 30m,20m --restarts 2h --kills 20%
//! # The tour of earlier releases (several scenarios side by side):
//! cargo run --release --example simulate -- --tour
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use freshtoken::sim::{
    CacheFaults, CacheMode, Churn, Fault, FaultKind, Report, Scenario, Timeline,
};

/// Simulates a fleet of token refreshers against one authority and one
/// shared cache, in virtual time, and reports the load they put on both.
///
/// Durations are written like `90s`, `20m`, `1h 30m` or `500ms`;
/// probabilities like `1%` or `0.01`.
#[derive(Parser, Debug)]
#[command(name = "simulate", version, about, long_about = None, after_help = AFTER_HELP)]
struct Args {
    /// Instances in the fleet.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    instances: u32,
    /// Virtual time to simulate, in hours.
    #[arg(long, value_name = "H", default_value_t = 24.0, value_parser = positive_hours)]
    hours: f64,
    /// Lifetime of the authority's tokens (`expires_in`).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration)]
    lifetime: Duration,
    /// The shared cache: none (every instance asks the authority), shared
    /// (a shared cache without a lease) or lease (with a lease: one
    /// fetcher at a time).
    #[arg(long, value_enum, default_value_t = Cache::Lease)]
    cache: Cache,
    /// A memory layer in each instance above the shared cache.
    #[arg(long)]
    memory_layer: bool,
    /// Instances start at random moments within this window.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = duration)]
    start_spread: Duration,
    /// Each instance's wall clock is off by up to this much either way.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration)]
    skew: Duration,
    /// Steps each instance's wall clock this many times during the run, to
    /// a new offset within the skew.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(..=10_000))]
    clock_steps: u32,
    /// The authority's round-trip time (each answer varies by ±50 %).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = duration)]
    latency: Duration,
    /// Share of answers that take 5 to 100 times the latency.
    #[arg(long, value_name = "P", default_value = "0", value_parser = probability)]
    latency_tail: f64,
    /// A window of 503 answers: START,LENGTH from the beginning of the run
    /// (repeatable), e.g. `30m,20m`.
    #[arg(long, value_name = "START,LENGTH", value_parser = window)]
    outage: Vec<(Duration, Duration)>,
    /// A window of 429 answers: START,LENGTH[,RETRY_AFTER] (repeatable;
    /// Retry-After 30s unless given), e.g. `6h,10m,30s`.
    #[arg(long, value_name = "START,LENGTH[,RETRY]", value_parser = rate_limit_window)]
    rate_limited: Vec<(Duration, Duration, Duration)>,
    /// Instances stop after this mean uptime (exponential) and restart;
    /// none unless given.
    #[arg(long, value_name = "MEAN_UPTIME", value_parser = positive_duration)]
    restarts: Option<Duration>,
    /// Share of the stops that are kills without warning (with --restarts).
    #[arg(long, value_name = "P", default_value = "0", value_parser = probability)]
    kills: f64,
    /// How long a stopped instance stays down (with --restarts).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    downtime: Duration,
    /// Share of answers lost after the authority acted on the request.
    #[arg(long, value_name = "P", default_value = "0", value_parser = probability)]
    lost_answers: f64,
    /// A refresh-token grant: the authority rotates the refresh token on
    /// every use and revokes the grant when a spent one comes back.
    #[arg(long)]
    refresh_tokens: bool,
    /// Within this long of its rotation a spent refresh token is accepted
    /// (implies --refresh-tokens; 0s: never).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    reuse_interval: Option<Duration>,
    /// Share of shared-cache loads (and lease calls) that fail.
    #[arg(long, value_name = "P", default_value = "0", value_parser = probability)]
    cache_load_failures: f64,
    /// Share of shared-cache stores that fail.
    #[arg(long, value_name = "P", default_value = "0", value_parser = probability)]
    cache_store_failures: f64,
    /// Share of shared-cache calls that hang for a minute.
    #[arg(long, value_name = "P", default_value = "0", value_parser = probability)]
    cache_hangs: f64,
    /// Share of acknowledged stores that the cache loses a moment later.
    #[arg(long, value_name = "P", default_value = "0", value_parser = probability)]
    cache_lost_writes: f64,
    /// The seed: the same arguments and seed give the same report.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Prints the report as JSON.
    #[arg(long)]
    json: bool,
    /// Prints a tour of scenarios side by side instead (ignores the others).
    #[arg(long)]
    tour: bool,
}

const AFTER_HELP: &str = "\
Exits with status 2 if the authority saw a spent refresh token that no
inherent loss explains (a defect of the refresh machine).

On Linux with glibc, the simulator runs itself again with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1, so that its memory is in
transparent huge pages (a large fleet is visited in random order, and with
4 KiB pages nearly every event also missed the TLB: 100,000 instances ran
15 % faster). GLIBC_TUNABLES set to anything, even empty, leaves it alone.

Issue 22's fault model, 100,000 instances:
  simulate -n 100000 --refresh-tokens --reuse-interval 60s --memory-layer \\
    --skew 5m --clock-steps 4 --latency-tail 5% --restarts 2h --kills 20% \\
    --lost-answers 1% --cache-load-failures 1% --cache-store-failures 1% \\
    --cache-hangs 0.1% --cache-lost-writes 0.1% --outage 30m,20m --rate-limited 6h,10m";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Cache {
    None,
    Shared,
    Lease,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (write e.g. 90s, 20m, 1h 30m)"))
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be longer than 0s".to_owned()),
        d => Ok(d),
    }
}

fn probability(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (number, scale) = match s.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (s, 1.0),
    };
    let p = number
        .parse::<f64>()
        .map_err(|_| format!("not a probability: {s:?} (write e.g. 1% or 0.01)"))?
        / scale;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{s} is not between 0 and 100 %"))
    }
}

fn positive_hours(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(h) if h > 0.0 && h <= 24.0 * 365.0 => Ok(h),
        _ => Err(format!(
            "not a number of hours above 0 (up to a year): {s:?}"
        )),
    }
}

fn window(s: &str) -> Result<(Duration, Duration), String> {
    match s.split(',').collect::<Vec<_>>()[..] {
        [start, length] => Ok((duration(start)?, duration(length)?)),
        _ => Err(format!("not START,LENGTH: {s:?} (e.g. 30m,20m)")),
    }
}

fn rate_limit_window(s: &str) -> Result<(Duration, Duration, Duration), String> {
    match s.split(',').collect::<Vec<_>>()[..] {
        [start, length] => Ok((duration(start)?, duration(length)?, Duration::from_secs(30))),
        [start, length, retry] => Ok((duration(start)?, duration(length)?, duration(retry)?)),
        _ => Err(format!(
            "not START,LENGTH[,RETRY_AFTER]: {s:?} (e.g. 6h,10m,30s)"
        )),
    }
}

impl Args {
    fn scenario(&self) -> Scenario {
        let mut s = Scenario::new(self.instances as usize)
            .duration(Duration::from_secs_f64(self.hours * 3600.0))
            .lifetime(self.lifetime)
            .cache(match self.cache {
                Cache::None => CacheMode::None,
                Cache::Shared => CacheMode::Shared,
                Cache::Lease => CacheMode::SharedWithLease,
            })
            .stacks(self.memory_layer)
            .start_spread(self.start_spread)
            .skew(self.skew)
            .clock_steps(self.clock_steps)
            .latency(self.latency)
            .latency_tail(self.latency_tail)
            .lost_answers(self.lost_answers)
            .cache_faults(CacheFaults {
                load_failure: self.cache_load_failures,
                store_failure: self.cache_store_failures,
                hang: self.cache_hangs,
                lost_write: self.cache_lost_writes,
            })
            .seed(self.seed);
        if let Some(uptime) = self.restarts {
            s = s.churn(Churn::new(uptime, self.kills, self.downtime));
        }
        if self.refresh_tokens || self.reuse_interval.is_some() {
            s = s.refresh_tokens(self.reuse_interval.unwrap_or(Duration::ZERO));
        }
        for &(start, length) in &self.outage {
            s = s.fault(Fault::new(FaultKind::Outage, start, length));
        }
        for &(start, length, retry_after) in &self.rate_limited {
            s = s.fault(Fault::new(
                FaultKind::RateLimited { retry_after },
                start,
                length,
            ));
        }
        s
    }
}

fn main() -> ExitCode {
    if let Some(status) = run_with_huge_pages() {
        return status;
    }
    let args = Args::parse();
    if args.tour {
        tour();
        return ExitCode::SUCCESS;
    }
    let scenario = args.scenario();
    let started = Instant::now();
    let report = scenario.run();
    let took = started.elapsed();
    if args.json {
        println!("{:#}", json(&args, &scenario, &report, took));
    } else {
        print_report(&args, &scenario, &report, took);
    }
    if report.refresh_token_reuses > 0 {
        // A spent refresh token that no inherent loss explains: a defect.
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

/// Runs this same command again in a child process whose glibc `malloc`
/// puts its memory in transparent huge pages, and returns its exit status;
/// `None` (run here) when `GLIBC_TUNABLES` is set already (the user's
/// choice, or this is the child) or the child could not be started.
///
/// A fleet's instances are visited in a random order, so at 100,000 of
/// them (about 90 MB) nearly every event missed the processor's TLB as
/// well as its caches: huge pages took 15 % off issue 22's 100,000-instance
/// run. The tunable is read only when a process starts, hence the child;
/// on a kernel whose transparent huge pages are off, it changes nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn run_with_huge_pages() -> Option<ExitCode> {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        .status()
        .ok()?;
    let code = status.code().and_then(|c| u8::try_from(c).ok());
    Some(code.map_or(ExitCode::FAILURE, ExitCode::from))
}

/// Elsewhere: run here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn run_with_huge_pages() -> Option<ExitCode> {
    None
}

/// `1 h 30 min`, `40 min 30 s`, `2.5 s`: the two largest units.
fn human(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 10_000 {
        return format!("{} s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "min"),
        (secs % 60, "s"),
    ];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(2);
    parts[first..(first + 2).min(3)]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1,234,567.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cache_name(mode: Cache) -> &'static str {
    match mode {
        Cache::None => "no shared cache",
        Cache::Shared => "a shared cache without a lease",
        Cache::Lease => "a shared cache with a lease",
    }
}

fn fault_name(f: &Fault) -> String {
    let what = match f.kind() {
        FaultKind::Outage => "outage (503)".to_owned(),
        FaultKind::RateLimited { retry_after } => {
            format!("429s, Retry-After {}", human(retry_after))
        }
        FaultKind::Permanent => "401 invalid_client".to_owned(),
        FaultKind::Hang { held } => format!("answers held {}", human(held)),
    };
    format!("{what} from {} for {}", human(f.start()), human(f.length()))
}

/// One line of the report: a label and its value, aligned.
fn line(label: &str, value: String) {
    println!("  {label:<26} {value}");
}

fn print_report(args: &Args, s: &Scenario, r: &Report, took: Duration) {
    let secs = r.duration.as_secs_f64().max(1e-3);
    println!(
        "{} instances over {}, tokens living {}, {}{}; seed {}",
        thousands(r.instances as u64),
        human(r.duration),
        human(args.lifetime),
        cache_name(args.cache),
        if args.memory_layer {
            " and a memory layer in each"
        } else {
            ""
        },
        args.seed
    );
    println!("Authority");
    line(
        "requests",
        format!(
            "{} ({} failed)",
            thousands(r.authority_requests),
            thousands(r.failed_requests)
        ),
    );
    line(
        "per refresh period",
        format!(
            "{:.2} (a refresh period: {})",
            r.requests_per_period,
            human(r.refresh_period)
        ),
    );
    line(
        "in the busiest second",
        thousands(r.peak_requests_per_second),
    );
    println!("Shared cache");
    line(
        "calls",
        format!(
            "{} (loads {}, stores {}, leases granted {}, found busy {})",
            thousands(r.cache_operations),
            thousands(r.cache_reads),
            thousands(r.cache_writes),
            thousands(r.leases_granted),
            thousands(r.leases_busy)
        ),
    );
    line(
        "per second",
        format!(
            "{:.1} on average, {} in the busiest second",
            r.cache_operations as f64 / secs,
            thousands(r.peak_cache_operations_per_second)
        ),
    );
    if !s.faults().is_empty() {
        println!("During the faults");
        for (k, f) in s.faults().iter().enumerate() {
            let length = f.length().as_secs_f64().max(1e-3);
            let cache = r.cache_operations_during_faults[k];
            println!("  {}:", fault_name(f));
            line(
                "  authority requests",
                thousands(r.requests_during_faults[k]),
            );
            line(
                "  cache calls",
                format!("{} ({:.1}/s)", thousands(cache), cache as f64 / length),
            );
        }
    }
    println!("Consumers");
    line(
        "availability",
        format!(
            "{:.6} % of reads found an unexpired token",
            r.availability * 100.0
        ),
    );
    line("longest without a token", human(r.longest_gap));
    if args.refresh_tokens || args.reuse_interval.is_some() {
        let [killed, lost, cache] = r.inherent_reuses;
        println!("Refresh tokens (a spent one presented again)");
        line("by a defect", thousands(r.refresh_token_reuses));
        line(
            "inherent",
            format!(
                "{} (a kill {killed}, an answer lost {lost}, a write the cache lost {cache}; losses that could have caused one: {})",
                killed + lost + cache,
                r.inherent_losses
            ),
        );
        line(
            "within the reuse interval",
            format!("{} (accepted)", thousands(r.grace_reuses)),
        );
        line(
            "grant revoked",
            (if r.grant_revoked { "yes" } else { "no" }).to_owned(),
        );
    }
    if r.shutdowns + r.kills > 0 {
        println!("Restarts");
        line(
            "stops",
            format!(
                "{} graceful, {} kills; {} restarts",
                thousands(r.shutdowns),
                thousands(r.kills),
                thousands(r.restarts)
            ),
        );
    }
    println!("At the end");
    line(
        "running",
        format!(
            "{}, {} with a valid token, {} failed",
            thousands(r.alive_at_end as u64),
            thousands(r.valid_at_end as u64),
            thousands(r.failed_at_end as u64)
        ),
    );
    println!(
        "({} events simulated in {:.2} s)",
        thousands(r.events),
        took.as_secs_f64()
    );
}

fn json(args: &Args, s: &Scenario, r: &Report, took: Duration) -> serde_json::Value {
    let secs = r.duration.as_secs_f64().max(1e-3);
    let faults: Vec<_> = s
        .faults()
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let (kind, retry_after) = match f.kind() {
                FaultKind::Outage => ("outage", None),
                FaultKind::RateLimited { retry_after } => {
                    ("rate_limited", Some(retry_after.as_secs_f64()))
                }
                FaultKind::Permanent => ("permanent", None),
                FaultKind::Hang { .. } => ("hang", None),
            };
            serde_json::json!({
                "kind": kind,
                "start_secs": f.start().as_secs_f64(),
                "length_secs": f.length().as_secs_f64(),
                "retry_after_secs": retry_after,
                "authority_requests": r.requests_during_faults[k],
                "cache_operations": r.cache_operations_during_faults[k],
            })
        })
        .collect();
    serde_json::json!({
        "scenario": {
            "instances": r.instances,
            "hours": args.hours,
            "lifetime_secs": args.lifetime.as_secs_f64(),
            "cache": format!("{:?}", args.cache).to_lowercase(),
            "memory_layer": args.memory_layer,
            "seed": args.seed,
        },
        "authority": {
            "requests": r.authority_requests,
            "failed": r.failed_requests,
            "refresh_period_secs": r.refresh_period.as_secs_f64(),
            "requests_per_period": r.requests_per_period,
            "peak_requests_per_second": r.peak_requests_per_second,
        },
        "cache": {
            "operations": r.cache_operations,
            "loads": r.cache_reads,
            "stores": r.cache_writes,
            "leases_granted": r.leases_granted,
            "leases_busy": r.leases_busy,
            "operations_per_second": r.cache_operations as f64 / secs,
            "peak_operations_per_second": r.peak_cache_operations_per_second,
        },
        "faults": faults,
        "availability": r.availability,
        "longest_gap_secs": r.longest_gap.as_secs_f64(),
        "refresh_tokens": {
            "reuses_by_defect": r.refresh_token_reuses,
            "inherent_reuses": {
                "killed": r.inherent_reuses[0],
                "lost_answer": r.inherent_reuses[1],
                "cache_lost_write": r.inherent_reuses[2],
            },
            "accepted_within_reuse_interval": r.grace_reuses,
            "inherent_losses": r.inherent_losses,
            "grant_revoked": r.grant_revoked,
        },
        "restarts": {
            "shutdowns": r.shutdowns,
            "kills": r.kills,
            "restarts": r.restarts,
        },
        "at_end": {
            "running": r.alive_at_end,
            "valid": r.valid_at_end,
            "failed": r.failed_at_end,
        },
        "late_answers": r.late_answers,
        "events": r.events,
        "wall_secs": took.as_secs_f64(),
    })
}

const MINUTE: Duration = Duration::from_secs(60);
/// Faults start 40 minutes in: hourly tokens fetched at the start go stale
/// at 45 minutes and are renewed from 40.5 minutes on (jitter), so the first
/// renewal of every instance falls inside the fault.
const OUTAGE_AT: Duration = Duration::from_secs(40 * 60);

/// Several scenarios side by side: authority requests, requests per
/// refresh period, availability, the longest time an instance went without
/// a token, and for refresh-token fleets how often the authority saw a
/// spent refresh token (defects, and inherent ones in parentheses).
fn tour() {
    let scenarios: Vec<(&str, Scenario)> = vec![
        ("1 instance, 24 h steady", Scenario::new(1)),
        (
            "1 instance, 10-min outage",
            Scenario::new(1).fault(Fault::new(FaultKind::Outage, OUTAGE_AT, 10 * MINUTE)),
        ),
        (
            "5,000 instances, shared cache, no lease",
            Scenario::new(5_000)
                .cache(CacheMode::Shared)
                .start_spread(MINUTE),
        ),
        (
            "5,000 instances, shared cache + lease",
            Scenario::new(5_000)
                .cache(CacheMode::SharedWithLease)
                .start_spread(MINUTE),
        ),
        (
            "5,000 instances, no cache",
            Scenario::new(5_000).start_spread(MINUTE),
        ),
        (
            "500 instances + lease, 10-min 429 storm (Retry-After 30 s)",
            Scenario::new(500)
                .cache(CacheMode::SharedWithLease)
                .start_spread(MINUTE)
                .fault(Fault::new(
                    FaultKind::RateLimited {
                        retry_after: Duration::from_secs(30),
                    },
                    OUTAGE_AT,
                    10 * MINUTE,
                )),
        ),
        (
            "500 instances, no cache, 10-min 429 storm (Retry-After 30 s)",
            Scenario::new(500).start_spread(MINUTE).fault(Fault::new(
                FaultKind::RateLimited {
                    retry_after: Duration::from_secs(30),
                },
                OUTAGE_AT,
                10 * MINUTE,
            )),
        ),
        (
            "5,000 refresh-token instances: stacks, skew ±5 min, 20-min outage",
            refresh_token_fleet(),
        ),
        (
            "  the same, 1 in 5 stops a kill, 1 % of answers lost",
            refresh_token_fleet()
                .churn(Churn::new(2 * 60 * MINUTE, 0.2, Duration::from_secs(5)))
                .lost_answers(0.01),
        ),
        (
            "10,000 instances + lease, 24 h (speed check)",
            Scenario::new(10_000)
                .cache(CacheMode::SharedWithLease)
                .start_spread(MINUTE),
        ),
    ];

    println!(
        "{:<62} {:>9} {:>9} {:>10} {:>12} {:>11} {:>13} {:>9}",
        "scenario",
        "requests",
        "failed",
        "req/period",
        "availability",
        "longest gap",
        "reuses (inh.)",
        "wall"
    );
    for (name, scenario) in scenarios {
        let started = Instant::now();
        let report = scenario.run();
        print_row(name, &report, started.elapsed());
    }
    println!(
        "\nrefresh period = fresh period less the largest jitter (hourly tokens: {:?});",
        Scenario::new(1).refresh_period()
    );
    println!("availability = share of consumer reads that found an unexpired token.");
    fleet_through_faults();
}

/// Issue 10's scenarios (a fleet through faults and odd authorities), with
/// the figures the issue measured with real processes before the fixes.
fn fleet_through_faults() {
    println!("\nA fleet through faults and odd authorities (8 instances, shared cache + lease, 20 s tokens):");
    let eight = |seed| {
        Scenario::new(8)
            .lifetime(Duration::from_secs(20))
            .cache(CacheMode::SharedWithLease)
            .seed(seed)
    };
    let secs = Duration::from_secs;

    // Items 1 and 3: a 503 outage from 10 s to 45 s.
    for seed in 0..3 {
        let s =
            eight(seed)
                .duration(secs(60))
                .fault(Fault::new(FaultKind::Outage, secs(10), secs(35)));
        let mut t = Timeline::default();
        s.run_observed(&mut t);
        let (from, to) = (s.start_time() + secs(10), s.start_time() + secs(45));
        let alone = {
            let s = Scenario::new(1)
                .lifetime(secs(20))
                .duration(secs(60))
                .seed(seed)
                .fault(Fault::new(FaultKind::Outage, secs(10), secs(35)));
            let mut t = Timeline::default();
            s.run_observed(&mut t);
            t.fetches_within(from, to)
        };
        println!(
            "  outage 10-45 s, seed {seed}: {} requests during it (one instance alone: {alone}; before: 55), every instance fresh {:.2} s after the recovery (before: 4.1-7.8 s)",
            t.fetches_within(from, to),
            t.all_fresh_after(to).unwrap_or(Duration::MAX).as_secs_f64()
        );
    }

    // Item 2: a herd start.
    let s = eight(1)
        .lifetime(secs(3600))
        .start_spread(Duration::ZERO)
        .duration(secs(10));
    let mut t = Timeline::default();
    let r = s.run_observed(&mut t);
    let stored = t.stores()[0];
    let worst = t
        .first_valid_after(s.start_time())
        .into_iter()
        .filter_map(|(_, at)| at)
        .map(|at| at.saturating_duration_since(stored))
        .max()
        .unwrap_or_default();
    println!(
        "  herd start: {} authority request(s), every follower within {} ms of the leader's store (before: 276-728 ms); {} cache reads",
        r.authority_requests,
        worst.as_millis(),
        r.cache_reads
    );

    // Item 4: expires_in: 0.
    for (n, mode) in [(1, CacheMode::None), (8, CacheMode::SharedWithLease)] {
        let r = Scenario::new(n)
            .lifetime(secs(3600))
            .advertised_expires_in(0)
            .cache(mode)
            .duration(secs(40))
            .run();
        println!(
            "  expires_in 0, {n} instance(s): {} requests in 40 s (before: 95 from one instance), availability {:.2} %",
            r.authority_requests,
            r.availability * 100.0
        );
    }

    // Item 5: a hang of 25 s over the first renewal, then a long one.
    for (from, len, held) in [(secs(5), secs(9), secs(25)), (secs(5), secs(28), secs(60))] {
        let r = eight(2)
            .duration(secs(60))
            .fault(Fault::new(FaultKind::Hang { held }, from, len))
            .run();
        println!(
            "  requests held {} s from {} s to {} s: {} requests, longest without a token {:.1} s, availability {:.2} % (before, a 25 s hold: the token expired 11-12 s into it)",
            held.as_secs(),
            from.as_secs(),
            (from + len).as_secs(),
            r.authority_requests,
            r.longest_gap.as_secs_f64(),
            r.availability * 100.0
        );
    }

    // Item 6: Retry-After 999999 s.
    let r = eight(3)
        .duration(secs(90))
        .fault(Fault::new(
            FaultKind::RateLimited {
                retry_after: secs(999_999),
            },
            secs(8),
            secs(27),
        ))
        .run();
    println!(
        "  429 with Retry-After 999999 s from 8 s to 35 s: {} requests, longest without a token {:.1} s (bounded by the 30 s cap past expiry; before: the 1 h cap)",
        r.authority_requests,
        r.longest_gap.as_secs_f64()
    );
}

/// 5,000 serverless-style instances sharing one refresh-token grant through
/// Redis with a lease, each with a memory layer above it, clocks up to five
/// minutes off (so the first renewals come up to five minutes early), a
/// 20-minute outage over them, 5 % of answers 5 to 100 times slower, and
/// every instance shut down (gracefully) and restarted every two hours on
/// average.
fn refresh_token_fleet() -> Scenario {
    Scenario::new(5_000)
        .refresh_tokens(Duration::ZERO)
        .cache(CacheMode::SharedWithLease)
        .stacks(true)
        .skew(5 * MINUTE)
        .latency_tail(0.05)
        .churn(Churn::new(2 * 60 * MINUTE, 0.0, Duration::from_secs(5)))
        .start_spread(MINUTE)
        .fault(Fault::new(FaultKind::Outage, 30 * MINUTE, 20 * MINUTE))
}

fn print_row(name: &str, r: &Report, wall: Duration) {
    let reuses = if r.all_reuses() + r.grace_reuses == 0 && r.kills == 0 && r.shutdowns == 0 {
        "-".to_owned()
    } else {
        let inherent: u64 = r.inherent_reuses.iter().sum();
        format!("{} ({inherent})", r.refresh_token_reuses)
    };
    println!(
        "{:<62} {:>9} {:>9} {:>10.3} {:>11.6}% {:>10.1}s {:>13} {:>8.2}s",
        name,
        r.authority_requests,
        r.failed_requests,
        r.requests_per_period,
        r.availability * 100.0,
        r.longest_gap.as_secs_f64(),
        reuses,
        wall.as_secs_f64()
    );
}
