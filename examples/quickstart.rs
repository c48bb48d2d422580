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
//! `--help` lists the flags and their defaults: `--token-url`,
//! `--client-id`, `--client-secret-env VAR` (default
//! `FRESHTOKEN_CLIENT_SECRET`), `--auth post|basic` (how the secret is sent;
//! default basic), `--audience`, `--scope`, `--cache-file`, `--seconds`
//! (default 40), and for the local authority `--lifetime` (default 10) and
//! `--outage` (length in seconds, default 15; 0 for none). `RUST_LOG`
//! (`RUST_LOG=freshtoken=debug`) shows the driver's log on stderr.
//!
//! The live line fits the terminal's width (measured, else `COLUMNS`,
//! else 80), whole fields at a time, most telling first (at 80 columns:
//! time, token, expiry, staleness, fetches and the last error's status),
//! and is redrawn in place; a legend explains its columns. Event lines
//! (every token, every failure in full) wrap at word boundaries instead of
//! running past the edge. Without a terminal (a pipe, CI) it prints one
//! line per second instead.
//!
//! It exits with a message and a non-zero status when no first token can be
//! had (authority unreachable, wrong secret) or the cache folder is not
//! writable; it never prints a secret. A cache that stops being writable
//! later shows in the live line and the summary (`cache NOT WRITTEN`).

#[path = "support/mod.rs"]
mod support;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use freshtoken::cache::FileCache;
use freshtoken::driver::Builder;
use freshtoken::handle::{RefreshState, Snapshot};
use freshtoken::oauth2::{ClientAuth, ClientCredentials};
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

/// How the client secret is sent to the token endpoint.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Auth {
    /// HTTP Basic (client_secret_basic)
    Basic,
    /// In the form body (client_secret_post)
    Post,
}

/// The first five minutes with freshtoken: a refresher, a file cache and a
/// live status line, against a local authority (with an outage) or yours.
#[derive(clap::Parser)]
#[command(about, long_about = None)]
struct Options {
    /// Use this token endpoint instead of starting a local authority
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// The client id
    #[arg(long, default_value = "quickstart", value_name = "ID")]
    client_id: String,
    /// The environment variable that holds the client secret (with a local
    /// authority, a secret set there replaces the right one: to try a wrong one)
    #[arg(
        long = "client-secret-env",
        default_value = "FRESHTOKEN_CLIENT_SECRET",
        value_name = "VAR"
    )]
    secret_env: String,
    /// How the client secret is sent
    #[arg(long, value_enum, default_value_t = Auth::Basic)]
    auth: Auth,
    /// The `audience` parameter, for authorities that want one (Auth0, Okta)
    #[arg(long)]
    audience: Option<String>,
    /// The `scope` parameter
    #[arg(long)]
    scope: Option<String>,
    /// The token cache file [default: token.json in a new temporary folder]
    #[arg(long, value_name = "PATH")]
    cache_file: Option<PathBuf>,
    /// How long to run, in seconds
    #[arg(long, default_value_t = 40, value_name = "N")]
    seconds: u64,
    /// Local authority only: the tokens' lifetime in seconds (at least 2)
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    lifetime: u64,
    /// Local authority only: how long it is down, from halfway through, in seconds (0: never)
    #[arg(long, default_value_t = 15, value_name = "N")]
    outage: u64,
}

