//! A real `redis-server` for tests: started on a free loopback port or a
//! unix socket in a temporary directory, stopped (and restartable) on demand,
//! killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use freshtoken::cache::{AsyncRedisCache, RedisCache, RedisCacheBuilder};

/// The connect and command timeouts of [`RedisServer::cache`].
const TEST_TIMEOUT: Duration = Duration::from_millis(500);

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

    /// A [`RedisCache`] at `key` on this server (TCP or unix socket), with
    /// 500 ms connect and command timeouts, so a test fails fast instead of
    /// hanging.
    pub fn cache(&self, key: &str) -> RedisCache {
        RedisCache::new(&self.url(), key)
            .expect("a cache on the test server")
            .with_connect_timeout(TEST_TIMEOUT)
            .with_command_timeout(TEST_TIMEOUT)
    }

    /// The async twin of [`cache`](Self::cache).
    pub fn async_cache(&self, key: &str) -> AsyncRedisCache {
        AsyncRedisCache::new(&self.url(), key)
            .expect("an async cache on the test server")
            .with_connect_timeout(TEST_TIMEOUT)
            .with_command_timeout(TEST_TIMEOUT)
    }

    /// A plain connection, to read or plant raw values.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("a connection to the test server")
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
pub fn make_certificates(dir: &std::path::Path) {
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

/// Starts `redis-server` with `args` (no persistence, loopback only, its
/// files in `dir`) and waits until it answers `PING` on `port`; for a
/// node restarted on the port it had.
fn spawn_node(dir: &std::path::Path, port: u16, args: &[&str]) -> Child {
    try_spawn_node(dir, port, args).unwrap_or_else(|why| panic!("{why}"))
}

/// Starts a node on a free port (its files in `dir_for(port)`): a port
/// that another process took between the pick and the start (a test's
/// server in another binary, say) is given up for another.
fn spawn_on_free_port(dir_for: impl Fn(u16) -> std::path::PathBuf, args: &[&str]) -> (u16, Child) {
    let mut last = String::new();
    for _ in 0..8 {
        let port = free_port();
        match try_spawn_node(&dir_for(port), port, args) {
            Ok(child) => return (port, child),
            Err(why) => last = why,
        }
    }
    panic!("no free port for redis-server after 8 tries: {last}");
}

/// Starts `redis-server` on `port` and waits until it answers `PING`
/// there, and is the process started (another server that took the port
/// first answers too, while ours exits at start-up): `Err` when it exited.
fn try_spawn_node(dir: &std::path::Path, port: u16, args: &[&str]) -> Result<Child, String> {
    // The helpers talk to the nodes through redis-cli: say so if it is missing.
    if let Err(e) = Command::new("redis-cli").arg("--version").output() {
        panic!(
            "cannot run redis-cli ({e}); install it with .ci/setup-redis-ha.sh \
             (apt-get install redis-tools) so that it is on PATH"
        );
    }
    std::fs::create_dir_all(dir).expect("a node directory");
    let mut cmd = Command::new("redis-server");
    cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args(["--loglevel", "warning"])
        // A replica that (re)joins is synced at once, not after the default
        // 5 s wait for more replicas to share a diskless transfer: after a
        // failover, the promoted primary can acknowledge `WAIT` again
        // within a second of the old one coming back.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start redis-server ({e}); install it with .ci/setup-redis.sh \
             (apt-get install redis-server) so that it is on PATH"
        )
    });
    let ours = format!("process_id:{}", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited at start-up: {status}"
            ));
        }
        let answering = query(port, &["INFO", "server"]);
        if answering.is_some_and(|info| info.lines().any(|l| l.trim() == ours)) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {port} did not become ready within 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One command to the server on `port` through `redis-cli`, its output
