//! The first five minutes with freshtoken.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With no flags it starts a local OAuth2 authority on 127.0.0.1 that issues
//! 10-second tokens, spawns a refresher (a plain thread) that shares its token
//! through a file cache in a temporary folder, and shows a live status line
//! for 40 seconds: the token's id (a fingerprint, never the token), whether
//! it is fresh, stale or expired, seconds to stale and to expiry, how many
//! tokens were fetched, and the last error. Halfway through, the authority
//! goes down for 15 seconds: the old token stays valid for the rest of its
//! life, the retries back off (capped at 4 s here, 15 s by default), the
//! token expires because the outage outlasts it, and the first retry after
//! the outage brings a fresh one. A summary ends the run.
//!
//! Point it at a real authority instead:
//!
//! ```text
//! FRESHTOKEN_CLIENT_SECRET=... cargo run --example quickstart -- \
//!     --token-url https://login.example.com/oauth2/token --client-id my-app \
//!     --audience https://api.example.com --scope read --cache-file ./token.json \
//!     --seconds 120
//! ```
//!
//! Flags: `--token-url`, `--client-id`, `--client-secret-env VAR` (default
//! `FRESHTOKEN_CLIENT_SECRET`), `--audience`, `--scope`, `--cache-file`,
//! `--seconds` (default 40), and for the local authority `--lifetime`
//! (default 10) and `--outage` (length in seconds, default 15; 0 for none).
//! It exits with a message and a non-zero status when no first token can be
//! had (authority unreachable, wrong secret) or the cache folder is not
//! writable; it never prints a secret.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use freshtoken::cache::FileCache;
use freshtoken::driver::Builder;
use freshtoken::handle::{RefreshState, Snapshot};
use freshtoken::oauth2::ClientCredentials;
use freshtoken::policy::Backoff;
use freshtoken::testing::{Fault, FaultWindow, LocalAuthority};
use freshtoken::{Clock, FetchErrorKind, SystemClock, TokenHandle, TokenStatus};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("quickstart: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    token_url: Option<String>,
    client_id: String,
    secret_env: String,
    audience: Option<String>,
    scope: Option<String>,
    cache_file: Option<PathBuf>,
    seconds: u64,
    lifetime: u64,
    outage: u64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        token_url: None,
        client_id: "quickstart".into(),
        secret_env: "FRESHTOKEN_CLIENT_SECRET".into(),
        audience: None,
        scope: None,
        cache_file: None,
        seconds: 40,
        lifetime: 10,
        outage: 15,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("see the top of examples/quickstart.rs for the flags");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--token-url" => o.token_url = Some(value.clone()),
            "--client-id" => o.client_id = value.clone(),
            "--client-secret-env" => o.secret_env = value.clone(),
            "--audience" => o.audience = Some(value.clone()),
            "--scope" => o.scope = Some(value.clone()),
            "--cache-file" => o.cache_file = Some(PathBuf::from(&value)),
            "--seconds" => o.seconds = number()?,
            "--lifetime" => o.lifetime = number()?.max(2),
            "--outage" => o.outage = number()?,
            _ => return Err(format!("unknown flag {flag} (see --help)")),
        }
    }
    Ok(o)
}

