//! The agent as a real process, for the tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use freshtoken::testing::LocalAuthority;
pub use freshtoken_agent::client;
pub use rustix::process::Signal;

/// The `freshtoken` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_freshtoken")
}

/// A command for the binary with no `FRESHTOKEN_*` variable inherited.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FRESHTOKEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("FRESHTOKEN_LOG", "info");
    cmd
}

/// Writes a file with `mode`.
pub fn write_file(path: &Path, content: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_owned()
}

/// A free loopback TCP port (bound and released: good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 10 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `freshtoken agent`; killed (SIGKILL) if still running when
/// dropped.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `freshtoken agent --config <config>` with `env` added; its
    /// stderr goes to `<dir>/agent.log`.
    pub fn start(config: &Path, socket: &Path, dir: &Path, env: &[(&str, &str)]) -> Agent {
        Agent::start_as(config, socket, dir, env, None)
    }

    /// [`Agent::start`], run as the user `uid` when given (the test runs
    /// as root).
    pub fn start_as(
        config: &Path,
        socket: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        uid: Option<u32>,
    ) -> Agent {
        use std::os::unix::process::CommandExt;
        let log = dir.join("agent.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = command();
        cmd.arg("agent")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("start the agent");
        Agent {
            child,
            socket: socket.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: Signal) {
        // Our own child, not waited for yet: its pid cannot have been reused.
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("a child pid");
        rustix::process::kill_process(pid, signal).expect("kill failed");
    }

    /// GET on the agent's socket.
    pub fn get(&self, path: &str) -> Result<client::Answer, client::AskError> {
        client::get(&self.socket, path, Duration::from_secs(5))
    }

    /// The JSON body of a 200 answer to GET `path`, if the agent gave one.
    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let answer = self.get(path).ok()?;
        (answer.status == 200)
            .then(|| serde_json::from_slice(&answer.body).ok())
            .flatten()
    }

    /// Waits until /healthz says 200.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let ok = wait_for(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the agent exited ({status}): {}", self.log_text());
            }
            self.get("/healthz").ok().filter(|a| a.status == 200)
        });
        assert!(
            ok.is_some(),
            "the agent never got healthy: {}",
            self.log_text()
        );
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A config with one client-credentials token named `name`.
pub fn cc_token(name: &str, url: &str, client: &str, secret_file: &Path, extra: &str) -> String {
    format!(
        "[tokens.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{client}\"\nclient_secret_file = \"{}\"\n{extra}\n",
        secret_file.display()
    )
}

/// What most agent tests start from: a [`LocalAuthority`] with client
/// `svc` (secret `s3cret-value`; tokens of `lifetime`, or its default),
/// that secret in a 0600 file in `dir`, and a 0600 `agent.toml` there with
/// the agent's socket (`socket`, under `dir`) and one client-credentials
/// token, `api`, whose table ends with `extra`.
pub struct OneToken {
    pub authority: LocalAuthority,
    pub config: PathBuf,
    pub socket: PathBuf,
}

/// See [`OneToken`].
pub fn one_token(dir: &Path, socket: &str, lifetime: Option<Duration>, extra: &str) -> OneToken {
    let mut authority = LocalAuthority::builder().client("svc", "s3cret-value");
    if let Some(lifetime) = lifetime {
        authority = authority.token_lifetime(lifetime);
    }
    let authority = authority.start().expect("the local authority");
    let secret = write_file(&dir.join("svc.secret"), "s3cret-value", 0o600);
    let socket = dir.join(socket);
    let config = write_file(
        &dir.join("agent.toml"),
        &format!(
            "[agent]\nsocket = \"{}\"\n\n{}",
            socket.display(),
            cc_token("api", &authority.token_url(), "svc", &secret, extra)
        ),
        0o600,
    );
    OneToken {
        authority,
        config,
        socket,
    }
}

/// The `api` token's table for a JSON token file at `path`.
pub fn json_token_file(path: &Path) -> String {
    format!(
        "[tokens.api.file]\npath = \"{}\"\nformat = \"json\"\n",
        path.display()
    )
}

/// One raw HTTP/1.1 request: `GET path` with `headers` (each a full
/// `Name: value` line) over `stream`; the status and the body.
pub fn raw_get(
    mut stream: impl std::io::Read + std::io::Write,
    path: &str,
    headers: &[&str],
) -> Option<(u16, String)> {
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// [`raw_get`] on the loopback TCP `port`.
pub fn tcp_get(port: u16, path: &str, headers: &[&str]) -> Option<(u16, String)> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    raw_get(s, path, headers)
}

/// [`raw_get`] on the Unix socket at `socket`, without the client's checks.
pub fn unix_get(socket: &Path, path: &str) -> Option<(u16, String)> {
    let s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    raw_get(s, path, &["Host: localhost"])
}

/// Runs `cmd` to its end, as `Command::output` does, but kills it if it is
/// still running after `timeout` (an agent that should have refused to
/// start): its exit code (`None` when killed), stdout and stderr.
pub fn output_within(mut cmd: Command, timeout: Duration) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for(timeout, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.and_then(|s| s.code()), read(&out), read(&err))
}
