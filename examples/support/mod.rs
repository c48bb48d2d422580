//! What the examples share: the command line, the authority (a local one by
//! default), the cache folder, waiting for the first token, and the clear
//! exit when one of them is wrong.
//!
//! Common options (every example):
//!
//! ```text
//! --seconds N              how long to run (default 5, or FRESHTOKEN_SECONDS)
//! --token-url URL          use this token endpoint instead of a local authority
//! --client-id ID           the client id (default example-client)
//! --client-secret-env VAR  read the client secret from the environment variable VAR
//!                          (with --token-url the default is FRESHTOKEN_CLIENT_SECRET)
//! --cache-dir DIR          where file caches live (default: a new temporary folder)
//! ```
//!
//! Exit codes: 0 done, 1 the authority, the secret or the cache folder is
//! wrong (with a message saying which), 2 a bad command line. Nothing here
//! prints a secret: tokens are shown by id, refresh tokens by fingerprint.

// Each example uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::process::exit;
use std::task::Poll;
use std::time::{Duration, Instant};

use freshtoken::cache::FileCache;
use freshtoken::handle::Snapshot;
use freshtoken::oauth2::{ClientCredentials, RefreshTokenSource};
use freshtoken::testing::LocalAuthority;
use freshtoken::{ClientSecret, FetchErrorKind, NoValidToken, RefreshToken, TokenHandle, TokenId};

/// The local authority's client and secret. A test secret, never printed.
pub const LOCAL_CLIENT: &str = "example-client";
const LOCAL_SECRET: &str = "local-authority-secret-3c1d";
/// Lifetime of the local authority's tokens: a few refreshes per run.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3);
/// How long to wait for the first token before giving up.
pub const START_TIMEOUT: Duration = Duration::from_secs(4);

/// The options every example shares; each example flattens them into its
/// own `clap` parser (`#[command(flatten)] common: Options`), so `--help`
/// lists them with their defaults and an unknown flag is an error.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// How long to run, in seconds
    #[arg(
        long,
        env = "FRESHTOKEN_SECONDS",
        default_value_t = 5,
        value_name = "N"
    )]
    pub seconds: u64,
    /// Use this token endpoint instead of starting a local authority
    #[arg(long, value_name = "URL")]
    pub token_url: Option<String>,
    /// The client id
    #[arg(long, default_value = LOCAL_CLIENT, value_name = "ID")]
    pub client_id: String,
    /// Read the client secret from this environment variable
    /// [default with --token-url: FRESHTOKEN_CLIENT_SECRET]
    #[arg(long = "client-secret-env", value_name = "VAR")]
    pub secret_env: Option<String>,
    /// Where file caches live [default: a new temporary folder]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// Installs the log subscriber and parses the command line: every example
/// starts with this.
///
/// The driver and the sources log through `tracing`; `RUST_LOG` picks what
/// is shown on stderr, as comma-separated `target=level` or `level`
/// directives (`RUST_LOG=freshtoken=debug`, `RUST_LOG=trace`), and without
/// it (or with one that does not parse) only errors are. A bad command line prints clap's message
/// and exits with 2; `--help` lists every flag with its default.
pub fn cli<T: clap::Parser>() -> T {
    init_tracing();
    T::parse()
}

/// The `tracing` subscriber every example installs: `RUST_LOG`, else
/// errors only, on stderr (stdout is the example's own output). The filter
/// is tracing-subscriber's `Targets`, which reads the `target=level` form
/// of `RUST_LOG` without the regex engine behind `EnvFilter` (a good part
/// of the examples' first build).
pub fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::ERROR));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

impl Options {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// The authority to use: the one named by `--token-url`, else a fresh
    /// local one with [`TOKEN_LIFETIME`] tokens.
    pub fn authority(&self) -> Authority {
        let from_env = |var: &str| match std::env::var(var) {
            Ok(s) if !s.is_empty() => ClientSecret::new(s),
            _ => fail(&format!(
                "the environment variable {var} (the client secret) is not set"
            )),
        };
        let secret = self.secret_env.as_deref().map(from_env);
        let (local, url, secret) = match &self.token_url {
            Some(url) => {
                let env = self
                    .secret_env
                    .as_deref()
                    .unwrap_or("FRESHTOKEN_CLIENT_SECRET");
                (None, url.clone(), secret.unwrap_or_else(|| from_env(env)))
            }
            None => {
                let authority = LocalAuthority::builder()
                    .client(LOCAL_CLIENT, LOCAL_SECRET)
                    .token_lifetime(TOKEN_LIFETIME)
                    .start()
                    .unwrap_or_else(|e| fail(&format!("cannot start the local authority: {e}")));
                let url = authority.token_url();
                (Some(authority), url, secret.unwrap_or(LOCAL_SECRET.into()))
            }
        };
        Authority {
            local,
            url,
            client_id: self.client_id.clone(),
            secret,
        }
    }

