//! `freshtoken exec --supervise`: run a command and keep it fed with the
//! current token, as Vault Agent's exec mode does.
//!
//! Without `--supervise`, `exec` replaces itself with the command, the token
//! in its environment: right for a job that ends before its token does.
//! With it, `exec` stays the command's parent:
//!
//! * **The child keeps running.** It starts with the token in its variable
//!   (`ACCESS_TOKEN`, or the token's `env_var`) and, with `--token-file`,
//!   the token written to that file (0600, atomically) and the file's path
//!   in `<VAR>_FILE`. The variables the configuration reads secrets from
//!   are removed from its environment, as for a plain `exec`.
//! * **Every new token reaches it.** `--on-refresh signal` (the default)
//!   rewrites the token file, then sends the child `--signal` (SIGHUP by
//!   default): a running process's environment cannot change, so the file
//!   is how it reads the new token, and this mode needs `--token-file`.
//!   `--on-refresh restart` stops the child (`--stop-signal`, SIGTERM by
//!   default; SIGKILL after `--stop-timeout`) and starts it again with the
//!   new token in its variable. Restarts are spaced by a backoff: at least
//!   a second apart, doubling (up to a minute) while they come in quick
//!   succession, so a burst of new tokens cannot keep the child from ever
//!   starting properly; the newest token is used when the wait ends.
//! * **Its exit status passes through.** When the child exits on its own,
//!   `exec` exits with its code (128 + the signal's number when a signal
//!   ended it, as shells report it). A child that dies is never started
//!   again by `exec`: a crash loop is for the service manager above to see
//!   and to back off from.
//! * **Signals sent to `exec` are forwarded** to the child (SIGTERM,
//!   SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH), and `exec` exits
//!   when the child does.
//!
//! Where new tokens come from: the agent's socket, asked every `--poll`
//! seconds, when an agent runs; otherwise the library's driver, in this
//! process, from the configuration (its cache and lease shared with
//! everyone else using the token).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::{client, config, tokens, EXIT_CONFIG, EXIT_FAILURE, EXIT_NO_SUCH_TOKEN};

/// What to do with the child when a new token comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRefresh {
    /// Rewrite the token file, then send the configured signal.
    Signal,
    /// Stop the child and start it again with the new token.
    Restart,
}

/// The settings of a supervised `exec`.
#[derive(Debug)]
pub struct Settings {
    /// The token's name.
    pub name: String,
    /// The variable the token goes in.
    pub var: String,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// What a new token does.
    pub on_refresh: OnRefresh,
    /// The signal sent on a new token (signal mode).
    pub signal: Signal,
    /// The signal that stops the child for a restart.
    pub stop_signal: Signal,
    /// How long a stopping child has before SIGKILL.
    pub stop_timeout: Duration,
    /// The token file, if any.
    pub token_file: Option<PathBuf>,
    /// How often the agent is asked for a new token.
    pub poll: Duration,
    /// How long to wait for the first token.
    pub timeout: Duration,
    /// Every token handed to the command is valid for at least this long.
    pub min_validity: Option<Duration>,
    /// The agent's socket.
    pub socket: PathBuf,
    /// Variables removed from the child's environment.
    pub secrets: Vec<String>,
}

/// A signal name or number as a command-line value.
pub fn signal_arg(name: &str) -> Result<Signal, String> {
    parse_signal(name)
        .ok_or_else(|| format!("{name:?} is not a signal (HUP, TERM, USR1, ... or a number)"))
}

/// Parses a signal name (`HUP`, `SIGHUP`) or number.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let by_name = match bare {
        "HUP" => Some(Signal::HUP),
        "INT" => Some(Signal::INT),
        "QUIT" => Some(Signal::QUIT),
        "TERM" => Some(Signal::TERM),
        "USR1" => Some(Signal::USR1),
        "USR2" => Some(Signal::USR2),
        "KILL" => Some(Signal::KILL),
        "WINCH" => Some(Signal::WINCH),
        "ALRM" => Some(Signal::ALARM),
        _ => None,
    };
    by_name.or_else(|| bare.parse::<i32>().ok().and_then(Signal::from_named_raw))
}

