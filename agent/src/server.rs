//! `freshtoken agent`: keeps every configured token fresh and serves it.
//!
//! * One blocking driver per token (the library's own, with the token's
//!   cache), and one thread per token that rewrites its token file whenever
//!   a new token is published.
//! * The agent's own listener ([`crate::http`]) on the Unix socket (created
//!   0600, in a private directory the agent creates 0700) and, when
//!   `agent.listen` is set, on a loopback TCP port that answers only
//!   requests whose `Host` names it: `/healthz` and `/metrics`, and tokens
//!   (with `tcp_serves_tokens`) only to requests carrying
//!   `Metadata-Flavor: freshtoken` and no `Origin`.
//! * SIGHUP re-reads the configuration: new tokens start, removed ones stop
//!   (their token file is deleted), changed ones restart. A configuration
//!   that does not load is reported and the running one kept.
//! * SIGTERM (or SIGINT) drains: every driver's `shutdown_blocking` (a fetch
//!   or store in flight completes, so a rotated refresh token reaches the
//!   cache), then the listeners close and the socket is removed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use freshtoken::{TokenHandle, TokenStatus};

use freshtoken::handle::RefreshState;
use serde_json::json;

use crate::http::{Handler, Listener, Reply, Request, Server};

use crate::config::{self, ConfigError, Env, Loaded, Resolved};
use crate::tokens;
use crate::{sink, EXIT_CONFIG, EXIT_FAILURE};

/// A token the agent keeps.
struct Entry {
    resolved: Resolved,
    handle: TokenHandle,
    driver: Mutex<Option<freshtoken::driver::DriverHandle>>,
    stop: Arc<AtomicBool>,
    sink: Mutex<Option<JoinHandle<()>>>,
    file_writes: Arc<AtomicU64>,
    file_errors: Arc<AtomicU64>,
}

impl Entry {
    fn start(resolved: Resolved, heartbeat: Duration) -> Result<Arc<Entry>, ConfigError> {
        let running = tokens::spawn(&resolved, heartbeat)?;
        let entry = Arc::new(Entry {
            resolved,
            handle: running.handle,
            driver: Mutex::new(Some(running.driver)),
            stop: Arc::new(AtomicBool::new(false)),
            sink: Mutex::new(None),
            file_writes: Arc::default(),
            file_errors: Arc::default(),
        });
        let thread = {
            let name = entry.resolved.name.clone();
            let sink = entry.resolved.config.file.clone();
            let handle = entry.handle.clone();
            let stop = entry.stop.clone();
            let writes = entry.file_writes.clone();
            let errors = entry.file_errors.clone();
            std::thread::Builder::new()
                .name(format!("freshtoken-sink-{name}"))
                .spawn(move || sink_loop(&name, sink, &handle, &stop, &writes, &errors))
                .map_err(|e| ConfigError {
                    key: format!("tokens.{}", entry.resolved.name),
                    message: format!("cannot start a thread: {e}"),
                })?
        };
        *lock(&entry.sink) = Some(thread);
        Ok(entry)
    }

    /// Stops the token file writer, then drains the driver.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(driver) = lock(&self.driver).take() {
            driver.shutdown_blocking();
        }
        if let Some(thread) = lock(&self.sink).take() {
            drop(thread.join());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rewrites the token file whenever a new token is published; says once
/// when the first token takes longer than a second.
fn sink_loop(
    name: &str,
    sink: Option<config::FileSink>,
    handle: &TokenHandle,
    stop: &AtomicBool,
    writes: &AtomicU64,
    errors: &AtomicU64,
) {
    let started = Instant::now();
    let mut announced = false;
    let mut written = None;
    while !stop.load(Ordering::SeqCst) {
        // Judged by both clocks; a stale or expired token wakes the driver
        // (after a resume, the next round of this loop starts the refresh).
        match handle.valid_token() {
            Ok(token) => {
                if announced && written.is_none() {
                    tracing::info!(token = name, "got the first token");
                }
                if written != Some(token.id()) {
                    if let Some(sink) = &sink {
                        match sink::write(sink, &token) {
                            Ok(()) => {
                                writes.fetch_add(1, Ordering::Relaxed);
                                written = Some(token.id());
                            }
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    token = name,
                                    path = %sink.path.as_deref().unwrap_or(Path::new("")).display(),
                                    "cannot write the token file: {e}"
                                );
                            }
                        }
                    } else {
                        written = Some(token.id());
                    }
                }
            }
            Err(_) if !announced && started.elapsed() > Duration::from_secs(1) => {
                announced = true;
                match handle.status().last_error() {
                    Some(e) => {
                        tracing::warn!(token = name, "still waiting for the first token: {e}")
                    }
                    None => tracing::info!(token = name, "still waiting for the first token"),
                }
            }
            _ => {}
        }
        if handle.wait_changed(Duration::from_millis(200)).is_err() {
            return;
        }
    }
}

