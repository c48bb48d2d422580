//! The `freshtoken` binary: an agent that keeps OAuth2 tokens fresh for
//! processes in any language, and the commands that read from it.
//!
//! ```text
//! freshtoken agent --config /etc/freshtoken/agent.toml   # keep tokens fresh, serve them
//! freshtoken token api                                   # print the current token
//! freshtoken exec api -- curl https://api.example.com/   # run a command with $ACCESS_TOKEN
//! freshtoken exec api --supervise --token-file /run/api.token -- ./server
//!                                                        # keep it running, SIGHUP on each new token
//! freshtoken status [--json] [--watch]                   # every token's state
//! freshtoken login cli --config agent.toml               # sign in on another device (RFC 8628)
//! freshtoken completions bash                            # shell completions
//! ```
//!
//! The agent serves each token as a token file (written atomically, mode
//! 0600 or as configured, raw, as an `Authorization` header line, as JSON
//! or from a template) and on a local HTTP endpoint: a Unix socket (mode
//! 0600, in a private directory) with `GET /v1/token/{name}`
//! (`{"access_token", "token_type", "expires_at", "expires_in"}`;
//! `?min_validity=SECS&wait_ms=MS` asks for a token valid that long, renewed
//! early when the current one is not),
//! `/healthz` (200 when every token is valid, else 503), `/v1/status` and
//! `/metrics` (Prometheus text), and optionally a loopback TCP port for
//! `/healthz` and `/metrics` (a Prometheus scrape), answering only requests
//! whose `Host` names it. The clients ask only a socket of their own user.
//! SIGHUP reloads the configuration; SIGTERM drains the
//! refreshers (a fetch or store in flight completes) and exits. See
//! [`config`] for the configuration and its environment variables.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done (`token` printed a valid token) |
//! | 1 | no valid token in time, no agent for `status`, another agent on the socket |
//! | 2 | bad configuration or usage (one line on stderr names the key) |
//! | 3 | no token of that name |
//! | 126, 127 | `exec`: the command cannot be run / was not found |
//!
//! # `freshtoken token NAME`
//!
//! Asks the agent's socket first. When no agent listens, it reads the
//! token's shared cache (from `--config`) and prints a fresh token found
//! there; otherwise it runs the library's driver once: it takes the cache's
//! lease, fetches, stores and prints, so any number of processes started
//! at once with a cold cache make one request to the authority.
//!
//! # Crates, and why
//!
//! * **clap** (derive): the standard for Rust command lines: real `--help`,
//!   `env` fallbacks, and **clap_complete** for shell completions from the
//!   same definition.
//! * **toml** and **serde**: the configuration format and its typed form;
//!   unknown keys are refused by our own key table so the error names the
//!   full dotted key.
//! * **httparse** (already in the tree through hyper): parses the request
//!   head for the agent's own small listener ([`http`]), which bounds every
//!   connection in time and serves each on its own thread, so a slow client
//!   never holds up another (tiny_http, used before, has no socket timeouts
//!   and answered on one thread).
//! * **signal-hook**: SIGHUP and SIGTERM delivered to a normal thread
//!   through its self-pipe iterator (the handler does only what is
//!   async-signal-safe).
//! * **metrics-exporter-prometheus** without its HTTP listener: renders the
//!   `metrics` facade as Prometheus text for our own `/metrics`.
//! * **tracing-subscriber**: logs on stderr, filtered by `FRESHTOKEN_LOG`.
//! * **rustix** (already used by the file cache): file owners, the uid and
//!   the terminal's width without unsafe code.
#![warn(missing_docs)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub mod client;
pub mod config;
pub mod http;
pub mod login;
pub mod metrics;
pub mod server;
pub mod sink;
pub mod supervise;
pub mod tokens;

/// Success.
pub const EXIT_OK: i32 = 0;
/// No valid token in time, or no agent.
pub const EXIT_FAILURE: i32 = 1;
/// Bad configuration or usage.
pub const EXIT_CONFIG: i32 = 2;
/// No token of that name.
pub const EXIT_NO_SUCH_TOKEN: i32 = 3;