fn run() -> Result<(), String> {
    let o = options()?;
    let secret_from_env = std::env::var(&o.secret_env).ok();

    // The authority: a real one, or a local one with short tokens.
    let local = match &o.token_url {
        Some(_) => None,
        None => {
            let secret = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            let authority = LocalAuthority::builder()
                .client(o.client_id.clone(), secret)
                .token_lifetime(Duration::from_secs(o.lifetime))
                .start()
                .map_err(|e| format!("could not start the local authority: {e}"))?;
            println!(
                "local authority at {} issuing {} s tokens",
                authority.token_url(),
                o.lifetime
            );
            Some(authority)
        }
    };
    let mut source = match (&local, &o.token_url) {
        // A secret in the environment overrides the local one (to try a wrong one).
        (Some(a), _) => match &secret_from_env {
            Some(s) => a.client_credentials(&o.client_id).client_secret(s.as_str()),
            None => a.client_credentials(&o.client_id),
        },
        (None, Some(url)) => {
            let secret = secret_from_env
                .ok_or_else(|| format!("set the client secret in ${}", o.secret_env))?;
            ClientCredentials::builder(url.clone(), o.client_id.clone(), secret)
        }
        (None, None) => unreachable!("no token URL means a local authority"),
    };
    if let Some(a) = &o.audience {
        source = source.audience(a.clone());
    }
    if let Some(s) = &o.scope {
        source = source.scope(s.clone());
    }
    let source = source
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("bad token URL: {e}"))?;

    // The cache: checked up front, so a read-only folder is an error now
    // rather than a warning per refresh.
    let tmp = tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
    let cache_file = o
        .cache_file
        .clone()
        .unwrap_or_else(|| tmp.path().join("token.json"));
    check_writable(&cache_file)?;
    println!("token cache: {}", cache_file.display());

    let (tokens, driver) = Builder::new()
        .cache(FileCache::new(&cache_file))
        .heartbeat(Duration::from_secs(1))
        .fetch_timeout(Duration::from_secs(5))
        // The default cap is 15 s; a 4 s cap shows the curve within a demo.
        .backoff(Backoff::new(
            Duration::from_millis(100),
            2,
            Duration::from_secs(4),
        ))
        .spawn_thread(source)
        .map_err(|e| format!("could not start the refresher: {e}"))?;

    first_token(&tokens)?;
    let started = Instant::now();
    let outage = match (&local, o.outage) {
        (Some(a), secs) if secs > 0 => {
            let from = SystemClock.now() + Duration::from_secs(o.seconds / 2);
            let until = from + Duration::from_secs(secs);
            a.add_fault(
                Fault::Unavailable { retry_after: None },
                FaultWindow::Between { from, until },
            );
            println!(
                "the authority will be down from t={}s to t={}s",
                o.seconds / 2,
                o.seconds / 2 + secs
            );
            Some((o.seconds / 2, o.seconds / 2 + secs))
        }
        _ => None,
    };

    let live = std::io::stdout().is_terminal();
    let tick = if live {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut shown = tokens.snapshot();
    let (mut without_token, mut max_attempt) = (Duration::ZERO, 0);
    let (mut last_sample, mut was_valid) = (Instant::now(), true);
    while started.elapsed() < Duration::from_secs(o.seconds) {
        let snap = tokens.snapshot();
        let now = SystemClock.now();
        let valid = tokens.valid_token().is_ok();
        let expired = (was_valid && !valid).then(|| {
            "the token expired; nothing valid to serve until the authority answers".to_owned()
        });
        for event in [event(&shown, &snap), expired].into_iter().flatten() {
            if live {
                print!("\r\x1b[2K");
            }
            println!("{:>5.1}s  {event}", started.elapsed().as_secs_f64());
        }
        if let RefreshState::Retrying { attempt, .. } = snap.state {
            max_attempt = max_attempt.max(attempt);
        }
        if !valid {
            without_token += last_sample.elapsed();
        }
        (last_sample, was_valid) = (Instant::now(), valid);
        let down = outage.is_some_and(|(a, b)| (a..b).contains(&started.elapsed().as_secs()));
        let line = status_line(&snap, now, started.elapsed(), down);
        if live {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
        shown = snap;
        let _ = tokens.wait_changed(tick);
        std::thread::sleep(
            tick.saturating_sub(Duration::from_millis(1))
                .min(Duration::from_millis(50)),
        );
    }
    if live {
        println!();
    }
    let fetched = tokens.snapshot().fetches;
    driver.shutdown_blocking();

    println!("\nsummary after {} s:", o.seconds);
    println!("  tokens fetched:            {fetched}");
    if let Some(a) = &local {
        let failed = a.requests().iter().filter(|r| r.fault.is_some()).count();
        println!(
            "  authority requests:        {} ({failed} answered by the outage)",
            a.request_count()
        );
    }
    println!("  most consecutive failures: {max_attempt}");
    println!(
        "  time without a valid token: about {:.1} s{}",
        without_token.as_secs_f64(),
        if without_token.is_zero() {
            ""
        } else {
            " (the outage outlasted the token)"
        }
    );
    Ok(())
}

/// Fails fast when the cache's folder cannot be written.
fn check_writable(cache_file: &std::path::Path) -> Result<(), String> {
    let dir = match cache_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .and_then(|()| tempfile::NamedTempFile::new_in(&dir).map(drop))
        .map_err(|e| format!("the cache folder {} is not writable: {e}", dir.display()))
}

/// Waits for the first token; gives up at once on a permanent error.
fn first_token(tokens: &TokenHandle) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokens.valid_token().is_ok() {
            return Ok(());
        }
        let error = tokens.status().last_error().cloned();
        match &error {
            Some(e)
                if matches!(
                    e.kind(),
                    FetchErrorKind::Permanent | FetchErrorKind::GrantRevoked
                ) =>
            {
                return Err(format!("the authority refused the credentials: {e}"));
            }
            _ if Instant::now() >= deadline => {
                let why = error.map_or("no answer".to_owned(), |e| e.to_string());
                return Err(format!("no token after 10 s: {why}"));
            }
            _ => {
                let _ = tokens.wait_changed(Duration::from_millis(200));
            }
        }
    }
}

/// What changed between two snapshots, as a line of the story.
fn event(before: &Snapshot, after: &Snapshot) -> Option<String> {
    let id = |s: &Snapshot| s.token.as_ref().map(|t| t.id());
    if id(before) != id(after) {
        let t = after.token.as_ref()?;
        let fresh = t.stale_at().saturating_duration_since(t.issued_at());
        return Some(format!(
            "new token {} (fresh for {:.1} s, valid for {:.1} s)",
            short(t.id()),
            fresh.as_secs_f64(),
            t.lifetime().as_secs_f64()
        ));
    }
    if before.state == after.state {
        return None;
    }
    match &after.state {
        RefreshState::Retrying {
            error,
            attempt,
            next_attempt,
        } => Some(format!(
            "fetch failed (attempt {attempt}): {error}; next try in {:.1} s",
            next_attempt
                .saturating_duration_since(after.published_at)
                .as_secs_f64()
        )),
        RefreshState::Failed { error } => Some(format!("renewal failed for good: {error}")),
        _ => None,
    }
}

fn status_line(s: &Snapshot, now: freshtoken::Timestamp, elapsed: Duration, down: bool) -> String {
    let secs = |t: freshtoken::Timestamp| t.signed_millis_since(now) as f64 / 1000.0;
    let token = match &s.token {
        Some(t) => {
            let status = t.status(now);
            let stale = match status {
                TokenStatus::Fresh => format!("stale in {:>4.1}s", secs(t.stale_at())),
                _ => "stale         ".to_owned(),
            };
            format!(
                "token {}  {:<7}  {stale}  expires in {:>5.1}s",
                short(t.id()),
                status.to_string(),
                secs(t.expires_at())
            )
        }
        None => "no token".to_owned(),
    };
    let error = s
        .state
        .last_error()
        .map_or(String::new(), |e| format!("  last error: {e}"));
    format!(
        "t={:>4.1}s  {token}  fetched {}  authority {}{error}",
        elapsed.as_secs_f64(),
        s.fetches,
        if down { "DOWN" } else { "up  " }
    )
}

fn short(id: freshtoken::TokenId) -> String {
    id.to_string()[..8].to_owned()
}