/// What the request handlers share.
struct Shared {
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
}

/// Runs the agent until SIGTERM; returns the exit code.
pub fn run(config_path: &Path, env: &Env) -> i32 {
    let loaded = match config::load(Some(config_path), env).and_then(|l| {
        config::check_sinks(&l)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => return crate::config_failure(&e),
    };
    let socket = loaded.socket();
    let tcp_tokens = loaded.config.agent.tcp_serves_tokens.unwrap_or(false);
    let heartbeat = heartbeat(&loaded);

    let unix = match bind_socket(&socket) {
        Ok(server) => server,
        Err((code, message)) => {
            eprintln!("freshtoken: {message}");
            return code;
        }
    };
    let tcp = match &loaded.config.agent.listen {
        Some(addr) => match bind_tcp(addr) {
            Ok(server) => Some(server),
            Err((code, message)) => {
                eprintln!("freshtoken: {message}");
                let _ = std::fs::remove_file(&socket);
                return code;
            }
        },
        None => None,
    };

    // Signals first, so a SIGTERM that comes while tokens start is seen.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("freshtoken: cannot handle signals: {e}");
            return EXIT_FAILURE;
        }
    };

    let shared = Arc::new(Shared {
        entries: RwLock::new(BTreeMap::new()),
    });
    if let Err(e) = apply(&shared, &loaded, heartbeat) {
        let _ = std::fs::remove_file(&socket);
        return crate::config_failure(&e);
    }

    let tcp_addr = tcp.as_ref().and_then(|l| match l {
        Listener::Tcp(l) => l.local_addr().ok(),
        Listener::Unix(..) => None,
    });
    let mut servers = Vec::new();
    for (listener, via) in std::iter::once((unix, Via::Unix)).chain(tcp.map(|l| {
        let via = Via::Tcp {
            port: tcp_addr.map_or(0, |a| a.port()),
            serves_tokens: tcp_tokens,
        };
        (l, via)
    })) {
        let handler: Handler = {
            let shared = shared.clone();
            Arc::new(move |request: &Request| route(&shared, request, via))
        };
        match Server::start(listener, handler) {
            Ok(server) => servers.push(server),
            Err(e) => {
                eprintln!("freshtoken: cannot start a listener thread: {e}");
                let _ = std::fs::remove_file(&socket);
                return EXIT_FAILURE;
            }
        }
    }
    tracing::info!(
        socket = %socket.display(),
        tcp = ?tcp_addr,
        tokens = ?shared.entries.read().map(|e| e.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
        "agent running"
    );

    let mut current = loaded;
    for signal in signals.forever() {
        if signal == signal_hook::consts::SIGHUP {
            let reloaded = config::load(Some(config_path), &config::process_env()).and_then(|l| {
                config::check_sinks(&l)?;
                Ok(l)
            });
            match reloaded {
                Ok(new) => {
                    if new.socket() != current.socket()
                        || new.config.agent.listen != current.config.agent.listen
                    {
                        tracing::warn!("the socket and listen address change only with a restart");
                    }
                    match apply(&shared, &new, heartbeat) {
                        Ok(()) => {
                            tracing::info!("configuration reloaded");
                            current = new;
                        }
                        Err(e) => tracing::error!("configuration not reloaded: {e}"),
                    }
                }
                Err(e) => tracing::error!("configuration not reloaded: {e}"),
            }
        } else {
            tracing::info!("stopping: draining the refreshers");
            break;
        }
    }

    // Drain every driver at once (each within its fetch timeout).
    let entries: Vec<Arc<Entry>> = match shared.entries.write() {
        Ok(mut e) => std::mem::take(&mut *e).into_values().collect(),
        Err(p) => std::mem::take(&mut *p.into_inner()).into_values().collect(),
    };
    let stoppers: Vec<_> = entries
        .into_iter()
        .map(|e| std::thread::spawn(move || e.stop()))
        .collect();
    for s in stoppers {
        drop(s.join());
    }
    for server in servers {
        server.stop();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    0
}

fn heartbeat(loaded: &Loaded) -> Duration {
    Duration::from_secs(loaded.config.agent.heartbeat_secs.unwrap_or(30).max(1))
}

/// Starts, stops and restarts entries so that they match `loaded`.
fn apply(shared: &Shared, loaded: &Loaded, heartbeat: Duration) -> Result<(), ConfigError> {
    let existing: BTreeMap<String, Arc<Entry>> =
        shared.entries.read().map(|e| e.clone()).unwrap_or_default();
    // Build every new entry before touching the running ones, so a token
    // that cannot start leaves the old configuration in place.
    let mut started = BTreeMap::new();
    for (name, resolved) in &loaded.tokens {
        match existing.get(name) {
            Some(old) if old.resolved == *resolved => {}
            _ => match Entry::start(resolved.clone(), heartbeat) {
                Ok(e) => {
                    started.insert(name.clone(), e);
                }
                Err(err) => {
                    for e in started.values() {
                        e.stop();
                    }
                    return Err(err);
                }
            },
        }
    }
    let mut retired = Vec::new();
    {
        let mut entries = match shared.entries.write() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        for (name, entry) in started {
            if let Some(old) = entries.insert(name.clone(), entry) {
                tracing::info!(token = %name, "token reconfigured");
                retired.push((old, false));
            } else {
                tracing::info!(token = %name, "token added");
            }
        }
        let gone: Vec<String> = entries
            .keys()
            .filter(|n| !loaded.tokens.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = entries.remove(&name) {
                tracing::info!(token = %name, "token removed");
                retired.push((old, true));
            }
        }
    }
    for (old, removed) in retired {
        old.stop();
        let path = old
            .resolved
            .config
            .file
            .as_ref()
            .and_then(|f| f.path.clone());
        // A removed token's file goes; a reconfigured one's stays for
        // the new writer (unless it moved).
        let new_path = loaded
            .tokens
            .get(&old.resolved.name)
            .and_then(|r| r.config.file.as_ref())
            .and_then(|f| f.path.clone());
        if let Some(path) = path {
            if removed || new_path.as_ref() != Some(&path) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    Ok(())
}

type BindError = (i32, String);

/// The header a token request over TCP must carry (with the value
/// [`TOKEN_HEADER_VALUE`]): a browser cannot send it cross-origin without a
/// CORS preflight, which the agent never grants.
pub const TOKEN_HEADER: &str = "Metadata-Flavor";
/// The value of [`TOKEN_HEADER`].
pub const TOKEN_HEADER_VALUE: &str = "freshtoken";

/// The effective uid of this process.
pub fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses a directory that someone other than its owner can write to, or
/// that belongs to another user (root excepted): the rule the file cache
/// applies to its directory.
fn check_private_dir(dir: &Path) -> Result<(), BindError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        Err((
            EXIT_CONFIG,
            format!(
                "configuration error: agent.socket: the directory {} {why}",
                dir.display()
            ),
        ))
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return refuse(format!("cannot be read: {e}")),
    };
    if !meta.is_dir() {
        return refuse("is not a directory".to_owned());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return refuse(format!(
            "lets the group or others write to it (mode {mode:o}): chmod 700 it, or use a private directory"
        ));
    }
    let me = my_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return refuse(format!(
            "is owned by uid {}, not by this user (uid {me}) or root",
            meta.uid()
        ));
    }
    Ok(())
}