/// Where new tokens come from.
enum Feed {
    /// The agent, asked every `poll`.
    Agent { socket: PathBuf, name: String },
    /// The library's driver, in this process.
    Driver(tokens::Running),
}

impl Feed {
    /// The current valid token (valid for `min_validity` more, when
    /// given: a shorter-lived one is refreshed early), if there is one now.
    fn current(&self, min_validity: Option<Duration>) -> Option<String> {
        match self {
            Feed::Agent { socket, name } => {
                let path = match min_validity {
                    None => format!("/v1/token/{name}"),
                    Some(needed) => {
                        format!("/v1/token/{name}?min_validity={}", needed.as_secs_f64())
                    }
                };
                let answer = client::get(socket, &path, Duration::from_secs(5)).ok()?;
                if answer.status != 200 {
                    return None;
                }
                let body: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
                body.get("access_token")?.as_str().map(str::to_owned)
            }
            Feed::Driver(running) => match min_validity {
                None => running.handle.valid_token(),
                Some(needed) => running.handle.valid_for(needed),
            }
            .ok()
            .map(|t| t.access_token().expose_secret().to_owned()),
        }
    }

    fn stop(self) {
        if let Feed::Driver(running) = self {
            running.driver.shutdown_blocking();
        }
    }
}

/// Runs the supervised command; returns the exit code.
pub fn run(settings: Settings, loaded: Option<&config::Loaded>, agent_only: bool) -> i32 {
    if settings.on_refresh == OnRefresh::Signal && settings.token_file.is_none() {
        eprintln!(
            "freshtoken: --on-refresh signal needs --token-file: a running process's \
             environment cannot change, so the file is how it reads the new token"
        );
        return EXIT_CONFIG;
    }
    if settings.var.is_empty() || settings.var.contains('=') || settings.var.contains('\0') {
        eprintln!(
            "freshtoken: --env: {:?} is not a variable name",
            settings.var
        );
        return EXIT_CONFIG;
    }
    if settings.command.is_empty() {
        eprintln!("freshtoken: no command to run");
        return EXIT_CONFIG;
    }
    // Signals first, so one sent while the first token comes is seen.
    let (tx, signals) = mpsc::channel::<i32>();
    let mut hook = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGUSR2,
        signal_hook::consts::SIGWINCH,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("freshtoken: cannot handle signals: {e}");
            return EXIT_FAILURE;
        }
    };
    let hook_handle = hook.handle();
    let forwarder = std::thread::spawn(move || {
        for signal in hook.forever() {
            if tx.send(signal).is_err() {
                break;
            }
        }
    });
    let code = supervise(&settings, loaded, agent_only, &signals);
    hook_handle.close();
    let _ = forwarder.join();
    code
}

fn feed(
    settings: &Settings,
    loaded: Option<&config::Loaded>,
    agent_only: bool,
) -> Result<Feed, i32> {
    match client::get(
        &settings.socket,
        &format!("/v1/token/{}", settings.name),
        Duration::from_secs(5),
    ) {
        Ok(answer) if answer.status == 404 => {
            eprintln!(
                "freshtoken: the agent on {} has no token named {:?}",
                settings.socket.display(),
                settings.name
            );
            return Err(EXIT_NO_SUCH_TOKEN);
        }
        Ok(_) => {
            return Ok(Feed::Agent {
                socket: settings.socket.clone(),
                name: settings.name.clone(),
            })
        }
        Err(client::AskError::NoAgent(_)) => {}
        Err(e) => {
            eprintln!("freshtoken: {e}");
            if agent_only || loaded.is_none() {
                return Err(EXIT_FAILURE);
            }
        }
    }
    if agent_only {
        eprintln!(
            "freshtoken: no agent is listening on {}",
            settings.socket.display()
        );
        return Err(EXIT_FAILURE);
    }
    let Some(loaded) = loaded else {
        eprintln!(
            "freshtoken: no agent is listening on {} and no --config to fetch {} with",
            settings.socket.display(),
            settings.name
        );
        return Err(EXIT_CONFIG);
    };
    let Some(resolved) = loaded.tokens.get(&settings.name) else {
        eprintln!(
            "freshtoken: the configuration has no token named {:?}",
            settings.name
        );
        return Err(EXIT_NO_SUCH_TOKEN);
    };
    tokens::spawn(resolved, Duration::from_secs(30))
        .map(Feed::Driver)
        .map_err(|e| crate::config_failure(&e))
}

