//! A real PostgreSQL server for tests: a fresh cluster (`initdb`) in a
//! temporary directory, started on a free loopback port, stopped (like a
//! crash) and restarted on demand, stopped on drop.
//!
//! `initdb` and `postgres` refuse to run as root; when the tests run as
//! root (CI does), both run as the `postgres` user (`runuser -u postgres`)
//! in a directory that user owns. Debian's `postgresql` package (installed
//! by `.ci/setup-postgres.sh`) provides the binaries and the user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the test cluster is made with (no password: trust on
/// loopback).
pub const USER: &str = "freshtoken";

/// A `postgres` server owned by a test.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    tls: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PostgresServer {
    /// Starts a server on a free port of 127.0.0.1, plain TCP.
    ///
    /// Panics with instructions when PostgreSQL is not installed.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that accepts only TLS connections on TCP, with a
    /// fresh CA (see [`ca_pem`](Self::ca_pem)) and a certificate for
    /// 127.0.0.1 and localhost, made with the `openssl` command.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = bin_dir();
        // As root, in /tmp itself: the `postgres` user must be able to reach
        // the directory, which a private TMPDIR (under /root) would forbid.
        let mut builder = tempfile::Builder::new();
        builder.prefix("freshtoken-pg-");
        let dir = if as_root() {
            builder.tempdir_in("/tmp")
        } else {
            builder.tempdir()
        }
        .expect("a temporary directory for PostgreSQL");
        let data = dir.path().join("data");
        if as_root() {
            give_to_postgres(dir.path());
        }
        let out = server_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run initdb ({e}); install PostgreSQL with .ci/setup-postgres.sh")
            });
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hba = if tls {
            // TLS only over TCP; the unix socket (for the test's own psql) stays.
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
        } else {
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
        };
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if tls {
            crate::redis_server::make_certificates(dir.path());
            let key = dir.path().join("server.key");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod server.key");
            }
            if as_root() {
                give_to_postgres(dir.path());
            }
        }
        std::fs::create_dir_all(dir.path().join("sock")).expect("socket directory");
        if as_root() {
            give_to_postgres(dir.path());
        }
        let mut server = PostgresServer {
            bin,
            port: free_port(),
            tls,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for the cache (`host=127.0.0.1 port=... user=...
    /// dbname=postgres`, plus `sslmode=require` for a TLS server).
    pub fn conn_str(&self) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={USER} dbname=postgres",
            self.port
        );
        if self.tls {
            s.push_str(" sslmode=require");
        }
        s
    }

    /// The test CA's certificate (PEM), for a TLS server.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("the test CA certificate")
    }

    /// Runs `sql` with `psql` over the unix socket and returns its output
    /// (unaligned, tuples only). Panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .psql_command()
            .arg("-c")
            .arg(sql)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A `psql` command on the unix socket, for sessions the test drives
    /// through stdin (such as one that holds a row lock).
    pub fn psql_command(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.arg("-h")
            .arg(self.dir.path().join("sock"))
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", "postgres"])
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]);
        cmd
    }

    /// Stops the server like a crash (immediate shutdown: no checkpoint,
    /// every session cut) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The postmaster's pid (the child may be runuser, which waits for it).
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned));
        match pid {
            Some(pid) => {
                let _ = Command::new("kill").args(["-QUIT", &pid]).status();
            }
            None => {
                let _ = child.kill();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// (Re)starts the server on the same port and data directory (the
    /// table and its rows survive), and waits until it accepts sessions.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = server_command(&self.bin, "postgres");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            // fsync off (the OS keeps what was written: a test needs no
            // durability across power loss); synchronous_commit stays on, so
            // a commit is in the WAL before the crash-like stop of `stop`.
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=100"])
            .args([
                "-c",
                "logging_collector=off",
                "-c",
                "log_min_messages=fatal",
            ]);
        if self.tls {
            let dir = self.dir.path();
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    dir.join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start postgres ({e}); install it with .ci/setup-postgres.sh")
            });
        self.child = Some(child);
        self.wait_ready();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited at start-up: {status}");
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "postgres did not become ready within 30 s on port {}",
            self.port
        );
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `initdb` and `postgres` are: on PATH, or in Debian's versioned
/// directory (the newest one).
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").is_file() && p.join("pg_isready").is_file())
    });
    if let Some(dir) = on_path {
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql); \
             run .ci/setup-postgres.sh (apt-get install postgresql)"
        )
    })
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A server binary, run as the `postgres` user when we are root.
fn server_command(bin: &Path, name: &str) -> Command {
    if as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(name));
        cmd
    } else {
        Command::new(bin.join(name))
    }
}

/// Hands `dir` and everything in it to the `postgres` user.
fn give_to_postgres(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(
        status.success(),
        "chown -R postgres {}: is Debian's postgresql package installed (.ci/setup-postgres.sh)?",
        dir.display()
    );
}

/// A port that was free a moment ago (the OS picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