/// Binds the Unix socket: its directory created 0700 if missing and
/// refused when another user owns it or others can write to it; a stale
/// socket of this user removed, anything else at the path refused (never
/// removed), a live agent refused; the socket created mode 0600 (the umask
/// set around `bind`, no chmod afterwards).
fn bind_socket(socket: &Path) -> Result<Listener, BindError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| {
            (
                EXIT_CONFIG,
                format!(
                    "configuration error: agent.socket: cannot create the directory {}: {e}",
                    dir.display()
                ),
            )
        })?;
    }
    check_private_dir(dir)?;
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if meta.uid() != my_uid() {
                return Err((
                    EXIT_CONFIG,
                    format!(
                        "configuration error: agent.socket: {} belongs to uid {}: not removed",
                        socket.display(),
                        meta.uid()
                    ),
                ));
            }
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err((
                    EXIT_FAILURE,
                    format!("another agent is listening on {}", socket.display()),
                ));
            }
            // A stale socket of ours: a previous agent's.
            let _ = std::fs::remove_file(socket);
        }
        Ok(_) => {
            return Err((
                EXIT_CONFIG,
                format!(
                    "configuration error: agent.socket: {} exists and is not a socket: not removed",
                    socket.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err((
                EXIT_CONFIG,
                format!(
                    "configuration error: agent.socket: cannot read {}: {e}",
                    socket.display()
                ),
            ))
        }
    }
    // Only this user may ask for tokens: the socket is created 0600. No
    // other thread creates files while the agent starts.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(socket);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| {
        (
            EXIT_CONFIG,
            format!(
                "configuration error: agent.socket: cannot listen on {}: {e}",
                socket.display()
            ),
        )
    })?;
    Ok(Listener::Unix(listener, socket.to_owned()))
}

