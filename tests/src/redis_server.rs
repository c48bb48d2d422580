//! A real `redis-server` for tests: started on a free loopback port or a
//! unix socket in a temporary directory, stopped (and restartable) on demand,
//! killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the server listens.
#[derive(Clone, Debug)]
enum Endpoint {
    Tcp(u16),
    Unix(PathBuf),
    /// TLS only, with a CA and server certificate made for the test.
    Tls(u16),
}

/// A `redis-server` process owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    endpoint: Endpoint,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Whether `redis-server` can be run here (benchmarks skip Redis
/// without it; tests fail with a clear message instead).
pub fn available() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
}

impl RedisServer {
    /// Whether `redis-server` can be run here (benchmarks skip Redis
    /// without it; tests fail with a clear message instead).
    pub fn available() -> bool {
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok()
    }

    /// Starts a server on a free port of 127.0.0.1.
    ///
    /// Panics with instructions when `redis-server` is not installed.
    pub fn start_tcp() -> Self {
        let port = free_port();
        Self::start(Endpoint::Tcp(port))
    }

    /// Starts a server listening only on a unix socket in a temporary directory.
    pub fn start_unix() -> Self {
        Self::start(Endpoint::Unix(PathBuf::new()))
    }

    /// Starts a TLS-only server on a free port of 127.0.0.1, with a fresh CA
    /// (see [`ca_pem`](Self::ca_pem)) and a certificate for 127.0.0.1 and
    /// localhost, made with the `openssl` command.
    pub fn start_tls() -> Self {
        Self::start(Endpoint::Tls(free_port()))
    }

    /// The test CA's certificate (PEM), for a TLS server.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("the test CA certificate")
    }

    fn start(endpoint: Endpoint) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let endpoint = match endpoint {
            Endpoint::Unix(_) => Endpoint::Unix(dir.path().join("redis.sock")),
            tcp => tcp,
        };
        if let Endpoint::Tls(_) = endpoint {
            make_certificates(dir.path());
        }
        let mut server = RedisServer {
            endpoint,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// The URL to connect to (`redis://127.0.0.1:<port>/` or `redis+unix://<path>`).
    pub fn url(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(port) => format!("redis://127.0.0.1:{port}/"),
            Endpoint::Unix(path) => format!("redis+unix://{}", path.display()),
            Endpoint::Tls(port) => format!("rediss://127.0.0.1:{port}/"),
        }
    }

    /// Stops the server (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same endpoint, with an empty dataset, and
    /// waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("redis-server");
        // Arguments, not a config file: no persistence, loopback only.
        cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--loglevel", "warning"]);
        match &self.endpoint {
            Endpoint::Tcp(port) => {
                cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
            }
            Endpoint::Unix(path) => {
                cmd.args(["--port", "0", "--unixsocketperm", "700", "--unixsocket"])
                    .arg(path);
            }
            Endpoint::Tls(port) => {
                let dir = self.dir.path();
                cmd.args(["--bind", "127.0.0.1", "--port", "0"])
                    .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(dir.join("server.crt"))
                    .arg("--tls-key-file")
                    .arg(dir.join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.join("ca.crt"));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it with .ci/setup-redis.sh \
                     (apt-get install redis-server) so that it is on PATH"
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server exited at start-up: {status}");
            }
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server did not become ready within 10 s at {}",
            self.url()
        );
    }

    /// Whether the server answers `PING`.
    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        fn exchange(mut s: impl Read + Write) -> bool {
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
        }
        match &self.endpoint {
            Endpoint::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).is_ok_and(exchange),
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                std::os::unix::net::UnixStream::connect(path).is_ok_and(exchange)
            }
            #[cfg(not(unix))]
            Endpoint::Unix(_) => false,
            // Listening is enough here; the client under test does the TLS.
            Endpoint::Tls(port) => TcpStream::connect(("127.0.0.1", *port)).is_ok(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate signed by it, valid for 127.0.0.1 and
/// localhost, written to `dir` as ca.crt, server.crt and server.key.
pub(crate) fn make_certificates(dir: &std::path::Path) {
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write openssl extension file");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"][..],
            &ec,
            &["-days", "2", "-subj", "/CN=freshtoken test CA"],
        ]
        .concat()
        .into_iter()
        .chain([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .chain(["-keyout", "ca.key", "-out", "ca.crt"])
        .collect(),
        [
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl ({e}); it makes the TLS test's certificates")
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A port that was free a moment ago (the OS picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