/// Keeps OAuth2 tokens fresh for processes in any language.
#[derive(Debug, Parser)]
#[command(
    name = "freshtoken",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 done; 1 no valid token in time, or no agent (status); \
                  2 bad configuration or usage; 3 no token of that name; \
                  126/127 (exec) the command cannot be run / was not found.\n\
                  Every configuration key is also an environment variable: \
                  FRESHTOKEN_AGENT_<KEY>, FRESHTOKEN_TOKENS_<NAME>_<KEY>. \
                  Logs go to stderr, filtered by FRESHTOKEN_LOG (e.g. debug)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Keep every configured token fresh; serve token files, the socket
    /// endpoint and /metrics. SIGHUP reloads, SIGTERM drains and exits.
    Agent {
        /// The configuration file (TOML).
        #[arg(long, short, env = "FRESHTOKEN_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the current token: from the agent's socket, else the shared
    /// cache, else fetched (under the cache's lease) and stored.
    Token {
        /// The token's name.
        name: String,
        /// Where to look for the token.
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Run a command with the token in an environment variable, and
    /// without the variables the configuration reads secrets from.
    Exec {
        /// The token's name.
        name: String,
        /// The variable (default: the token's `env_var`, else ACCESS_TOKEN).
        #[arg(long, value_name = "VAR")]
        env: Option<String>,
        /// Where to look for the token.
        #[command(flatten)]
        source: SourceArgs,
        /// Keep the command running and feed it every new token, instead
        /// of replacing this process with it (see `--on-refresh`).
        #[arg(long)]
        supervise: bool,
        /// With --supervise, what a new token does: `signal` rewrites
        /// --token-file and sends --signal; `restart` stops the command and
        /// starts it again with the new token in its variable.
        #[arg(long, value_enum, default_value = "signal", requires = "supervise")]
        on_refresh: supervise::OnRefresh,
        /// The signal sent on a new token (--on-refresh signal).
        #[arg(long, default_value = "HUP", value_parser = supervise::signal_arg, requires = "supervise", value_name = "SIG")]
        signal: rustix::process::Signal,
        /// Write the token to this file (0600, atomically) before the
        /// command starts and on every new token; its path is in `<VAR>_FILE`.
        #[arg(long, requires = "supervise", value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// The signal that stops the command for a restart.
        #[arg(long, default_value = "TERM", value_parser = supervise::signal_arg, requires = "supervise", value_name = "SIG")]
        stop_signal: rustix::process::Signal,
        /// Seconds a stopping command has before SIGKILL.
        #[arg(
            long,
            default_value_t = 10.0,
            requires = "supervise",
            value_name = "SECS"
        )]
        stop_timeout: f64,
        /// Seconds between asking the agent for a new token.
        #[arg(
            long,
            default_value_t = 2.0,
            requires = "supervise",
            value_name = "SECS"
        )]
        poll: f64,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// Sign in with the device authorization grant (RFC 8628) for a token
    /// whose grant is refresh_token: shows a URL and a code to enter
    /// there, waits for the approval and stores the refresh token in the
    /// token's refresh_token_file (mode 0600) and its cache.
    Login {
        /// The token's name.
        name: String,
        /// The configuration file (TOML).
        #[arg(long, short, env = "FRESHTOKEN_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show every token's state (from the running agent).
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Redraw every --interval seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws.
        #[arg(long, default_value_t = 2.0, value_name = "SECS")]
        interval: f64,
        /// The agent's socket.
        #[arg(long, env = "FRESHTOKEN_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The configuration file (for the socket path).
        #[arg(long, short, env = "FRESHTOKEN_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where `token` and `exec` look.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// The configuration file (for the socket path and the fallback).
    #[arg(long, short, env = "FRESHTOKEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's socket (default: the configuration's, else the default).
    #[arg(long, env = "FRESHTOKEN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// How long to wait for a token, seconds.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub timeout: f64,
    /// Ask only the agent; never fetch.
    #[arg(long)]
    pub agent_only: bool,
    /// A token valid for at least this many more seconds: a fresh token
    /// that is not is refreshed early, once (for a long job, a presigned
    /// URL). Fails at once when the authority's tokens never live that
    /// long. With --supervise, every token the command gets.
    #[arg(long, value_parser = min_validity_arg, value_name = "SECS")]
    pub min_validity: Option<Duration>,
}