    /// The cache folder (`--cache-dir`, else a new temporary one), checked
    /// by writing a file into it: a cache that cannot store would only log
    /// warnings, which is easy to miss.
    pub fn cache_dir(&self) -> CacheDir {
        let (path, temp) = match &self.cache_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::tempdir()
                    .unwrap_or_else(|e| fail(&format!("cannot create a temporary folder: {e}")));
                let path = temp.path().to_owned();
                on_fail(move || {
                    // The driver may be writing its lease file right now,
                    // which makes a removal fail: try again.
                    for _ in 0..5 {
                        if std::fs::remove_dir_all(&path).is_ok() || !path.exists() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
                (temp.path().to_owned(), Some(temp))
            }
        };
        let writable = std::fs::create_dir_all(&path)
            .and_then(|()| tempfile::NamedTempFile::new_in(&path).map(drop));
        if let Err(e) = writable {
            fail(&format!(
                "the cache folder {} is not writable: {e}",
                path.display()
            ));
        }
        CacheDir { path, _temp: temp }
    }
}

/// Where the tokens come from.
pub struct Authority {
    /// The local authority, when no `--token-url` was given.
    pub local: Option<LocalAuthority>,
    pub url: String,
    pub client_id: String,
    secret: ClientSecret,
}

impl Authority {
    pub fn client_credentials(&self) -> ClientCredentials {
        ClientCredentials::builder(&self.url, &self.client_id, self.secret.clone())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|e| fail(&format!("bad token URL: {e}")))
    }

    pub fn refresh_token_source(&self, first: Option<RefreshToken>) -> RefreshTokenSource {
        let builder = RefreshTokenSource::builder(&self.url, &self.client_id)
            .client_secret(self.secret.clone())
            .timeout(Duration::from_secs(2));
        match first {
            Some(first) => builder.refresh_token(first),
            None => builder,
        }
        .build()
        .unwrap_or_else(|e| fail(&format!("bad token URL: {e}")))
    }

    /// The secret, for handing to a child process through its environment.
    pub fn secret(&self) -> &ClientSecret {
        &self.secret
    }

    /// Token requests the local authority received ("-" for a remote one).
    pub fn requests(&self) -> String {
        self.local
            .as_ref()
            .map_or("-".into(), |a| a.request_count().to_string())
    }
}

/// A checked, writable cache folder (removed at the end if temporary).
pub struct CacheDir {
    pub path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl CacheDir {
    /// A file cache in this folder.
    pub fn file(&self, name: &str) -> FileCache {
        FileCache::new(self.path.join(name))
    }

    /// Prints whether the driver's last store into the cache worked, or
    /// why not (from its snapshot).
    pub fn report(&self, tokens: &TokenHandle) {
        println!("cache: {}", describe_cache(&tokens.snapshot()));
    }
}

/// "N token(s) fetched, stored" or "NOT WRITTEN: <error>", from the
/// snapshot: a cache that cannot be written is visible without a log.
pub fn describe_cache(snapshot: &Snapshot) -> String {
    match &snapshot.store_error {
        Some(e) => format!("NOT WRITTEN: {e}"),
        None => format!("stored ({} token(s) fetched here)", snapshot.tokens_fetched),
    }
}

/// Whether waiting for the first token is over: a token, or an error that
/// retrying will not fix (a wrong secret is permanent, but the machine
/// keeps retrying it slowly in case the secret is rotated in).
fn verdict(tokens: &TokenHandle) -> Option<Result<TokenId, NoValidToken>> {
    match tokens.valid_token() {
        Ok(token) => Some(Ok(token.id())),
        Err(e @ (NoValidToken::Failed { .. } | NoValidToken::Stopped)) => Some(Err(e)),
        Err(e)
            if e.last_error()
                .is_some_and(|e| e.kind() == FetchErrorKind::Permanent) =>
        {
            Some(Err(e))
        }
        Err(_) => None,
    }
}

/// Blocks until the first token, or exits with the reason.
pub fn wait_first_token(tokens: &TokenHandle) -> TokenId {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match verdict(tokens) {
            Some(Ok(id)) => return id,
            Some(Err(e)) => fail_start(&e),
            None => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            no_token(tokens);
        }
        let _ = tokens.wait_changed(left);
    }
}