/// Sends `signal` to the child, which has not been reaped (so its pid is
/// still its own).
fn send(child: &Child, signal: Signal) {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        if let Err(e) = rustix::process::kill_process(pid, signal) {
            tracing::warn!("cannot signal the child: {e}");
        }
    }
}

/// The shell's view of an exit status: the code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(EXIT_FAILURE)
}

fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    crate::sink::write_atomic(path, token.as_bytes(), 0o600, None, None)
}

fn start(settings: &Settings, token: &str) -> std::io::Result<Child> {
    let (program, args) = settings.command.split_first().expect("checked: a command");
    let mut command = Command::new(program);
    command.args(args);
    for secret in &settings.secrets {
        command.env_remove(secret);
    }
    command.env(&settings.var, token);
    if let Some(file) = &settings.token_file {
        command.env(format!("{}_FILE", settings.var), file);
    }
    command.spawn()
}

/// The spacing of restarts: at least a second, doubling up to a minute
/// while restarts follow each other within twice the current spacing.
struct RestartBackoff {
    delay: Duration,
    last: Option<Instant>,
}

impl RestartBackoff {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn new() -> Self {
        RestartBackoff {
            delay: Self::MIN,
            last: None,
        }
    }

    /// When the next restart may happen.
    fn allowed_at(&self) -> Option<Instant> {
        self.last.map(|l| l + self.delay)
    }

    fn restarted(&mut self, now: Instant) {
        if let Some(last) = self.last {
            if now.saturating_duration_since(last) < self.delay * 2 {
                self.delay = (self.delay * 2).min(Self::MAX);
            } else {
                self.delay = Self::MIN;
            }
        }
        self.last = Some(now);
    }
}