fn min_validity_arg(text: &str) -> Result<Duration, String> {
    tokens::seconds(text).ok_or_else(|| format!("{text:?} is not a number of seconds"))
}

/// The command line, `agent --help` listing every configuration key.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("agent", |agent| agent.after_long_help(config::keys_help()))
}

/// Prints a configuration error on one line; returns [`EXIT_CONFIG`].
pub fn config_failure(e: &config::ConfigError) -> i32 {
    eprintln!("freshtoken: configuration error: {e}");
    EXIT_CONFIG
}

/// The binary's entry point; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The agent logs what it does; the one-shot commands, whose stderr a
    // `$(freshtoken token api)` shows, say only their own one line unless
    // FRESHTOKEN_LOG asks for more.
    let default_level = match cli.command {
        Command::Agent { .. } => "info",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRESHTOKEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    match cli.command {
        Command::Agent { config } => {
            metrics::install();
            server::run(&config, &config::process_env())
        }
        Command::Token { name, source } => match load_optional(source.config.as_deref())
            .and_then(|loaded| obtain(&name, &source, loaded.as_ref()))
        {
            Ok(token) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", token.access_token);
                EXIT_OK
            }
            Err(code) => code,
        },
        Command::Exec {
            name,
            env,
            source,
            supervise: true,
            on_refresh,
            signal,
            token_file,
            stop_signal,
            stop_timeout,
            poll,
            command,
        } => {
            let loaded = match load_optional(source.config.as_deref()) {
                Ok(l) => l,
                Err(code) => return code,
            };
            let var = env.unwrap_or_else(|| {
                loaded
                    .as_ref()
                    .and_then(|l| l.tokens.get(&name))
                    .map(|t| t.env_var().to_owned())
                    .unwrap_or_else(|| "ACCESS_TOKEN".to_owned())
            });
            let settings = supervise::Settings {
                secrets: config::secret_variables(&config::process_env(), loaded.as_ref()),
                socket: server::socket_for(source.socket.as_deref(), loaded.as_ref()),
                name,
                var,
                command,
                on_refresh,
                signal,
                stop_signal,
                stop_timeout: timeout_of(stop_timeout),
                token_file,
                poll: timeout_of(poll).max(Duration::from_millis(100)),
                timeout: timeout_of(source.timeout),
                min_validity: source.min_validity,
            };
            supervise::run(settings, loaded.as_ref(), source.agent_only)
        }
        Command::Exec {
            name,
            env,
            source,
            command,
            ..
        } => {
            let loaded = match load_optional(source.config.as_deref()) {
                Ok(l) => l,
                Err(code) => return code,
            };
            match obtain(&name, &source, loaded.as_ref()) {
                Ok(token) => {
                    // The child gets the token, never a long-lived secret.
                    let secrets = config::secret_variables(&config::process_env(), loaded.as_ref());
                    exec(
                        &command,
                        env.as_deref().unwrap_or(&token.env_var),
                        &token,
                        &secrets,
                    )
                }
                Err(code) => code,
            }
        }
        Command::Login { name, config } => {
            login::run(&name, config.as_deref(), &mut std::io::stdout().lock())
        }
        Command::Status {
            json,
            watch,
            interval,
            socket,
            config,
        } => status(json, watch, interval, socket.as_deref(), config.as_deref()),
        Command::Completions { shell } => {
            // Generated into memory, then written: a reader that goes away
            // (`| head -3`) ends the write, not the process with a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "freshtoken", &mut script);
            let mut out = std::io::stdout().lock();
            match out.write_all(&script).and_then(|()| out.flush()) {
                Ok(()) => EXIT_OK,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
                Err(e) => {
                    eprintln!("freshtoken: cannot write the completions: {e}");
                    EXIT_FAILURE
                }
            }
        }
    }
}

/// A token obtained for `token` or `exec`.
struct Got {
    access_token: String,
    env_var: String,
}