/// Resolves with the first token, or exits with the reason there will be
/// none or when `timer` (the runtime's sleep for [`START_TIMEOUT`]) ends.
pub async fn first_token(tokens: &TokenHandle, timer: impl Future) -> TokenId {
    let mut timer = std::pin::pin!(timer);
    let mut changed = Box::pin(tokens.changed());
    std::future::poll_fn(|cx| loop {
        match verdict(tokens) {
            Some(Ok(id)) => return Poll::Ready(id),
            Some(Err(e)) => fail_start(&e),
            None => {}
        }
        if timer.as_mut().poll(cx).is_ready() {
            no_token(tokens);
        }
        match changed.as_mut().poll(cx) {
            // Something was published: look again, and wait for the next.
            Poll::Ready(Ok(())) => changed = Box::pin(tokens.changed()),
            Poll::Ready(Err(_)) => no_token(tokens),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// Exits because no token came within [`START_TIMEOUT`].
pub fn no_token(tokens: &TokenHandle) -> ! {
    match tokens.valid_token() {
        Ok(_) => unreachable!("no_token called with a valid token"),
        Err(e) => fail_start(&e),
    }
}

fn fail_start(e: &NoValidToken) -> ! {
    let hint = match e.last_error().map(|e| e.kind()) {
        Some(FetchErrorKind::Permanent) => "is the client secret right?",
        Some(FetchErrorKind::GrantRevoked) => {
            "the grant was revoked or has expired: sign in again for a new refresh token"
        }
        Some(FetchErrorKind::RateLimited) => "the authority is rate limiting this client",
        Some(FetchErrorKind::Transient) => "is the authority reachable?",
        // A kind added to the library later (non-exhaustive).
        Some(_) => "see the error above",
        // No attempt of ours finished: the authority is slow, or another
        // instance holds the cache lease while it retries.
        None => "no answer yet: is the authority reachable?",
    };
    fail(&format!("cannot get a first token: {e} ({hint})"))
}

/// Prints `error: <message>` and exits with status 1.
pub fn fail(message: &str) -> ! {
    // Held until the exit, so that threads failing at once print one message.
    let mut cleanups = lock(&CLEANUPS);
    eprintln!("error: {message}");
    // `exit` runs no destructors: stop what they would have stopped.
    for cleanup in cleanups.drain(..) {
        cleanup();
    }
    exit(1)
}

/// Locks `m`, ignoring poisoning: a thread that panicked while holding it
/// left plain data (a list of cleanups, a child process) that is still fine.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What [`fail`] must undo: servers started and temporary folders made.
static CLEANUPS: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>> =
    std::sync::Mutex::new(Vec::new());

fn on_fail(cleanup: impl FnOnce() + Send + 'static) {
    lock(&CLEANUPS).push(Box::new(cleanup));
}

/// Seconds since `start`, for log lines.
pub fn at(start: Instant) -> String {
    format!("{:5.1}s", start.elapsed().as_secs_f64())
}

/// What the readers of an example saw.
#[derive(Default)]
pub struct Reads {
    pub ok: u64,
    pub failed: u64,
    pub tokens: BTreeSet<TokenId>,
}

impl Reads {
    /// Takes the current token as an API call would, and notes its id.
    pub fn read(&mut self, tokens: &TokenHandle, who: &str, start: Instant) {
        match tokens.valid_token() {
            Ok(token) => {
                self.ok += 1;
                if self.tokens.insert(token.id()) {
                    println!("{} {who} uses token {}", at(start), token.id());
                }
            }
            Err(e) => {
                self.failed += 1;
                println!("{} {who} has no valid token: {e}", at(start));
            }
        }
    }

    /// Prints what `readers` saw, what the driver fetched and what the
    /// authority received.
    pub fn summary(readers: &[Reads], tokens: &TokenHandle, authority: &Authority) {
        let ok: u64 = readers.iter().map(|r| r.ok).sum();
        let failed: u64 = readers.iter().map(|r| r.failed).sum();
        let seen: BTreeSet<_> = readers.iter().flat_map(|r| &r.tokens).collect();
        let fetched = tokens.snapshot().tokens_fetched;
        println!(
            "{} readers: {ok} reads with a valid token, {failed} without, {} distinct tokens",
            readers.len(),
            seen.len()
        );
        println!(
            "driver: {fetched} tokens fetched (the first and {} refreshes); authority: {} token requests",
            fetched.saturating_sub(1),
            authority.requests()
        );
    }
}

/// A `redis-server` started for an example on a free loopback port, with
/// no persistence; killed on drop.
pub struct RedisServer {
    child: std::sync::Arc<std::sync::Mutex<std::process::Child>>,
    pub url: String,
}

impl RedisServer {
    /// The URL in `REDIS_URL`, else a `redis-server` from PATH started in
    /// `dir`. Exits with a message when neither works.
    pub fn from_env_or_start(dir: &std::path::Path) -> (String, Option<RedisServer>) {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return (url, None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| fail(&format!("no free loopback port: {e}")));
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("set REDIS_URL or put redis-server on PATH ({e})")));
        let child = std::sync::Arc::new(std::sync::Mutex::new(child));
        let server = RedisServer {
            child: child.clone(),
            url: format!("redis://127.0.0.1:{port}/"),
        };
        on_fail(move || stop(&child));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server.answers(port) {
            if Instant::now() > deadline {
                fail("the redis-server started here did not answer within 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (server.url.clone(), Some(server))
    }

    fn answers(&self, port: u16) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let mut pong = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut pong).is_ok() && &pong == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&self.child);
    }
}

fn stop(child: &std::sync::Mutex<std::process::Child>) {
    let mut child = lock(child);
    let _ = child.kill();
    let _ = child.wait();
}