fn supervise(
    settings: &Settings,
    loaded: Option<&config::Loaded>,
    agent_only: bool,
    signals: &mpsc::Receiver<i32>,
) -> i32 {
    let feed = match feed(settings, loaded, agent_only) {
        Ok(f) => f,
        Err(code) => return code,
    };
    // The first token.
    let deadline = Instant::now() + settings.timeout;
    let mut token = loop {
        if let Some(t) = feed.current(settings.min_validity) {
            break t;
        }
        if Instant::now() >= deadline {
            eprintln!("freshtoken: no valid token for {} in time", settings.name);
            feed.stop();
            return EXIT_FAILURE;
        }
        if let Ok(signal) = signals.recv_timeout(Duration::from_millis(100)) {
            if [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT].contains(&signal) {
                feed.stop();
                return 128 + signal;
            }
        }
    };
    if let Some(file) = &settings.token_file {
        if let Err(e) = write_token_file(file, &token) {
            eprintln!("freshtoken: cannot write {}: {e}", file.display());
            feed.stop();
            return EXIT_FAILURE;
        }
    }
    let mut child = match start(settings, &token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "freshtoken: cannot run {}: {e}",
                Path::new(&settings.command[0]).display()
            );
            feed.stop();
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let poll = match &feed {
        Feed::Agent { .. } => settings.poll,
        // The driver publishes in this process: looking is cheap.
        Feed::Driver(_) => Duration::from_millis(100),
    };
    let mut next_look = Instant::now() + poll;
    let mut backoff = RestartBackoff::new();
    // The first start counts: a token that comes right after it waits.
    backoff.restarted(Instant::now());
    let mut pending: Option<String> = None;
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break exit_code(status),
            Ok(None) => {}
            Err(e) => {
                eprintln!("freshtoken: cannot wait for the child: {e}");
                break EXIT_FAILURE;
            }
        }
        match signals.recv_timeout(Duration::from_millis(50)) {
            Ok(raw) => {
                if let Some(signal) = Signal::from_named_raw(raw) {
                    send(&child, signal);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        let now = Instant::now();
        if now >= next_look {
            next_look = now + poll;
            if let Some(t) = feed.current(settings.min_validity).filter(|t| *t != token) {
                pending = Some(t);
            }
        }
        let Some(new) = pending.take() else { continue };
        match settings.on_refresh {
            OnRefresh::Signal => {
                let file = settings
                    .token_file
                    .as_deref()
                    .expect("checked: a token file");
                match write_token_file(file, &new) {
                    Ok(()) => {
                        tracing::info!(
                            "new token for {}: file rewritten, child signalled",
                            settings.name
                        );
                        send(&child, settings.signal);
                        token = new;
                    }
                    Err(e) => {
                        tracing::warn!("cannot write {}: {e}; trying again", file.display());
                        pending = Some(new);
                    }
                }
            }
            OnRefresh::Restart => {
                if backoff.allowed_at().is_some_and(|at| now < at) {
                    pending = Some(new);
                    continue;
                }
                tracing::info!("new token for {}: restarting the child", settings.name);
                match stop(&mut child, settings, signals) {
                    Ok(()) => {}
                    Err(code) => break code,
                }
                if let Some(file) = &settings.token_file {
                    if let Err(e) = write_token_file(file, &new) {
                        eprintln!("freshtoken: cannot write {}: {e}", file.display());
                        break EXIT_FAILURE;
                    }
                }
                backoff.restarted(Instant::now());
                child = match start(settings, &new) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("freshtoken: cannot run the command again: {e}");
                        break 126;
                    }
                };
                token = new;
            }
        }
    };
    feed.stop();
    code
}

/// Stops the child for a restart: the stop signal, SIGKILL after the stop
/// timeout. A SIGTERM or SIGINT to `exec` meanwhile ends the restart:
/// `Err` with the code to exit with once the child is gone.
fn stop(child: &mut Child, settings: &Settings, signals: &mpsc::Receiver<i32>) -> Result<(), i32> {
    send(child, settings.stop_signal);
    let deadline = Instant::now() + settings.stop_timeout;
    let mut ending = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return match ending {
                Some(_) => Err(exit_code(status)),
                None => Ok(()),
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait();
            return match (ending, status) {
                (Some(_), Ok(s)) => Err(exit_code(s)),
                (Some(code), Err(_)) => Err(code),
                (None, _) => Ok(()),
            };
        }
        if let Ok(raw) = signals.recv_timeout(Duration::from_millis(50)) {
            if let Some(signal) = Signal::from_named_raw(raw) {
                send(child, signal);
            }
            if [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT].contains(&raw) {
                ending = Some(128 + raw);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(parse_signal("HUP"), Some(Signal::HUP));
        assert_eq!(parse_signal("sigusr1"), Some(Signal::USR1));
        assert_eq!(parse_signal("15"), Some(Signal::TERM));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }

    #[test]
    fn restarts_back_off_while_they_come_quickly() {
        let mut b = RestartBackoff::new();
        let t0 = Instant::now();
        b.restarted(t0);
        assert_eq!(b.allowed_at(), Some(t0 + Duration::from_secs(1)));
        b.restarted(t0 + Duration::from_secs(1));
        assert_eq!(b.delay, Duration::from_secs(2));
        b.restarted(t0 + Duration::from_secs(3));
        assert_eq!(b.delay, Duration::from_secs(4));
        // A quiet spell resets it.
        b.restarted(t0 + Duration::from_secs(60));
        assert_eq!(b.delay, Duration::from_secs(1));
        for i in 0..20 {
            b.restarted(t0 + Duration::from_secs(61 + i));
        }
        assert_eq!(b.delay, Duration::from_secs(60));
    }
}