/// trimmed; `None` if it failed.
pub fn query(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `builder` with replica acknowledgements waited for up to 2 s (and a
/// 3 s command timeout, which caps that wait at three quarters of it)
/// instead of the default 250 ms: a test checks whether a write is
/// acknowledged, not how fast, and a loaded machine (set-ups started in
/// parallel, one core taken) has missed 250 ms on the first store to a
/// fresh cluster.
pub fn patient_acks(builder: RedisCacheBuilder) -> RedisCacheBuilder {
    builder
        .command_timeout(Duration::from_secs(3))
        .replica_acks(1, Duration::from_secs(2))
}

/// Whether the server on `port` answers `ROLE` as a primary.
pub fn is_primary(port: u16) -> bool {
    query(port, &["ROLE"]).is_some_and(|r| r.starts_with("master"))
}

/// How far a primary's replicas had got when its writes were paused (see
/// [`pause_writes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    /// The primary's replication offset (`master_repl_offset`).
    pub primary_offset: u64,
    /// Each replica's port and the offset it had processed
    /// (`slave_repl_offset`, asked of the replica itself: the primary's own
    /// view is the replica's last acknowledgement, up to a second old).
    pub replicas: Vec<(u16, u64)>,
}

impl Replication {
    /// Whether every replica had everything the primary had written.
    pub fn caught_up(&self) -> bool {
        !self.replicas.is_empty()
            && self
                .replicas
                .iter()
                .all(|&(_, offset)| offset >= self.primary_offset)
    }
}

/// Pauses client writes on the primary on `port` (`CLIENT PAUSE <ms>
/// WRITE`: replication goes on, no new write comes in), then reads how far
/// its replicas had got, once, without waiting for them: the state that a
/// crash right now would leave. The caller kills the primary next.
pub fn pause_writes(port: u16, pause: Duration) -> Replication {
    let ms = pause.as_millis().to_string();
    let paused = query(port, &["CLIENT", "PAUSE", &ms, "WRITE"]);
    assert_eq!(paused.as_deref(), Some("OK"), "CLIENT PAUSE on port {port}");
    let info = query(port, &["INFO", "replication"]).expect("INFO replication of the primary");
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    let primary_offset = field(&info, "master_repl_offset").expect("master_repl_offset");
    let replica_ports: Vec<u16> = info
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("ip="))
        .filter_map(|l| {
            l.split([',', ':'])
                .find_map(|kv| kv.strip_prefix("port="))
                .and_then(|p| p.parse().ok())
        })
        .collect();
    let replicas = replica_ports
        .into_iter()
        .map(|p| {
            let offset = query(p, &["INFO", "replication"])
                .and_then(|i| field(&i, "slave_repl_offset"))
                .unwrap_or(0);
            (p, offset)
        })
        .collect();
    Replication {
        primary_offset,
        replicas,
    }
}

/// Polls `f` every 50 ms for up to `within`; panics with `what` if it never
/// holds.
fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node as `CLUSTER NODES` shows it: port, primary, failed, slot ranges.
type NodeLine = (u16, bool, bool, Vec<(u16, u16)>);

/// Cluster mode, its state file in the node's directory, and a 1 s node
/// timeout (failure detection and failover within seconds).
const CLUSTER_NODE_ARGS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
];

/// A real Redis Cluster on loopback: `primaries` primaries with one replica
/// each (`redis-cli --cluster create --cluster-replicas 1`), node timeout
/// 1 s so a killed primary's replica takes over within seconds. Every node
/// is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<(u16, Option<Child>)>,
}

impl RedisCluster {
    /// Starts 3 primaries and 3 replicas and waits until the cluster is
    /// up and every primary has its replica attached.
    pub fn start() -> Self {
        Self::start_with(3)
    }

    /// Starts `primaries` primaries, each with one replica.
    pub fn start_with(primaries: usize) -> Self {
        Self::start_nodes(primaries, &[])
    }

    /// Starts `primaries` primaries with a replica each, on loopback,
    /// whose topology (`CLUSTER SLOTS`) names every node by `hostname`
    /// instead of its address: a client seeded with the loopback URLs
    /// learns nodes at a host that is not loopback. The nodes still talk
    /// to each other on loopback; a client that honours the topology must
    /// refuse or fail to reach them (use a name under `.invalid`, which
    /// never resolves), so no traffic leaves this machine.
    pub fn start_announcing(primaries: usize, hostname: &str) -> Self {
        Self::start_nodes(
            primaries,
            &[
                "--cluster-announce-hostname",
                hostname,
                "--cluster-preferred-endpoint-type",
                "hostname",
            ],
        )
    }

    fn start_nodes(primaries: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for the cluster");
        let args: Vec<&str> = CLUSTER_NODE_ARGS
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect();
        let nodes: Vec<(u16, Option<Child>)> = (0..primaries * 2)
            .map(|_| {
                let (port, child) =
                    spawn_on_free_port(|port| dir.path().join(port.to_string()), &args);
                (port, Some(child))
            })
            .collect();
        let ports: Vec<u16> = nodes.iter().map(|(port, _)| *port).collect();
        let cluster = RedisCluster { dir, nodes };
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (from redis-tools, installed with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// The nodes' URLs, for `RedisCache::cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.live_ports()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The live nodes' ports.
    pub fn urls_ports(&self) -> Vec<u16> {
        self.live_ports().collect()
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
    }

    /// `CLUSTER NODES` as (port, is primary, is failed, slot ranges), from
    /// any live node.
    fn topology(&self) -> Vec<NodeLine> {
        let Some(text) = self
            .live_ports()
            .find_map(|p| query(p, &["CLUSTER", "NODES"]))
        else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let addr = fields.get(1)?;
                let port = addr
                    .split(['@', ','])
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let flags = fields.get(2)?;
                let slots = fields
                    .iter()
                    .skip(8)
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some((
                    port,
                    flags.contains("master"),
                    flags.contains("fail"),
                    slots,
                ))
            })
            .collect()
    }