/// `agent.listen` as a loopback socket address: an IP address and port, or
/// `localhost:PORT` (127.0.0.1).
pub fn parse_listen(addr: &str) -> Result<SocketAddr, ConfigError> {
    let parsed = match addr.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
        None => addr.parse().ok(),
    };
    let Some(parsed) = parsed else {
        return Err(ConfigError {
            key: "agent.listen".into(),
            message: "must be an address such as 127.0.0.1:9464 or localhost:9464".into(),
        });
    };
    if !parsed.ip().is_loopback() {
        return Err(ConfigError {
            key: "agent.listen".into(),
            message: "must be a loopback address (127.0.0.1, [::1] or localhost)".into(),
        });
    }
    Ok(parsed)
}

fn bind_tcp(addr: &str) -> Result<Listener, BindError> {
    let parsed =
        parse_listen(addr).map_err(|e| (EXIT_CONFIG, format!("configuration error: {e}")))?;
    let listener = std::net::TcpListener::bind(parsed)
        .map_err(|e| (EXIT_FAILURE, format!("cannot listen on {parsed}: {e}")))?;
    Ok(Listener::Tcp(listener))
}

/// Which listener a request came on.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// The Unix socket: everything.
    Unix,
    /// The loopback TCP port: `/healthz` and `/metrics`, and tokens when
    /// `serves_tokens`; only for a `Host` naming this listener.
    Tcp { port: u16, serves_tokens: bool },
}

/// Whether `host` (a `Host` header) names a loopback listener on `port`: a
/// loopback address or `localhost`, with that port (none means 80). A page
/// whose name an attacker rebinds to 127.0.0.1 sends its own name.
pub fn host_is_this_listener(host: &str, port: u16) -> bool {
    let (name, given) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, "")) => (name, None),
            Some((name, tail)) => match tail.strip_prefix(':') {
                Some(p) => (name, Some(p)),
                None => return false,
            },
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, p)) => (name, Some(p)),
            None => (host, None),
        },
    };
    let port_ok = match given {
        None => port == 80,
        Some(p) => p.parse::<u16>().is_ok_and(|p| p == port),
    };
    let name_ok = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    port_ok && name_ok
}