fn run() -> Result<(), String> {
    let o: Options = support::cli();
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
    source = source.client_auth(match o.auth {
        Auth::Basic => ClientAuth::Basic,
        Auth::Post => ClientAuth::Post,
    });
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
    let cache = FileCache::new(&cache_file);

    let (tokens, driver) = Builder::new()
        .cache(cache)
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
                "the authority will be down from t={}s to t={}s\n  ({} to {})",
                o.seconds / 2,
                o.seconds / 2 + secs,
                rfc3339(from),
                rfc3339(until)
            );
            Some((from, until))
        }
        _ => None,
    };

    let live = std::io::stdout().is_terminal();
    let tick = if live {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    println!("{}", legend(local.is_some()));
    let mut shown = tokens.snapshot();
    let mut out = Screen::new(live);
    // The first token arrived before the loop: its line, as for any other.
    if let Some(t) = &shown.token {
        out.event(&format!("{:>5.1}s  {}", 0.0, new_token(t)));
    }
    let mut gaps = Gaps::default();
    gaps.saw(&shown);
    let mut max_attempt = 0;
    let mut cache_said: Option<String> = None;
    while started.elapsed() < Duration::from_secs(o.seconds) {
        let snap = tokens.snapshot();
        let now = SystemClock.now();
        let mut events: Vec<String> = event(&shown, &snap).into_iter().collect();
        if let Some(expired_at) = gaps.saw(&snap).or_else(|| gaps.expired_by(now)) {
            events.push(format!(
                "the token expired at {}; nothing valid to serve until the authority answers",
                rfc3339(expired_at)
            ));
        }
        for event in events {
            out.event(&format!(
                "{:>5.1}s  {event}",
                started.elapsed().as_secs_f64()
            ));
        }
        // A cache that stops taking tokens: said once, when it starts.
        // The snapshot says so: no log needed.
        let cache_error = snap.store_error.as_ref().map(|e| e.to_string());
        if cache_error.is_some() && cache_error != cache_said {
            out.event(&format!(
                "{:>5.1}s  the cache could not store the token: {}",
                started.elapsed().as_secs_f64(),
                cache_error.as_deref().unwrap_or_default()
            ));
        }
        cache_said = cache_error;
        if let RefreshState::Retrying { attempt, .. } = snap.state {
            max_attempt = max_attempt.max(attempt);
        }
        let down = outage.map(|(from, until)| (from..until).contains(&now));
        out.status(&status_line(&snap, now, started.elapsed(), down));
        shown = snap;
        let _ = tokens.wait_changed(tick);
        std::thread::sleep(
            tick.saturating_sub(Duration::from_millis(1))
                .min(Duration::from_millis(50)),
        );
    }
    out.finish();
    let end = SystemClock.now();
    let fetched = tokens.snapshot().tokens_fetched;
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
    let without = gaps.total(end);
    println!(
        "  time without a valid token: {:.1} s{}",
        without.as_secs_f64(),
        match gaps.longest(end) {
            Some((expired, back)) => format!(
                "\n    (longest from {}\n     to {}: the outage outlasted the token)",
                rfc3339_millis(expired),
                back.map_or("the end of the run".to_owned(), rfc3339_millis)
            ),
            None => String::new(),
        }
    );
    println!(
        "  cache:                     {}",
        support::describe_cache(&tokens.snapshot())
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
                return Err(format!(
                    "no token after 10 s: {why} (is the authority reachable?)"
                ));
            }
            _ => {
                let _ = tokens.wait_changed(Duration::from_millis(200));
            }
        }
    }
}

/// The stretches without a valid token, from the tokens' own expiry times
/// and the moments the next token was published (not from the 1 s samples
/// of the status line).
#[derive(Default)]
struct Gaps {
    /// The expiry of the token being served, and whether it was reported.
    current: Option<(freshtoken::TokenId, freshtoken::Timestamp, bool)>,
    /// Closed gaps: (expired at, valid again at).
    closed: Vec<(freshtoken::Timestamp, freshtoken::Timestamp)>,
}

impl Gaps {
    /// Takes in a snapshot; returns the expiry of the previous token if a
    /// new one arrived after it expired and that was not reported yet.
    fn saw(&mut self, snap: &Snapshot) -> Option<freshtoken::Timestamp> {
        let token = snap.token.as_ref()?;
        let mut unreported = None;
        match self.current {
            Some((id, _, _)) if id == token.id() => return None,
            // Published after the old one expired: a gap.
            Some((_, expired_at, reported)) if snap.published_at > expired_at => {
                self.closed.push((expired_at, snap.published_at));
                if !reported {
                    unreported = Some(expired_at);
                }
            }
            _ => {}
        }
        self.current = Some((token.id(), token.expires_at(), false));
        unreported
    }

    /// The expiry of the current token, once, when `now` passes it.
    fn expired_by(&mut self, now: freshtoken::Timestamp) -> Option<freshtoken::Timestamp> {
        match &mut self.current {
            Some((_, at, reported)) if !*reported && now >= *at => {
                *reported = true;
                Some(*at)
            }
            _ => None,
        }
    }