    /// Waits until every live node says `cluster_state:ok`, every slot
    /// range has a live primary, and each of those primaries has an online
    /// replica (so that `WAIT 1` can succeed).
    pub fn wait_healthy(&self, within: Duration) {
        wait_for("the cluster to be healthy", within, || {
            let ok = self.live_ports().all(|p| {
                query(p, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            });
            ok && self
                .topology()
                .iter()
                .filter(|(_, primary, failed, slots)| *primary && !*failed && !slots.is_empty())
                .all(|(port, ..)| {
                    // Online: past the initial sync, so it acknowledges.
                    query(*port, &["INFO", "replication"]).is_some_and(|i| {
                        i.lines()
                            .any(|l| l.starts_with("slave0:") && l.contains("state=online"))
                    })
                })
        });
    }

    /// The port of the primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        let slot: u16 = query(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT");
        self.topology()
            .into_iter()
            .find(|(_, primary, failed, slots)| {
                *primary && !*failed && slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|(port, ..)| port)
            .expect("a primary for the slot")
    }

    /// Waits until a live primary other than `old` serves `key`'s slot, and
    /// returns its port.
    pub fn wait_failover(&self, key: &str, old: u16, within: Duration) -> u16 {
        let port = self.live_ports().next().expect("a live node");
        let slot: u16 = query(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT");
        let mut new = None;
        wait_for("the cluster to fail over", within, || {
            new = self
                .topology()
                .into_iter()
                .find(|(port, primary, failed, slots)| {
                    *port != old
                        && *primary
                        && !*failed
                        && slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
                })
                .map(|(port, ..)| port)
                .filter(|&port| is_primary(port));
            new.is_some()
        });
        new.expect("a new primary")
    }

    /// Kills the node on `port` (SIGKILL, like a crash).
    pub fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }

    /// Restarts a killed node with its old identity (`nodes.conf`): a
    /// killed primary rejoins as a replica of the node that replaced it.
    pub fn restart(&mut self, port: u16) {
        let dir = self.dir.path().join(port.to_string());
        for (p, child) in &mut self.nodes {
            if *p == port && child.is_none() {
                *child = Some(spawn_node(&dir, port, &CLUSTER_NODE_ARGS));
            }
        }
    }

    /// The cluster's temporary directory (node files and configs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.nodes.iter().map(|(p, _)| *p).collect();
        for p in ports {
            self.kill(p);
        }
    }
}

/// A primary, one replica and three Sentinels (quorum 2) monitoring them as
/// service `freshtoken`, on loopback, started with `redis-server
/// --sentinel` (what Debian's redis-sentinel runs). Failover after 1 s of
/// silence. Everything is killed on drop.
#[derive(Debug)]
pub struct RedisSentinel {
    dir: tempfile::TempDir,
    servers: Vec<(u16, Option<Child>)>,
    sentinels: Vec<(u16, Child)>,
}

/// The Sentinel service name the set-up monitors.
pub const SENTINEL_SERVICE: &str = "freshtoken";

impl RedisSentinel {
    /// Starts the primary, its replica and the Sentinels, and waits until
    /// the replica is in sync and every Sentinel knows both servers and
    /// the other Sentinels.
    pub fn start() -> Self {
        Self::start_with_replicas(1)
    }