fn route(shared: &Shared, request: &Request, via: Via) -> Reply {
    let path = request.path.as_str();
    match via {
        Via::Unix => match path.strip_prefix("/v1/token/") {
            Some(name) => token_response(shared, name, request),
            None => match path {
                "/healthz" => health(shared),
                "/v1/status" => Reply::json(200, &status_json(shared)),
                "/metrics" => metrics_response(shared),
                _ => Reply::json(404, &json!({"error": "not found"})),
            },
        },
        Via::Tcp {
            port,
            serves_tokens,
        } => {
            if !request
                .header("host")
                .is_some_and(|h| host_is_this_listener(h, port))
            {
                return Reply::json(
                    403,
                    &json!({"error": format!(
                        "the Host header must name this listener: 127.0.0.1:{port}, localhost:{port} or [::1]:{port}"
                    )}),
                );
            }
            match path.strip_prefix("/v1/token/") {
                Some(name) if serves_tokens => {
                    let flavored = request
                        .header(TOKEN_HEADER)
                        .is_some_and(|v| v.eq_ignore_ascii_case(TOKEN_HEADER_VALUE));
                    if !flavored || request.has_header("origin") {
                        return Reply::json(
                            403,
                            &json!({"error": format!(
                                "a token request over TCP needs the header {TOKEN_HEADER}: {TOKEN_HEADER_VALUE}, and no Origin"
                            )}),
                        );
                    }
                    token_response(shared, name, request)
                }
                Some(_) => Reply::json(
                    404,
                    &json!({"error": "tokens are served on the Unix socket"}),
                ),
                None => match path {
                    "/healthz" => health(shared),
                    "/metrics" => metrics_response(shared),
                    _ => Reply::json(404, &json!({"error": "not found"})),
                },
            }
        }
    }
}

fn metrics_response(shared: &Shared) -> Reply {
    let entries: Vec<Arc<Entry>> = shared
        .entries
        .read()
        .map(|e| e.values().cloned().collect())
        .unwrap_or_default();
    for e in &entries {
        let snapshot = e.handle.snapshot();
        let expires = snapshot.token.as_ref().map(|t| {
            let left = tokens::expires_in_ms(&snapshot, e.handle.now()).unwrap_or(0);
            (t.expires_at(), left)
        });
        crate::metrics::record_token(
            &e.resolved.name,
            e.handle.valid_token().is_ok(),
            expires,
            e.file_writes.load(Ordering::Relaxed),
            e.file_errors.load(Ordering::Relaxed),
        );
    }
    crate::metrics::response(crate::metrics::render())
}

fn entry(shared: &Shared, name: &str) -> Option<Arc<Entry>> {
    shared.entries.read().ok()?.get(name).cloned()
}

/// The longest a token request waits for a token valid long enough
/// (`wait_ms`): under the listener's bound on an answer.
const MAX_TOKEN_WAIT: Duration = Duration::from_secs(3);

/// `GET /v1/token/NAME[?min_validity=SECS[&wait_ms=MS]]`: the token, valid
/// for at least `min_validity` more when that is given (the agent refreshes
/// early for it, and waits up to `wait_ms` for the new token). A 503 says
/// in `retry` whether asking again can help: not when the authority's
/// tokens never live that long, nor when renewal failed for good.
fn token_response(shared: &Shared, name: &str, request: &Request) -> Reply {
    let Some(entry) = entry(shared, name) else {
        return Reply::json(404, &json!({"error": format!("no token named {name:?}")}));
    };
    let needed = match request.query_param("min_validity") {
        None => None,
        Some(secs) => match tokens::seconds(secs) {
            Some(needed) => Some(needed),
            None => {
                return Reply::json(
                    400,
                    &json!({"error": "min_validity is a number of seconds"}),
                )
            }
        },
    };
    let wait = request
        .query_param("wait_ms")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
        .min(MAX_TOKEN_WAIT);
    let found = match needed {
        None => entry.handle.valid_token(),
        Some(needed) if wait.is_zero() => entry.handle.valid_for(needed),
        Some(needed) => entry.handle.wait_ready_for(needed, wait),
    };
    match found {
        Ok(token) => {
            // By whichever clock says sooner: after a wall clock stepped
            // back, the monotonic one.
            let left = tokens::expires_in_ms(token.snapshot(), entry.handle.now()).unwrap_or(0);
            Reply::json(
                200,
                &json!({
                    "access_token": token.access_token().expose_secret(),
                    "token_type": token.token_type(),
                    "expires_at": token.expires_at().as_secs(),
                    "expires_in": left.max(0) / 1000,
                }),
            )
        }
        Err(why) => Reply::json(
            503,
            &json!({"error": tokens::why_not(&why), "retry": tokens::may_come(&why)}),
        ),
    }
}