    fn all(
        &self,
        end: freshtoken::Timestamp,
    ) -> Vec<(freshtoken::Timestamp, Option<freshtoken::Timestamp>)> {
        let mut all: Vec<_> = self.closed.iter().map(|&(a, b)| (a, Some(b))).collect();
        if let Some((_, at, _)) = self.current {
            if end > at {
                all.push((at, None));
            }
        }
        all
    }

    fn total(&self, end: freshtoken::Timestamp) -> Duration {
        self.all(end)
            .iter()
            .map(|&(a, b)| b.unwrap_or(end).saturating_duration_since(a))
            .sum()
    }

    fn longest(
        &self,
        end: freshtoken::Timestamp,
    ) -> Option<(freshtoken::Timestamp, Option<freshtoken::Timestamp>)> {
        self.all(end)
            .into_iter()
            .max_by_key(|&(a, b)| b.unwrap_or(end).saturating_duration_since(a))
    }
}

/// The terminal: a status line redrawn in place (cut to the width, so it
/// never wraps into a new row), event lines printed above it; or, without
/// a terminal, plain lines.
struct Screen {
    live: bool,
    drawn: bool,
}

impl Screen {
    fn new(live: bool) -> Self {
        Screen { live, drawn: false }
    }

    /// The width to fit: the terminal's, else `COLUMNS`, else 80.
    fn width() -> usize {
        terminal_size::terminal_size_of(std::io::stdout())
            .map(|(w, _)| usize::from(w.0))
            .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
            .filter(|w| *w > 0)
            .unwrap_or(80)
    }

    /// An event line, wrapped at word boundaries to one column short of
    /// the width (never cut: it holds the error in full), its continuation
    /// rows indented past the time column.
    fn event(&mut self, line: &str) {
        let mut stdout = std::io::stdout().lock();
        if self.live && self.drawn {
            // Back to the start of the status row and clear it.
            let _ = write!(stdout, "\r\x1b[K");
            self.drawn = false;
        }
        for row in wrap(line, Self::width().saturating_sub(1), TIME_COLUMN) {
            let _ = writeln!(stdout, "{row}");
        }
    }

    fn status(&mut self, line: &str) {
        let mut stdout = std::io::stdout().lock();
        if self.live {
            // One column short of the width: a full row would make some
            // terminals wrap the cursor onto a new row.
            let fitted = fit(line, Self::width().saturating_sub(1));
            debug_assert!(fitted.chars().count() < Self::width());
            let _ = write!(stdout, "\r{fitted}\x1b[K");
            let _ = stdout.flush();
            self.drawn = true;
        } else {
            let _ = writeln!(stdout, "{line}");
        }
    }

    fn finish(&mut self) {
        if self.live && self.drawn {
            println!();
        }
    }
}

/// How far an event line's continuation rows are indented: past the
/// `{:>5.1}s  ` time column.
const TIME_COLUMN: usize = 8;

/// The live line's fields (separated by two spaces) that fit in `width`
/// characters, whole, in order; `…` says that fields were left out. A
/// field too long for the width alone is cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out = String::new();
    for field in s.split("  ") {
        let sep = if out.is_empty() { 0 } else { 2 };
        // Room for the field and, after it, "  …".
        if out.chars().count() + sep + field.chars().count() + 3 > width {
            break;
        }
        if sep > 0 {
            out.push_str("  ");
        }
        out.push_str(field);
    }
    if out.is_empty() {
        out = s.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        return out;
    }
    out.push_str("  …");
    out
}

/// `line` broken at spaces into rows of at most `width` characters, the
/// rows after the first indented by `indent` spaces (the first keeps its
/// own leading spaces); a word longer than a row is broken where the row
/// ends.
fn wrap(line: &str, width: usize, indent: usize) -> Vec<String> {
    let width = width.max(indent + 20);
    let text = line.trim_start_matches(' ');
    let lead = line.len() - text.len();
    let mut rows = Vec::new();
    let mut row = " ".repeat(lead);
    // Where the current row's text starts, and its length so far.
    let (mut start, mut len) = (lead, lead);
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let sep = usize::from(len > start);
            if len + sep + word.len() <= width {
                if sep == 1 {
                    row.push(' ');
                }
                row.extend(word.iter());
                len += sep + word.len();
                break;
            }
            if len == start {
                // A word longer than a whole row: as much as fits.
                let take = width - len;
                row.extend(word.drain(..take));
            }
            rows.push(std::mem::replace(&mut row, " ".repeat(indent)));
            (start, len) = (indent, indent);
        }
    }
    rows.push(row);
    rows
}