    /// [`start`](Self::start) with `replicas` replicas of the primary. With
    /// two, the promoted replica has a replica of its own right after a
    /// failover (the Sentinels point the other one at it), so `WAIT 1` can
    /// succeed before the killed primary comes back.
    pub fn start_with_replicas(replicas: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for sentinel");
        let (primary, p) = spawn_on_free_port(|_| dir.path().join("primary"), &[]);
        let mut servers = vec![(primary, Some(p))];
        for i in 0..replicas {
            let (port, r) = spawn_on_free_port(
                |_| dir.path().join(server_dir_name(i + 1)),
                &["--replicaof", "127.0.0.1", &primary.to_string()],
            );
            servers.push((port, Some(r)));
        }
        let mut set = RedisSentinel {
            dir,
            servers,
            sentinels: Vec::new(),
        };
        for &(replica, _) in &set.servers[1..] {
            wait_for("the replica to sync", Duration::from_secs(15), || {
                query(replica, &["INFO", "replication"])
                    .is_some_and(|i| i.contains("master_link_status:up"))
            });
        }
        for i in 0..3 {
            let sentinel = spawn_sentinel(set.dir.path(), i, primary);
            set.sentinels.push(sentinel);
        }
        let sentinels: Vec<u16> = set.sentinels.iter().map(|(p, _)| *p).collect();
        wait_for(
            "the Sentinels to know the primary, its replica and each other",
            Duration::from_secs(30),
            || {
                sentinels.iter().all(|&s| {
                    query(s, &["SENTINEL", "MASTER", SENTINEL_SERVICE]).is_some_and(|m| {
                        master_field(&m, "num-slaves") == Some(replicas.to_string().as_str())
                            && master_field(&m, "num-other-sentinels") == Some("2")
                            && master_field(&m, "flags") == Some("master")
                    })
                })
            },
        );
        set
    }

    /// Starts one more Sentinel, monitoring `primary` as the service's
    /// primary from its static configuration, as a freshly deployed
    /// Sentinel would: until it hears of the last failover (from the
    /// others' hello messages, within about 2 s) it names `primary`.
    /// Returns its port; it is among [`urls`](Self::urls), last.
    pub fn add_sentinel(&mut self, primary: u16) -> u16 {
        let sentinel = spawn_sentinel(self.dir.path(), self.sentinels.len(), primary);
        let port = sentinel.0;
        self.sentinels.push(sentinel);
        wait_for(
            "the new Sentinel to answer",
            Duration::from_secs(15),
            || query(port, &["PING"]).is_some(),
        );
        port
    }

    /// Sets up the fault of a Sentinel that has not heard of the last
    /// failover while the old primary is back: kills the primary, waits
    /// for the Sentinels to promote the replica, restarts the old primary
    /// (as a primary, with an empty dataset: it stays one until the
    /// Sentinels turn it into a replica, some 10 s later), and starts a
    /// Sentinel configured with the old primary, as a static set-up is
    /// ([`add_sentinel`](Self::add_sentinel)): it names the old primary
    /// until the others' hello messages reach it. Returns the old
    /// primary's port and the stale Sentinel's (last in [`urls`](Self::urls)).
    pub fn fail_over_behind_a_stale_sentinel(&mut self) -> (u16, u16) {
        let old = self.kill_primary();
        self.wait_failover(old, Duration::from_secs(30));
        // Empty, and a primary: what a stale Sentinel would hand clients.
        self.respawn(old, &["--replica-priority", "0"]);
        wait_for(
            "the old primary to restart",
            Duration::from_secs(15),
            || is_primary(old),
        );
        (old, self.add_sentinel(old))
    }

    /// Sets up a primary that a failover demoted without its knowing, as a
    /// primary too slow to answer the Sentinels becomes one: waits until
    /// both replicas have everything, freezes the primary (`SIGSTOP`) until
    /// the Sentinels have promoted a replica and pointed the other at it,
    /// then thaws it (`SIGCONT`). It answers `ROLE` as a primary, without a
    /// replica, until the Sentinels reconfigure it, at least 8 s later
    /// (they wait that long after a server they demoted comes back); a
    /// client connected to it before the freeze is still connected. Needs
    /// [`start_with_replicas(2)`](Self::start_with_replicas). Returns the
    /// old primary's port.
    pub fn fail_over_a_frozen_primary(&mut self) -> u16 {
        let old = self.primary();
        assert_eq!(
            query(old, &["WAIT", "2", "5000"]).as_deref(),
            Some("2"),
            "both replicas caught up before the freeze"
        );
        let pid = self
            .servers
            .iter()
            .find(|(p, _)| *p == old)
            .and_then(|(_, child)| child.as_ref())
            .map(|child| rustix::process::Pid::from_raw(child.id() as i32).expect("a pid"))
            .expect("the primary's process");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        self.wait_failover(old, Duration::from_secs(30));
        self.wait_replicated(Duration::from_secs(30));
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
        old
    }