fn health(shared: &Shared) -> Reply {
    let entries: Vec<Arc<Entry>> = shared
        .entries
        .read()
        .map(|e| e.values().cloned().collect())
        .unwrap_or_default();
    let mut tokens = serde_json::Map::new();
    let mut ok = true;
    for e in &entries {
        let valid = e.handle.valid_token();
        ok &= valid.is_ok();
        tokens.insert(
            e.resolved.name.clone(),
            json!(match valid {
                Ok(_) => "valid".to_owned(),
                Err(why) => tokens::why_not(&why),
            }),
        );
    }
    Reply::json(
        if ok { 200 } else { 503 },
        &json!({"ok": ok, "tokens": tokens}),
    )
}

/// Every token's state, as `freshtoken status --json` shows it. No secret.
fn status_json(shared: &Shared) -> serde_json::Value {
    let entries: Vec<Arc<Entry>> = shared
        .entries
        .read()
        .map(|e| e.values().cloned().collect())
        .unwrap_or_default();
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let snapshot = e.handle.snapshot();
            let (state, error, attempt, next) = match &snapshot.state {
                RefreshState::Starting => ("starting", None, None, None),
                RefreshState::Healthy => ("healthy", None, None, None),
                RefreshState::Retrying {
                    error,
                    attempt,
                    next_attempt,
                } => (
                    "retrying",
                    Some(error.to_string()),
                    Some(*attempt),
                    Some(next_attempt.as_secs()),
                ),
                RefreshState::Failed { error } => ("failed", Some(error.to_string()), None, None),
                RefreshState::Stopped => ("stopped", None, None, None),
                // A state added to the library later (non-exhaustive).
                _ => ("unknown", None, None, None),
            };
            let token = snapshot.token.as_deref();
            let clocks = e.handle.now();
            let status = match tokens::status(&snapshot, clocks) {
                Some(TokenStatus::Fresh) => "fresh",
                Some(TokenStatus::Stale) => "stale",
                Some(TokenStatus::Expired) => "expired",
                None => "none",
            };
            json!({
                "name": e.resolved.name,
                "grant": e.resolved.grant.name(),
                "state": state,
                "token": status,
                "expires_at": token.map(|t| t.expires_at().as_secs()),
                "expires_in": tokens::expires_in_ms(&snapshot, clocks).map(|ms| ms / 1000),
                "stale_at": token.map(|t| t.stale_at().as_secs()),
                "lifetime_note": tokens::lifetime_note(&snapshot),
                "fetches": snapshot.tokens_fetched,
                "attempt": attempt,
                "next_attempt": next,
                "last_error": error,
                "file": e.resolved.config.file.as_ref().and_then(|f| f.path.as_ref()).map(|p| p.display().to_string()),
                "file_writes": e.file_writes.load(Ordering::Relaxed),
                "file_errors": e.file_errors.load(Ordering::Relaxed),
            })
        })
        .collect();
    json!({ "tokens": list })
}

/// The socket a client should ask: `--socket`, else the configuration's,
/// else the default.
pub fn socket_for(explicit: Option<&Path>, loaded: Option<&Loaded>) -> PathBuf {
    match (explicit, loaded) {
        (Some(p), _) => p.to_owned(),
        (None, Some(l)) => l.socket(),
        (None, None) => config::default_socket(),
    }
}