fn legend(local: bool) -> String {
    let authority = if local {
        "local authority up/DOWN, "
    } else {
        ""
    };
    format!(
        "live line: seconds since start; the token's id (a fingerprint, never the\n  \
         token); when it expires and turns stale; tokens fetched; the last error\n  \
         (in full above it); {authority}cache ok/NOT WRITTEN"
    )
}

/// A wall-clock instant in RFC 3339, to the second, UTC.
fn rfc3339(t: freshtoken::Timestamp) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(t.as_millis());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The same to the millisecond, for the gaps' ends.
fn rfc3339_millis(t: freshtoken::Timestamp) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(t.as_millis());
    humantime::format_rfc3339_millis(t).to_string()
}

/// "in 4.9 s" or "4.9 s ago".
fn relative(t: freshtoken::Timestamp, now: freshtoken::Timestamp) -> String {
    let secs = t.signed_millis_since(now) as f64 / 1000.0;
    if secs >= 0.0 {
        format!("in {secs:.1} s")
    } else {
        format!("{:.1} s ago", -secs)
    }
}

/// The story's line for a token that just arrived.
fn new_token(t: &freshtoken::Token) -> String {
    let fresh = t.stale_at().saturating_duration_since(t.issued_at());
    format!(
        "new token {}, fresh {:.1} s of {:.1} s, expires {}",
        short(t.id()),
        fresh.as_secs_f64(),
        t.lifetime().as_secs_f64(),
        rfc3339(t.expires_at())
    )
}

/// What changed between two snapshots, as a line of the story.
fn event(before: &Snapshot, after: &Snapshot) -> Option<String> {
    let id = |s: &Snapshot| s.token.as_ref().map(|t| t.id());
    if id(before) != id(after) {
        return after.token.as_ref().map(|t| new_token(t));
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
            "attempt {attempt} failed: {error}; next try {}",
            compact(relative(*next_attempt, after.published_at))
        )),
        RefreshState::Failed { error } => Some(format!("renewal failed for good: {error}")),
        _ => None,
    }
}

/// The live line, most telling first, so that fitting it to a narrow
/// terminal drops the least telling fields: time, token, expiry,
/// staleness, fetches, the last error's HTTP status (or kind), authority,
/// cache, the error's code. At 80 columns everything up to the error fits.
fn status_line(
    s: &Snapshot,
    now: freshtoken::Timestamp,
    elapsed: Duration,
    down: Option<bool>,
) -> String {
    let token = match &s.token {
        Some(t) => {
            let verb = if t.status(now) == TokenStatus::Expired {
                "expired"
            } else {
                "expires"
            };
            format!(
                "{}  {verb} {}  stale {}",
                short(t.id()),
                compact(relative(t.expires_at(), now)),
                compact(relative(t.stale_at(), now))
            )
        }
        None => "no token".to_owned(),
    };
    let authority = match down {
        Some(true) => "  authority DOWN",
        Some(false) => "  authority up",
        None => "",
    };
    let cache = match &s.store_error {
        Some(_) => "cache NOT WRITTEN",
        None => "cache ok",
    };
    let (error, code) = match s.state.last_error() {
        None => (String::new(), String::new()),
        Some(e) => (
            match e.status() {
                Some(status) => format!("  error HTTP {status}"),
                None => format!("  error: {}", e.kind()),
            },
            e.error_code().map_or(String::new(), |c| format!("  {c}")),
        ),
    };
    format!(
        "{:.0}s  {token}  fetched {}{error}{authority}  {cache}{code}",
        elapsed.as_secs_f64(),
        s.tokens_fetched,
    )
}

/// "in 4.9 s" as "in 4.9s", for the live line.
fn compact(relative: String) -> String {
    relative.replacen(" s", "s", 1)
}

fn short(id: freshtoken::TokenId) -> String {
    id.to_string()[..8].to_owned()
}