/// The configuration from `path`; without one, from the environment alone
/// when it declares tokens (`FRESHTOKEN_TOKEN_NAMES`).
fn load_optional(path: Option<&Path>) -> Result<Option<config::Loaded>, i32> {
    let env = config::process_env();
    let declared = config::env_name(&["token_names"]);
    if path.is_none() && !env.iter().any(|(k, _)| *k == declared) {
        return Ok(None);
    }
    config::load(path, &env)
        .map(Some)
        .map_err(|e| config_failure(&e))
}

fn timeout_of(secs: f64) -> Duration {
    if secs.is_finite() && secs > 0.0 {
        Duration::from_secs_f64(secs.min(86_400.0))
    } else {
        Duration::from_secs(30)
    }
}

/// The agent's token, else the cache's, else a fetched one.
fn obtain(name: &str, args: &SourceArgs, loaded: Option<&config::Loaded>) -> Result<Got, i32> {
    let socket = server::socket_for(args.socket.as_deref(), loaded);
    let env_var = loaded
        .and_then(|l| l.tokens.get(name))
        .map(|t| t.env_var().to_owned())
        .unwrap_or_else(|| "ACCESS_TOKEN".to_owned());
    let timeout = timeout_of(args.timeout);
    let deadline = Instant::now() + timeout;
    let asked = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let path = match args.min_validity {
            None => format!("/v1/token/{name}"),
            // The agent waits (a few seconds at most) for the early refresh.
            Some(needed) => format!(
                "/v1/token/{name}?min_validity={}&wait_ms={}",
                needed.as_secs_f64(),
                left.as_millis()
            ),
        };
        let sent = Instant::now();
        let answer = client::get(&socket, &path, timeout);
        // A token valid long enough that is still coming: ask again.
        if let Ok(answer) = &answer {
            let retry = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|body| body.get("retry")?.as_bool())
                .unwrap_or(false);
            if answer.status == 503 && args.min_validity.is_some() && retry && !left.is_zero() {
                std::thread::sleep(Duration::from_millis(100).saturating_sub(sent.elapsed()));
                continue;
            }
        }
        break answer;
    };
    match asked {
        Ok(answer) => {
            let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
            return match answer.status {
                200 => match body.get("access_token").and_then(|t| t.as_str()) {
                    Some(t) => Ok(Got {
                        access_token: t.to_owned(),
                        env_var,
                    }),
                    None => {
                        eprintln!("freshtoken: the agent's answer has no access_token");
                        Err(EXIT_FAILURE)
                    }
                },
                404 => {
                    eprintln!(
                        "freshtoken: the agent on {} has no token named {name:?}",
                        socket.display()
                    );
                    Err(EXIT_NO_SUCH_TOKEN)
                }
                status => {
                    let why = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
                    eprintln!("freshtoken: no valid token for {name} (agent said {status}: {why})");
                    Err(EXIT_FAILURE)
                }
            };
        }
        Err(client::AskError::NoAgent(_)) => {}
        Err(e @ client::AskError::Untrusted(_)) => {
            eprintln!("freshtoken: {e}");
            if args.agent_only || loaded.is_none() {
                return Err(EXIT_FAILURE);
            }
        }
        Err(e) => tracing::warn!("asking the agent on {}: {e}", socket.display()),
    }
    if args.agent_only {
        eprintln!("freshtoken: no agent is listening on {}", socket.display());
        return Err(EXIT_FAILURE);
    }
    let Some(loaded) = loaded else {
        eprintln!(
            "freshtoken: no agent is listening on {} and no --config to fetch {name} with",
            socket.display()
        );
        return Err(EXIT_CONFIG);
    };
    let Some(resolved) = loaded.tokens.get(name) else {
        eprintln!("freshtoken: the configuration has no token named {name:?}");
        return Err(EXIT_NO_SUCH_TOKEN);
    };
    fetch_direct(resolved, timeout, args.min_validity).map(|access_token| Got {
        access_token,
        env_var,
    })
}