    /// How many failovers the Sentinels have made: the highest configuration
    /// epoch any of them reports (each failover raises it by one).
    pub fn failovers(&self) -> u64 {
        self.sentinels
            .iter()
            .filter_map(|(p, _)| query(*p, &["SENTINEL", "MASTER", SENTINEL_SERVICE]))
            .filter_map(|m| master_field(&m, "config-epoch")?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Whether the Sentinel at `sentinel` names `primary` as the service's
    /// primary now.
    pub fn names(&self, sentinel: u16, primary: u16) -> bool {
        query(
            sentinel,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
        )
        .is_some_and(|a| {
            a.lines()
                .nth(1)
                .is_some_and(|p| p.trim() == primary.to_string())
        })
    }

    /// The Sentinels' URLs, for `RedisCache::sentinel`.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The port of the primary the Sentinels currently report.
    pub fn primary(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|(p, _)| {
                query(
                    *p,
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
                )
            })
            .and_then(|a| a.lines().nth(1).and_then(|p| p.trim().parse().ok()))
            .expect("the Sentinels name a primary")
    }

    /// Kills the current primary (SIGKILL); the Sentinels then promote the
    /// replica. Returns the killed port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary();
        for (p, child) in &mut self.servers {
            if *p == port {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        port
    }

    /// Restarts a killed server, with an empty dataset, as a replica of the
    /// current primary. With
    /// replica priority 0, as an operator restarting a node without its
    /// data would set it: the Sentinels never promote it, so a second
    /// failover (the Sentinels' 1 s down-after can take a loaded machine
    /// for a dead primary) cannot crown an empty or half-synced node and
    /// lose what the tests stored.
    pub fn restart(&mut self, port: u16) {
        // As a replica of the current primary from the start: never an
        // empty primary that a Sentinel slow to learn of the failover could
        // still name.
        let primary = self.primary().to_string();
        self.respawn(
            port,
            &[
                "--replica-priority",
                "0",
                "--replicaof",
                "127.0.0.1",
                &primary,
            ],
        );
    }

    /// Starts the killed server on `port` again, empty, with `args`.
    fn respawn(&mut self, port: u16, args: &[&str]) {
        let Some(index) = self.servers.iter().position(|(p, _)| *p == port) else {
            return;
        };
        let dir = self.dir.path().join(server_dir_name(index));
        if self.servers[index].1.is_none() {
            self.servers[index].1 = Some(spawn_node(&dir, port, args));
        }
    }

    /// Waits until the current primary has an online replica (one that
    /// acknowledges `WAIT`).
    pub fn wait_replicated(&self, within: Duration) {
        wait_for("the primary to have an online replica", within, || {
            query(self.primary(), &["INFO", "replication"]).is_some_and(|i| {
                i.lines()
                    .any(|l| l.starts_with("slave") && l.contains("state=online"))
            })
        });
    }

    /// Waits until the Sentinels report a primary other than `old` and it
    /// answers as a primary.
    ///
    /// Every Sentinel must name the new primary, not only the first that
    /// answers: a Sentinel still naming the old one when it comes back
    /// (empty) would hand clients to it. A CI run on a loaded machine lost
    /// the stored token that way.
    pub fn wait_failover(&self, old: u16, within: Duration) {
        wait_for("the Sentinels to fail over", within, || {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|(p, _)| {
                    query(
                        *p,
                        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
                    )
                    .and_then(|a| a.lines().nth(1).and_then(|p| p.trim().parse().ok()))
                })
                .collect();
            let now = self.primary();
            now != old && named.iter().all(|n| *n == Some(now)) && is_primary(now)
        });
    }
}

/// A field of a `SENTINEL MASTER` answer as `redis-cli` prints it: each
/// name on a line, its value on the next.
fn master_field<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = answer.lines();
    lines.by_ref().find(|l| *l == name)?;
    lines.next()
}

/// Starts Sentinel number `index` (directory `sentinel-<index>`)
/// monitoring `primary` as service [`SENTINEL_SERVICE`], quorum 2,
/// failover after 1 s of silence.
fn spawn_sentinel(dir: &std::path::Path, index: usize, primary: u16) -> (u16, Child) {
    let port = free_port();
    let sdir = dir.join(format!("sentinel-{index}"));
    std::fs::create_dir_all(&sdir).unwrap();
    let conf = sdir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
             sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
             sentinel failover-timeout {SENTINEL_SERVICE} 5000\n\
             sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
            dir = sdir.display()
        ),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .args(["--sentinel", "--loglevel", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server --sentinel");
    (port, child)
}

/// A Sentinel set-up's server directories: `primary`, `replica`,
/// `replica-2`, ... (by the server's index at the start).
fn server_dir_name(index: usize) -> String {
    match index {
        0 => "primary".to_owned(),
        1 => "replica".to_owned(),
        n => format!("replica-{n}"),
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, child) in &mut self.servers {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