/// The cache's fresh token (valid for `min_validity` more, when given),
/// else one fetched by a driver run once.
fn fetch_direct(
    resolved: &config::Resolved,
    timeout: Duration,
    min_validity: Option<Duration>,
) -> Result<String, i32> {
    let cache = tokens::cache(resolved).map_err(|e| config_failure(&e))?;
    let long_enough = |t: &freshtoken::Token| {
        min_validity
            .is_none_or(|needed| t.expires_at().saturating_duration_since(tokens::now()) >= needed)
    };
    if let Some(cache) = &cache {
        match cache.load() {
            Ok(Some(t)) if tokens::fresh(&t) && long_enough(&t) => {
                return Ok(t.access_token().expose_secret().to_owned())
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("reading the cache: {e}"),
        }
    }
    let running =
        tokens::spawn(resolved, Duration::from_secs(30)).map_err(|e| config_failure(&e))?;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut line = StatusLine::new(&resolved.name);
    let mut last_error = None;
    let mut too_short = None;
    let token = loop {
        if let Some(needed) = min_validity {
            // Asks the driver to refresh early when the token is valid but
            // not long enough.
            match running.handle.valid_for(needed) {
                Ok(t) => break Some(t.access_token().expose_secret().to_owned()),
                // The authority's tokens never live that long.
                Err(e @ freshtoken::handle::NoValidToken::NotValidLongEnough { .. })
                    if !tokens::may_come(&e) =>
                {
                    too_short = Some(e);
                    last_error = None;
                    break None;
                }
                Err(_) => {}
            }
        }
        let snapshot = running.handle.snapshot();
        let status = tokens::status(&snapshot, running.handle.now());
        // A permanent error (a wrong secret, an unknown client, a revoked
        // grant) will not go away by waiting: give up at once.
        let permanent = match &snapshot.state {
            freshtoken::handle::RefreshState::Failed { .. } => true,
            freshtoken::handle::RefreshState::Retrying { error, .. } => matches!(
                error.kind(),
                freshtoken::FetchErrorKind::Permanent | freshtoken::FetchErrorKind::GrantRevoked
            ),
            _ => false,
        };
        last_error = snapshot.state.last_error().cloned().or(last_error);
        let give_up = permanent || Instant::now() >= deadline;
        if let Some(t) = snapshot.token.as_deref() {
            // A valid stale token (from the cache) is refreshed at once:
            // wait a little for the fresh one, else hand out the stale one.
            use freshtoken::TokenStatus::{Fresh, Stale};
            let good = status == Some(Fresh) || (status == Some(Stale) && give_up);
            if good && min_validity.is_none() {
                break Some(t.access_token().expose_secret().to_owned());
            }
        }
        if give_up {
            break None;
        }
        if started.elapsed() > Duration::from_secs(1) {
            line.show(&snapshot.state);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = running
            .handle
            .wait_changed(left.min(Duration::from_millis(250)));
    };
    line.clear();
    let why = too_short.or_else(|| running.handle.valid_token().err());
    // Drains: a store in flight (a rotated refresh token) completes.
    running.driver.shutdown_blocking();
    match token {
        Some(t) => Ok(t),
        None => {
            let why = match (last_error, why) {
                (Some(error), _) => error.to_string(),
                (None, Some(why)) => tokens::why_not(&why),
                (None, None) => "timed out".to_owned(),
            };
            eprintln!("freshtoken: no valid token for {}: {why}", resolved.name);
            Err(EXIT_FAILURE)
        }
    }
}

/// The one status line shown while waiting more than a second for a token:
/// redrawn in place on a terminal, printed once otherwise.
struct StatusLine {
    name: String,
    shown: bool,
    tty: bool,
    last: String,
}

impl StatusLine {
    fn new(name: &str) -> Self {
        StatusLine {
            name: name.to_owned(),
            shown: false,
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    fn show(&mut self, state: &freshtoken::handle::RefreshState) {
        let text = match state {
            freshtoken::handle::RefreshState::Retrying { error, attempt, .. } => {
                format!(
                    "waiting for a token for {} (attempt {attempt} failed: {error})",
                    self.name
                )
            }
            _ => format!("waiting for a token for {}", self.name),
        };
        if text == self.last || (self.shown && !self.tty) {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = terminal_width().unwrap_or(80).saturating_sub(1);
            let cut: String = text.chars().take(width).collect();
            let _ = write!(err, "\r\x1b[K{cut}");
        } else {
            let _ = writeln!(err, "freshtoken: {text}");
        }
        let _ = err.flush();
        self.shown = true;
        self.last = text;
    }

    fn clear(&mut self) {
        if self.shown && self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

fn terminal_width() -> Option<usize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stderr()))
        .ok()?;
    (size.ws_col > 0).then_some(size.ws_col as usize)
}

/// Replaces this process with `command`, the token in `var` and every
/// variable in `secrets` removed from its environment.
fn exec(command: &[std::ffi::OsString], var: &str, token: &Got, secrets: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        eprintln!("freshtoken: no command to run");
        return EXIT_CONFIG;
    };
    if var.is_empty() || var.contains('=') || var.contains('\0') {
        eprintln!("freshtoken: --env: {var:?} is not a variable name");
        return EXIT_CONFIG;
    }
    let mut child = std::process::Command::new(program);
    child.args(args);
    for secret in secrets {
        child.env_remove(secret);
    }
    let error = child.env(var, &token.access_token).exec();
    eprintln!(
        "freshtoken: cannot run {}: {error}",
        Path::new(program).display()
    );
    if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

fn status(
    json: bool,
    watch: bool,
    interval: f64,
    socket: Option<&Path>,
    config: Option<&Path>,
) -> i32 {
    let loaded = match load_optional(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let socket = server::socket_for(socket, loaded.as_ref());
    let interval = timeout_of(interval).max(Duration::from_millis(100));
    loop {
        let answer = match client::get(&socket, "/v1/status", Duration::from_secs(5)) {
            Ok(a) if a.status == 200 => a,
            Ok(a) => {
                eprintln!("freshtoken: the agent answered {}", a.status);
                return EXIT_FAILURE;
            }
            Err(e @ client::AskError::NoAgent(_)) => {
                eprintln!(
                    "freshtoken: {e} on {}: start `freshtoken agent`, or name its socket with \
                     --config FILE or --socket PATH",
                    socket.display()
                );
                return EXIT_FAILURE;
            }
            Err(e) => {
                eprintln!("freshtoken: {} ({})", e, socket.display());
                return EXIT_FAILURE;
            }
        };
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        let text = if json {
            serde_json::to_string_pretty(&body).unwrap_or_default()
        } else {
            table(&body, if watch { terminal_width() } else { None })
        };
        let mut out = std::io::stdout().lock();
        if watch {
            // Home, clear, draw: one screen that redraws in place.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
        if !watch {
            return EXIT_OK;
        }
        std::thread::sleep(interval);
    }
}

/// The status table, then one line per token whose lifetime the library
/// had to decide on the authority's behalf (its `lifetime_note`, e.g. the
/// authority's refresh hint); lines cut to `width` when given.
pub fn table(body: &serde_json::Value, width: Option<usize>) -> String {
    let empty = Vec::new();
    let tokens = body
        .get("tokens")
        .and_then(|t| t.as_array())
        .unwrap_or(&empty);
    let mut rows = vec![[
        "NAME".to_owned(),
        "STATE".to_owned(),
        "TOKEN".to_owned(),
        "EXPIRES IN".to_owned(),
        "FETCHES".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    for t in tokens {
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
        let expires = match t.get("expires_in").and_then(|v| v.as_i64()) {
            Some(secs) if secs >= 0 => format!("{secs}s"),
            Some(secs) => format!("expired {}s ago", -secs),
            None => "-".to_owned(),
        };
        rows.push([
            s("name"),
            s("state"),
            s("token"),
            expires,
            t.get("fetches")
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
                .to_string(),
            s("last_error"),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            line.trim_end().to_owned()
        })
        .collect();
    let notes: Vec<String> = tokens
        .iter()
        .filter_map(|t| {
            let text = t.get("lifetime_note")?.get("text")?.as_str()?;
            let name = t.get("name").and_then(|v| v.as_str()).unwrap_or("-");
            Some(format!("{name}: {text}"))
        })
        .collect();
    if !notes.is_empty() {
        lines.push(String::new());
        lines.extend(notes);
    }
    let mut out = String::new();
    for line in &lines {
        match width {
            Some(w) => out.extend(line.chars().take(w)),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.pop();
    out
}
