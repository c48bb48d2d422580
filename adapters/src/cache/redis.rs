//! A token cache in Redis, shared by a fleet: one server, a Redis Cluster
//! (feature `redis-cluster`) or a Sentinel-managed primary (feature
//! `redis-sentinel`).

use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use freshtoken_core::{CacheError, CacheErrorKind, Clock, LeaseOutcome, Token};
use redis::ConnectionLike;

use super::holder::holder_id;
use super::record;
use super::sealed::{self, Codec, Decoded};
#[cfg(feature = "redis-sentinel")]
use super::sentinel;
use super::TokenCache;
use crate::clock::SystemClock;

/// Takes the lease if it is free, or extends it if it is already ours (a
/// retry under the lease must not find itself locked out).
pub(super) const ACQUIRE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return 0
";

/// Deletes the lease only if it is still ours: after our TTL ran out,
/// another instance may hold it, and deleting theirs would let a third in.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Replaces the token record only if the key still holds what the caller
/// read and judged replaceable (its first `ARGV[1] + 1` bytes, as
/// `GETRANGE 0 ARGV[1]` returns them; empty for no key). The caller never
/// replaces a record it cannot read (a newer format), and this makes that
/// check and the `SET` one atomic step. ARGV: cap, expected, new record,
/// TTL in ms (0: none). Returns 1 when written, 0 when the key changed.
pub(super) const STORE: &str = r"
if redis.call('GETRANGE', KEYS[1], 0, tonumber(ARGV[1])) ~= ARGV[2] then
    return 0
end
if ARGV[4] == '0' then
    redis.call('SET', KEYS[1], ARGV[3])
else
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
";

/// How often a store re-reads and retries when the record changed between
/// its read and its write (another instance stored at the same moment).
pub(super) const STORE_ATTEMPTS: usize = 4;

/// A token cache in Redis, with a lease.
///
/// * The token is stored under a key of your choice as a [`record`](super::record) (the
///   same JSON as the file cache), with a TTL that ends when the token
///   expires, so Redis drops dead tokens by itself. A token that carries a
///   refresh token is stored without a TTL: the refresh token outlives the
///   access token, and a lost rotated refresh token is a lost grant.
/// * The lease is `SET <lease key> <holder> NX PX <ttl>` (inside a script
///   that also lets the holder extend its own lease), and its release a
///   compare-and-delete script, so an instance only ever deletes its own
///   lease. The lease key defaults to `<key>:lease` (`{<key>}:lease` in a
///   cluster, see below). Each `RedisCache` value is one holder.
/// * **A record of a newer format version is never overwritten**: a load
///   returns a [`CacheErrorKind::Unreadable`] error for it, and a store
///   reads the key, refuses (the same error) if it holds such a record, and
///   otherwise writes with a compare-and-set script that succeeds only if
///   the key still holds what was read. During a rolling upgrade the newest
///   refresh token, written by a newer release, survives the older ones.
/// * **Bounded reads**: a load reads at most [`record::MAX_RECORD_LEN`]
///   bytes (`GETRANGE`); a longer value is a miss with a warning.
/// * Connection URLs: `redis://[user:pass@]host[:port][/db]`,
///   `redis+unix:///path/to/socket[?db=N]`, and `rediss://...` (TLS) when
///   the `redis-tls` feature is on (trusting the webpki roots, or only your
///   CA with [`with_root_certificate`](Self::with_root_certificate)).
///   Connections have a connect timeout and
///   a per-command timeout (1 s each by default).
/// * With the `encryption` feature, [`encryption`](Self::encryption) seals
///   records at rest; a record sealed with a key this instance does not
///   hold is Unreadable and never overwritten, like a newer version.
/// * **URLs are checked**: the token, refresh token included, travels in the
///   clear over `redis://`, so a plain `redis://` URL to a host that is not
///   loopback (`localhost`, `127.0.0.0/8`, `::1`) is refused unless
///   [`RedisCacheBuilder::allow_plain_text`] says otherwise (a private
///   network you trust). A URL with a fragment (`#...`) is refused: the
///   redis crate reads `rediss://...#insecure` as "skip certificate
///   checks", which no one should get by accident. Sentinel-reported
///   primaries are held to the same rule when a connection is made, and
///   so are a cluster's nodes: the ones the cluster's slot map names (which
///   get the seeds' plain text or TLS) are checked as each connection is
///   made, so loopback seeds cannot lead the token to a node elsewhere in
///   plain text (the blocking cache's error names the node; the async
///   cluster's error does not carry the cause, so a warning does).
/// * **rustls**: the redis crate's TLS uses rustls' process-wide crypto
///   provider, and has no way to be given another. freshtoken never
///   installs one (that is the application's choice, made once), so a
///   `rediss://` cache needs the application to install its provider before
///   the cache is built, and building one without it is an error that says
///   so:
///
///   ```no_run
///   # fn main() -> Result<(), Box<dyn std::error::Error>> {
///   // At the start of main: ring's provider (or aws-lc-rs's, or your own).
///   let _ = rustls::crypto::ring::default_provider().install_default();
///   let cache = freshtoken::cache::RedisCache::new("rediss://cache.internal:6380/", "orders:token")?;
///   # drop(cache); Ok(()) }
///   ```
/// * Redis down is a [`CacheErrorKind::Unavailable`] error, which the machine
///   treats as a miss (availability beats load). One warning is logged when
///   Redis becomes unreachable; each later call tries to reconnect, and the
///   recovery is logged too.
/// * The API is blocking; async drivers run it on their blocking pool.
///
/// # Cluster and Sentinel
///
/// [`RedisCache::cluster`] (feature `redis-cluster`) takes the addresses of
/// some cluster nodes and follows the cluster's slot map and its
/// redirections. The token key and the lease key must share a hash slot:
/// when the key has no `{hash tag}`, the lease key is `{<key>}:lease`, which
/// hashes like `<key>`; an explicit lease key is checked when the cache is
/// built. [`RedisCache::sentinel`] (feature `redis-sentinel`) asks every
/// Sentinel for the current primary of a named service and takes the one
/// of the newest configuration (the highest config epoch: a Sentinel that
/// has not yet heard of the last failover may name the old primary, back
/// and empty), checks that it answers `ROLE` as a primary, and asks again
/// after a connection fails, the server it reached has become a replica, or
/// a write there went unacknowledged (below).
///
/// With either, lease grants and stores of tokens that carry a refresh token
/// wait for one replica's acknowledgement (`WAIT 1 <ms>`, 250 ms by
/// default; see [`RedisCacheBuilder::replica_acks`]). A lease that is not
/// acknowledged in time is released and reported as an
/// [`Unavailable`](CacheErrorKind::Unavailable) error (not as busy: no peer
/// holds it), so a client-credentials flow fetches for itself and a
/// refresh-token flow waits and retries; a store that is not acknowledged is
/// a failed store, which the machine retries before anything else. Either
/// also ends the connection, and the next call connects again: a primary
/// without a replica may be one that a failover demoted without its
/// knowing (a slow primary failed over, until the Sentinels reconfigure
/// it, some 8 to 10 s later), and asking the Sentinels again (or reading
/// the cluster's slot map again) finds the primary that can acknowledge.
///
/// While a primary has no replica that answers (after a failover, until the
/// old primary rejoins as a replica), no lease is acknowledged: a
/// client-credentials fleet then fetches per instance (more requests, no
/// gap in tokens; measured in `tests/tests/fleet_redis_ha.rs`), but a
/// refresh-token fleet, which never fetches without the lease, waits until
/// a replica is back. Run two replicas per primary where that wait matters,
/// or turn the acknowledgements off with
/// [`replica_acks(0, ..)`](RedisCacheBuilder::replica_acks) and accept the
/// larger loss window.
///
/// What Redis still does not promise: replication is asynchronous and `WAIT`
/// does not make it synchronous. A write acknowledged by a replica can still
/// be lost in a failover (the primary fails, and a replica that had not
/// received it, or that Sentinel or the cluster prefers, is promoted), and a
/// partitioned primary can accept writes for a while that the rest of the
/// cluster will drop. `WAIT` narrows the window to such failovers; it does
/// not close it. For a refresh-token flow that loss is inherent: the
/// authority rotated the refresh token, the cache forgot the new one, and
/// the fleet holds only the previous one, which an authority with reuse
/// detection refuses (and may revoke the grant for). A lease lost in a
/// failover can likewise let two instances fetch at once.
///
/// Neither `Debug` nor any error shows the URL (it may hold a password) or
/// a token.
///
/// ```
/// use freshtoken::cache::{RedisCache, TokenCache};
/// use std::time::Duration;
///
/// // Nothing listens on port 1: the cache reports Unavailable, never panics.
/// let cache = RedisCache::new("redis://127.0.0.1:1/", "myapp:token")?
///     .with_connect_timeout(Duration::from_millis(200));
/// let err = cache.load().unwrap_err();
/// assert_eq!(err.kind(), freshtoken::CacheErrorKind::Unavailable);
///
/// // Plain text to another host is refused unless allowed.
/// assert!(RedisCache::new("redis://cache.internal:6379/", "myapp:token").is_err());
/// let trusted = RedisCache::builder("redis://cache.internal:6379/", "myapp:token")
///     .allow_plain_text(true)
///     .build()?;
/// # drop(trusted);
/// # Ok::<(), freshtoken::CacheError>(())
/// ```
pub struct RedisCache {
    shared: Shared,
    state: Mutex<ConnState>,
}

/// What [`RedisCache`] and the async cache share: where to connect, the
/// keys, the options, the scripts and the record codec, with every step of
/// load, store and lease that is not I/O. Each cache adds only its
/// connection and the calls on it.
pub(super) struct Shared {
    pub(super) backend: Backend,
    pub(super) key: String,
    pub(super) lease_key: String,
    pub(super) holder: String,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    pub(super) replica_acks: Option<ReplicaAcks>,
    /// Checked again for the primaries Sentinel reports.
    #[cfg_attr(not(feature = "redis-sentinel"), allow(dead_code))]
    pub(super) allow_plain_text: bool,
    acquire: redis::Script,
    release: redis::Script,
    store: redis::Script,
    pub(super) codec: Codec,
}

/// The default for a cluster or Sentinel: one replica, 250 ms.
#[cfg(any(feature = "redis-cluster", feature = "redis-sentinel"))]
const FLEET_ACKS: Option<ReplicaAcks> = Some(ReplicaAcks {
    replicas: 1,
    timeout: Duration::from_millis(250),
});

/// How many replicas must acknowledge a write, and how long to wait.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReplicaAcks {
    pub(super) replicas: usize,
    pub(super) timeout: Duration,
}

/// Where the cache connects. One per cache, made once: the variants'
/// sizes (which vary with the redis crate's features) do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Backend {
    Single(redis::Client),
    #[cfg(feature = "redis-cluster")]
    Cluster {
        nodes: Vec<redis::ConnectionInfo>,
        #[cfg(feature = "redis-tls")]
        certs: Option<redis::TlsCertificates>,
    },
    /// The Sentinels are asked for the primary at each connection (see
    /// [`super::sentinel`]).
    #[cfg(feature = "redis-sentinel")]
    Sentinel {
        sentinels: Vec<redis::ConnectionInfo>,
        service: String,
        tls: bool,
    },
}

/// A live connection of either kind.
enum Conn {
    Single(redis::Connection),
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<dyn ClusterConn>),
}

/// A cluster connection, whatever its nodes' connection type (see
/// [`PlainTextToLoopbackOnly`]).
#[cfg(feature = "redis-cluster")]
trait ClusterConn: ConnectionLike + Send {
    fn route_command(
        &mut self,
        cmd: &redis::Cmd,
        routing: redis::cluster_routing::RoutingInfo,
    ) -> redis::RedisResult<redis::Value>;
    fn as_connection(&mut self) -> &mut dyn ConnectionLike;
}

#[cfg(feature = "redis-cluster")]
impl<C> ClusterConn for redis::cluster::ClusterConnection<C>
where
    C: ConnectionLike + redis::cluster::Connect + Send + 'static,
{
    fn route_command(
        &mut self,
        cmd: &redis::Cmd,
        routing: redis::cluster_routing::RoutingInfo,
    ) -> redis::RedisResult<redis::Value> {
        redis::cluster::ClusterConnection::route_command(self, cmd, routing)
    }

    fn as_connection(&mut self) -> &mut dyn ConnectionLike {
        self
    }
}

/// A cluster node's connection that holds every node, the ones learned
/// from the cluster's slot map included, to the plain-text rule: a plain
/// `redis://` connection to a host that is not loopback is refused before
/// it is made. The cluster client makes each node connection through
/// [`Connect`](redis::cluster::Connect), so no command (and no token)
/// ever goes to such a node. Used when the seeds are plain text and
/// plain text is not allowed elsewhere.
#[cfg(feature = "redis-cluster")]
struct PlainTextToLoopbackOnly(redis::Connection);

#[cfg(feature = "redis-cluster")]
impl redis::cluster::Connect for PlainTextToLoopbackOnly {
    fn connect<T>(info: T, timeout: Option<Duration>) -> redis::RedisResult<Self>
    where
        T: redis::IntoConnectionInfo,
    {
        let info = info.into_connection_info()?;
        if let redis::ConnectionAddr::Tcp(host, _) = info.addr() {
            if !is_loopback(host) {
                return Err(plain_text_node_refused(host));
            }
        }
        <redis::Connection as redis::cluster::Connect>::connect(info, timeout).map(Self)
    }

    fn send_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<()> {
        self.0.send_packed_command(cmd)
    }

    fn set_write_timeout(&self, dur: Option<Duration>) -> redis::RedisResult<()> {
        self.0.set_write_timeout(dur)
    }

    fn set_read_timeout(&self, dur: Option<Duration>) -> redis::RedisResult<()> {
        self.0.set_read_timeout(dur)
    }

    fn recv_response(&mut self) -> redis::RedisResult<redis::Value> {
        self.0.recv_response()
    }
}

#[cfg(feature = "redis-cluster")]
impl ConnectionLike for PlainTextToLoopbackOnly {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }

    fn check_connection(&mut self) -> bool {
        self.0.check_connection()
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// The async cluster's side of [`PlainTextToLoopbackOnly`]: it connects
/// through a DNS resolver, and this one resolves loopback names and
/// addresses only, refusing any other host (with a warning, since the
/// async cluster's error does not carry the cause), so a plain-text node
/// that is not loopback is never connected to.
#[cfg(all(
    feature = "redis-cluster",
    any(feature = "redis-tokio", feature = "redis-smol")
))]
struct LoopbackResolver;

#[cfg(all(
    feature = "redis-cluster",
    any(feature = "redis-tokio", feature = "redis-smol")
))]
impl redis::io::AsyncDNSResolver for LoopbackResolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let found: redis::RedisResult<Vec<std::net::SocketAddr>> =
            if bare.eq_ignore_ascii_case("localhost") {
                Ok(vec![
                    (std::net::Ipv4Addr::LOCALHOST, port).into(),
                    (std::net::Ipv6Addr::LOCALHOST, port).into(),
                ])
            } else {
                match bare.parse::<IpAddr>() {
                    Ok(ip) if ip.is_loopback() => Ok(vec![(ip, port).into()]),
                    _ => {
                        // The async cluster reports a failed node connection
                        // without its cause: say it here.
                        let refused = plain_text_refused(host);
                        tracing::warn!(error = %refused, "Redis cluster node refused");
                        Err(plain_text_node_refused(host))
                    }
                }
            };
        Box::pin(std::future::ready(found.map(|addrs| {
            Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = std::net::SocketAddr> + Send>
        })))
    }
}

/// The refusal of a cluster node, as the redis crate's error (the cluster
/// client passes it on).
#[cfg(feature = "redis-cluster")]
fn plain_text_node_refused(host: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "refusing a plain-text connection to a cluster node that is not loopback",
        plain_text_refused(host).message().to_owned(),
    ))
}

impl Conn {
    fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => c.as_connection(),
        }
    }

    /// `WAIT replicas timeout` on the connection that wrote `key`: in a
    /// cluster, the primary of the key's slot (the cluster client keeps one
    /// connection per node, so that is the connection of the write).
    fn wait_replicas(&mut self, key: &str, acks: ReplicaAcks) -> redis::RedisResult<usize> {
        let cmd = wait_cmd(acks);
        match self {
            Conn::Single(c) => {
                let _ = key;
                cmd.query(c)
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => {
                let value = c.route_command(&cmd, primary_of(key))?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

/// `WAIT <replicas> <ms>`.
pub(super) fn wait_cmd(acks: ReplicaAcks) -> redis::Cmd {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(acks.replicas).arg(millis(acks.timeout).max(1));
    cmd
}

/// Routes a command to the primary of `key`'s slot.
#[cfg(feature = "redis-cluster")]
pub(super) fn primary_of(key: &str) -> redis::cluster_routing::RoutingInfo {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
        key,
        SlotAddr::Master,
    )))
}

#[derive(Default)]
struct ConnState {
    conn: Option<Conn>,
    /// Whether the last attempt failed, so that an outage logs one warning.
    down: bool,
}

/// Options for a [`RedisCache`]: from [`RedisCache::builder`],
/// [`RedisCache::cluster`] or [`RedisCache::sentinel`].
///
/// ```
/// use freshtoken::cache::RedisCache;
/// use std::time::Duration;
///
/// let cache = RedisCache::builder("redis://127.0.0.1:6379/", "myapp:token")
///     .lease_key("myapp:token:lease")
///     .command_timeout(Duration::from_millis(500))
///     // A primary with replicas: leases and rotated refresh tokens wait
///     // for one replica's acknowledgement.
///     .replica_acks(1, Duration::from_millis(200))
///     .build()?;
/// assert_eq!(cache.lease_key(), "myapp:token:lease");
/// # Ok::<(), freshtoken::CacheError>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct RedisCacheBuilder {
    target: Target,
    key: String,
    lease_key: Option<String>,
    connect_timeout: Duration,
    command_timeout: Duration,
    replica_acks: Option<Option<ReplicaAcks>>,
    allow_plain_text: bool,
    #[cfg(feature = "redis-tls")]
    root_ca_pem: Option<Vec<u8>>,
}

enum Target {
    Single(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
    #[cfg(feature = "redis-sentinel")]
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
}

impl Target {
    /// Every URL given.
    #[cfg_attr(feature = "redis-tls", allow(dead_code))]
    fn urls(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Target::Single(url) => Box::new(std::iter::once(url.as_str())),
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(urls) => Box::new(urls.iter().map(String::as_str)),
            #[cfg(feature = "redis-sentinel")]
            Target::Sentinel { sentinels, .. } => Box::new(sentinels.iter().map(String::as_str)),
        }
    }
}

impl fmt::Debug for RedisCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No URL: it may hold a password.
        let target = match &self.target {
            Target::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(_) => "cluster",
            #[cfg(feature = "redis-sentinel")]
            Target::Sentinel { .. } => "sentinel",
        };
        f.debug_struct("RedisCacheBuilder")
            .field("target", &target)
            .field("key", &self.key)
            .field("lease_key", &self.lease_key)
            .field("allow_plain_text", &self.allow_plain_text)
            .finish_non_exhaustive()
    }
}

impl RedisCacheBuilder {
    fn new(target: Target, key: String) -> Self {
        RedisCacheBuilder {
            target,
            key,
            lease_key: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            replica_acks: None,
            allow_plain_text: false,
            #[cfg(feature = "redis-tls")]
            root_ca_pem: None,
        }
    }

    /// Uses `key` for the lease instead of the default (see [`RedisCache`]).
    pub fn lease_key(mut self, key: impl Into<String>) -> Self {
        self.lease_key = Some(key.into());
        self
    }

    /// How long to wait for a connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a command's answer (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Lease grants and stores of tokens with a refresh token wait until
    /// `replicas` replicas acknowledged them (`WAIT`), for at most
    /// `timeout`; `replicas == 0` turns this off. The default is one replica
    /// and 250 ms for a cluster or Sentinel, off for a single server (whose
    /// `WAIT` would time out every time if it has no replica).
    pub fn replica_acks(mut self, replicas: usize, timeout: Duration) -> Self {
        self.replica_acks = Some((replicas > 0).then_some(ReplicaAcks { replicas, timeout }));
        self
    }

    /// Allows plain `redis://` to hosts that are not loopback. The token and
    /// its refresh token then cross the network unencrypted and
    /// unauthenticated: only for a network you trust (prefer `rediss://`).
    pub fn allow_plain_text(mut self, allow: bool) -> Self {
        self.allow_plain_text = allow;
        self
    }

    /// Trusts only the CA in `pem` (PEM) for `rediss://` servers, instead of
    /// the webpki roots: for servers with a private CA. (Cluster and single
    /// servers; with Sentinel, `build` refuses it: the webpki roots only.)
    #[cfg(feature = "redis-tls")]
    pub fn root_certificate(mut self, pem: &[u8]) -> Self {
        self.root_ca_pem = Some(pem.to_vec());
        self
    }

    /// The cache. Fails on a URL that cannot be parsed, a refused URL (plain
    /// text to another host, a fragment), or (cluster) a lease key in
    /// another hash slot than the key; the error does not repeat the URL.
    pub fn build(self) -> Result<RedisCache, CacheError> {
        Ok(RedisCache {
            shared: self.resolve()?,
            state: Mutex::new(ConnState::default()),
        })
    }

    /// The async cache with these options (see
    /// [`AsyncRedisCache`](super::AsyncRedisCache)), checked as
    /// [`build`](Self::build) checks them.
    #[cfg(any(feature = "redis-tokio", feature = "redis-smol"))]
    pub fn build_async(self) -> Result<super::AsyncRedisCache, CacheError> {
        Ok(super::redis_async::AsyncRedisCache::from_shared(
            self.resolve()?,
        ))
    }

    /// The checks and the connection settings both caches use.
    fn resolve(self) -> Result<Shared, CacheError> {
        let tls = self.target.urls().any(is_tls_url);
        // The async features bring the redis crate's TLS without a rustls
        // provider: refuse rather than fail (or panic in rustls) later.
        #[cfg(not(feature = "redis-tls"))]
        if tls {
            return Err(CacheError::new(
                CacheErrorKind::Io,
                "rediss:// needs the `redis-tls` feature of freshtoken",
            ));
        }
        let allow = self.allow_plain_text;
        let (backend, default_acks, lease_key) = match self.target {
            Target::Single(url) => {
                check_url(&url, allow)?;
                #[cfg(feature = "redis-tls")]
                let client = match &self.root_ca_pem {
                    Some(pem) => redis::Client::build_with_tls(
                        url.as_str(),
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem.clone()),
                        },
                    ),
                    None => redis::Client::open(url.as_str()),
                };
                #[cfg(not(feature = "redis-tls"))]
                let client = redis::Client::open(url.as_str());
                let client = client.map_err(|e| invalid_url(&e))?;
                let lease_key = self
                    .lease_key
                    .unwrap_or_else(|| format!("{}:lease", self.key));
                (Backend::Single(client), None, lease_key)
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(CacheError::new(
                        CacheErrorKind::Io,
                        "a Redis Cluster needs at least one node address",
                    ));
                }
                let mut nodes = Vec::with_capacity(urls.len());
                for url in &urls {
                    check_url(url, allow)?;
                    nodes.push(
                        redis::IntoConnectionInfo::into_connection_info(url.as_str())
                            .map_err(|e| invalid_url(&e))?,
                    );
                }
                let lease_key = self
                    .lease_key
                    .unwrap_or_else(|| cluster_lease_key(&self.key));
                if redis::cluster_routing::Slot::for_key(&self.key)
                    != redis::cluster_routing::Slot::for_key(&lease_key)
                {
                    return Err(CacheError::new(
                        CacheErrorKind::Io,
                        format!(
                            "the lease key {lease_key:?} and the token key {:?} hash to different cluster slots; give both the same {{hash tag}}",
                            self.key
                        ),
                    ));
                }
                let backend = Backend::Cluster {
                    nodes,
                    #[cfg(feature = "redis-tls")]
                    certs: self.root_ca_pem.map(|pem| redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    }),
                };
                (backend, FLEET_ACKS, lease_key)
            }
            #[cfg(feature = "redis-sentinel")]
            Target::Sentinel { sentinels, service } => {
                #[cfg(feature = "redis-tls")]
                if self.root_ca_pem.is_some() {
                    return Err(CacheError::new(
                        CacheErrorKind::Io,
                        "a private root certificate is not supported with Sentinel yet (the webpki roots are used); remove root_certificate",
                    ));
                }
                let mut tls = false;
                let mut infos = Vec::with_capacity(sentinels.len());
                for url in &sentinels {
                    check_url(url, allow)?;
                    tls |= url.starts_with("rediss:");
                    infos.push(
                        redis::IntoConnectionInfo::into_connection_info(url.as_str())
                            .map_err(|e| invalid_url(&e))?,
                    );
                }
                let backend = Backend::Sentinel {
                    sentinels: infos,
                    service,
                    tls,
                };
                let lease_key = self
                    .lease_key
                    .unwrap_or_else(|| format!("{}:lease", self.key));
                (backend, FLEET_ACKS, lease_key)
            }
        };
        // After the URL checks, so that a refused URL says why.
        #[cfg(feature = "redis-tls")]
        if tls {
            check_crypto_provider()?;
        }
        Ok(Shared {
            backend,
            lease_key,
            key: self.key,
            holder: holder_id(),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            replica_acks: self.replica_acks.unwrap_or(default_acks),
            allow_plain_text: allow,
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            store: redis::Script::new(STORE),
            codec: Codec::default(),
        })
    }
}

/// `{<key>}:lease`, which hashes like `<key>` when the key has no hash tag
/// of its own; `<key>:lease`, which keeps the key's tag, when it has one.
#[cfg(feature = "redis-cluster")]
fn cluster_lease_key(key: &str) -> String {
    let tagged = key
        .find('{')
        .is_some_and(|open| key[open + 1..].find('}').is_some_and(|len| len > 0));
    if tagged || key.contains(['{', '}']) {
        format!("{key}:lease")
    } else {
        format!("{{{key}}}:lease")
    }
}

/// Refuses a URL with a fragment, and plain text to a host that is not
/// loopback unless `allow_plain_text`. Messages never quote the URL.
pub(super) fn check_url(url: &str, allow_plain_text: bool) -> Result<(), CacheError> {
    if url.contains('#') {
        return Err(CacheError::new(
            CacheErrorKind::Io,
            "refusing a Redis URL with a fragment (#...): the redis crate reads `#insecure` as \"do not verify certificates\"; remove it (percent-encode a '#' in a password as %23)",
        ));
    }
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| invalid_url(&e))?;
    if let redis::ConnectionAddr::Tcp(host, _) = info.addr() {
        if !allow_plain_text && !is_loopback(host) {
            return Err(plain_text_refused(host));
        }
    }
    Ok(())
}

/// How every refusal of plain text starts.
const PLAIN_TEXT_REFUSAL: &str = "refusing plain-text redis:// to ";

pub(super) fn plain_text_refused(host: &str) -> CacheError {
    CacheError::new(
        CacheErrorKind::Io,
        format!(
            "{PLAIN_TEXT_REFUSAL}{host}, which is not a loopback address: tokens and refresh tokens would cross the network unencrypted; use rediss:// or allow it explicitly (RedisCacheBuilder::allow_plain_text)"
        ),
    )
}

/// `localhost` or a loopback IP (`127.0.0.0/8`, `::1`).
pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl RedisCache {
    /// A cache at `url` (see the type's docs for the forms) storing the
    /// token under `key`. No connection is made until the first use.
    ///
    /// Fails on a URL that cannot be parsed, or that is refused (plain text
    /// to a host that is not loopback, a fragment: see the type's docs);
    /// the error does not repeat the URL. [`builder`](Self::builder) has
    /// the other options.
    pub fn new(url: &str, key: impl Into<String>) -> Result<Self, CacheError> {
        Self::builder(url, key).build()
    }

    /// A cache at a `rediss://` URL whose server certificate is signed by
    /// the CA in `root_ca_pem` (PEM), which is then the only CA trusted: for
    /// servers with a private CA.
    #[cfg(feature = "redis-tls")]
    pub fn with_root_certificate(
        url: &str,
        key: impl Into<String>,
        root_ca_pem: &[u8],
    ) -> Result<Self, CacheError> {
        Self::builder(url, key)
            .root_certificate(root_ca_pem)
            .build()
    }

    /// Encrypts the record at rest with `keys` (see
    /// [`EncryptionKeys`](super::EncryptionKeys)). The Redis key is bound
    /// to the record, so a record copied to another key is refused.
    #[cfg(feature = "encryption")]
    pub fn encryption(mut self, keys: super::EncryptionKeys) -> Self {
        self.shared.codec = Codec::with_keys(keys);
        self
    }

    /// Options for a cache on one server at `url`.
    pub fn builder(url: &str, key: impl Into<String>) -> RedisCacheBuilder {
        RedisCacheBuilder::new(Target::Single(url.to_owned()), key.into())
    }

    /// Options for a cache in a Redis Cluster, reached through any of
    /// `nodes` (URLs of some of its nodes; the rest are discovered).
    ///
    /// ```
    /// use freshtoken::cache::RedisCache;
    ///
    /// let cache = RedisCache::cluster(
    ///     ["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"],
    ///     "{myapp}:token",
    /// )
    /// .build()?;
    /// // The key's hash tag keeps the lease in the token's slot.
    /// assert_eq!(cache.lease_key(), "{myapp}:token:lease");
    /// let untagged = RedisCache::cluster(["redis://127.0.0.1:7000/"], "myapp:token").build()?;
    /// assert_eq!(untagged.lease_key(), "{myapp:token}:lease");
    /// # Ok::<(), freshtoken::CacheError>(())
    /// ```
    #[cfg(feature = "redis-cluster")]
    pub fn cluster<I, S>(nodes: I, key: impl Into<String>) -> RedisCacheBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = nodes.into_iter().map(|s| s.as_ref().to_owned()).collect();
        RedisCacheBuilder::new(Target::Cluster(nodes), key.into())
    }

    /// Options for a cache on the primary that the Sentinels at `sentinels`
    /// (their URLs) report for `service` (the name in `sentinel monitor`).
    /// `rediss://` Sentinel URLs make the connection to the primary TLS too.
    ///
    /// ```
    /// use freshtoken::cache::RedisCache;
    ///
    /// let cache = RedisCache::sentinel(
    ///     ["redis://127.0.0.1:26379/", "redis://127.0.0.1:26380/"],
    ///     "mymaster",
    ///     "myapp:token",
    /// )
    /// .build()?;
    /// # drop(cache);
    /// # Ok::<(), freshtoken::CacheError>(())
    /// ```
    #[cfg(feature = "redis-sentinel")]
    pub fn sentinel<I, S>(
        sentinels: I,
        service: impl Into<String>,
        key: impl Into<String>,
    ) -> RedisCacheBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let sentinels = sentinels
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect();
        RedisCacheBuilder::new(
            Target::Sentinel {
                sentinels,
                service: service.into(),
            },
            key.into(),
        )
    }

    /// Uses `key` for the lease instead of the default. (In a cluster,
    /// prefer [`RedisCacheBuilder::lease_key`], which checks that the two
    /// keys share a hash slot.)
    pub fn with_lease_key(mut self, key: impl Into<String>) -> Self {
        self.shared.lease_key = key.into();
        self
    }

    /// How long to wait for a connection (default 1 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.shared.connect_timeout = timeout;
        self
    }

    /// How long to wait for a command's answer (default 1 s).
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.shared.command_timeout = timeout;
        self
    }

    /// The token's key.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The lease's key.
    pub fn lease_key(&self) -> &str {
        &self.shared.lease_key
    }

    fn state(&self) -> MutexGuard<'_, ConnState> {
        crate::sync::lock(&self.state)
    }

    fn connect(&self) -> Result<Conn, CacheError> {
        let s = &self.shared;
        #[cfg(feature = "redis-cluster")]
        let io = |e: redis::RedisError| to_cache_error(&e);
        match &s.backend {
            Backend::Single(client) => self.connect_single(client),
            #[cfg(feature = "redis-cluster")]
            Backend::Cluster { .. } => {
                let client = s.cluster_client().map_err(io)?;
                // Nodes learned from the slot map get the seeds' TLS mode:
                // with plain-text seeds, each node is held to the rule.
                let conn: Box<dyn ClusterConn> = if s.guard_cluster_nodes() {
                    let conn = client
                        .get_generic_connection::<PlainTextToLoopbackOnly>()
                        .map_err(io)?;
                    conn.set_read_timeout(Some(s.command_timeout)).map_err(io)?;
                    conn.set_write_timeout(Some(s.command_timeout))
                        .map_err(io)?;
                    Box::new(conn)
                } else {
                    let conn = client.get_connection().map_err(io)?;
                    conn.set_read_timeout(Some(s.command_timeout)).map_err(io)?;
                    conn.set_write_timeout(Some(s.command_timeout))
                        .map_err(io)?;
                    Box::new(conn)
                };
                Ok(Conn::Cluster(conn))
            }
            #[cfg(feature = "redis-sentinel")]
            Backend::Sentinel {
                sentinels,
                service,
                tls,
            } => self.connect_sentinel_primary(sentinels, service, *tls),
        }
    }

    /// Asks every Sentinel for its view of the service's primary and
    /// connects to the primary of the newest one, if it says it is one
    /// (see [`super::sentinel`] for why every Sentinel). Done here rather
    /// than with the redis crate's blocking Sentinel client, which has no
    /// timeouts (a Sentinel that accepts and never answers would block the
    /// caller for ever) and takes the first Sentinel's word. Every
    /// connection here has the cache's timeouts.
    #[cfg(feature = "redis-sentinel")]
    fn connect_sentinel_primary(
        &self,
        sentinels: &[redis::ConnectionInfo],
        service: &str,
        tls: bool,
    ) -> Result<Conn, CacheError> {
        let mut last = CacheError::new(
            CacheErrorKind::Unavailable,
            format!("no Sentinel named a primary for {service:?}"),
        );
        let mut views = Vec::with_capacity(sentinels.len());
        for info in sentinels {
            let answer = redis::Client::open(info.clone())
                .map_err(|e| to_cache_error(&e))
                .and_then(|client| self.connect_single(&client))
                .and_then(|mut conn| {
                    sentinel::master_cmd(service)
                        .query::<redis::Value>(conn.as_dyn())
                        .map_err(|e| to_cache_error(&e))
                });
            match answer {
                Ok(answer) => views.extend(sentinel::parse_master(&answer)),
                Err(e) => last = e,
            }
        }
        let Some((host, port)) = sentinel::choose(&views) else {
            return Err(last);
        };
        let client = redis::Client::open(sentinel::primary_url(&host, port, tls))
            .map_err(|e| invalid_url(&e))?;
        self.shared.check_primary(&client)?;
        let mut conn = self.connect_single(&client)?;
        let role = redis::cmd("ROLE").query::<redis::Value>(conn.as_dyn());
        if role.is_ok_and(|r| sentinel::is_primary(&r)) {
            return Ok(conn);
        }
        Err(CacheError::new(
            CacheErrorKind::Unavailable,
            "the server the Sentinels name as primary is not one (a failover under way)",
        ))
    }

    fn connect_single(&self, client: &redis::Client) -> Result<Conn, CacheError> {
        let io = |e: redis::RedisError| to_cache_error(&e);
        let timeout = self.shared.command_timeout;
        let conn = client
            .get_connection_with_timeout(self.shared.connect_timeout)
            .map_err(io)?;
        conn.set_read_timeout(Some(timeout)).map_err(io)?;
        conn.set_write_timeout(Some(timeout)).map_err(io)?;
        Ok(Conn::Single(conn))
    }

    /// Forgets the connection after a write that too few replicas
    /// acknowledged, so that the next call connects again: the server may
    /// have been demoted without knowing it. A Sentinel failover of a
    /// primary that was only slow (the Sentinels' down-after can take a
    /// loaded machine for a dead one) promotes its replica and leaves the
    /// old primary answering as one, without a replica, until the
    /// Sentinels reconfigure it some 8 to 10 s later. A client that stays
    /// connected there reads the old token and has every lease refused,
    /// while the new primary, which asking the Sentinels again finds,
    /// acknowledges leases at once (a cluster client likewise reads the
    /// slot map again). Seen in CI: a refresh-token fleet of eight
    /// processes went 5 to 7 s without a token on such a demoted primary
    /// (`fleet_redis_rotation`). A single server that has lost its replica
    /// costs one reconnection per refused write.
    fn drop_connection(&self) {
        self.state().conn = None;
    }

    /// Runs `f` on the connection, (re)connecting first if there is none.
    fn run<T>(&self, f: impl FnOnce(&mut Conn) -> redis::RedisResult<T>) -> Result<T, CacheError> {
        let mut state = self.state();
        let result = match state.conn.take() {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
        .and_then(|mut conn| {
            let out = f(&mut conn);
            if out.as_ref().err().is_none_or(keeps_connection) {
                state.conn = Some(conn);
            }
            out.map_err(|e| to_cache_error(&e))
        });
        match result {
            Ok(value) => {
                if std::mem::take(&mut state.down) {
                    self.shared.reachable_again();
                }
                Ok(value)
            }
            Err(error) => {
                if error.kind() == CacheErrorKind::Unavailable
                    && !std::mem::replace(&mut state.down, true)
                {
                    self.shared.unavailable(&error);
                }
                Err(error)
            }
        }
    }
}

/// Whether a connection that gave this error can be used again: a
/// server's error answer leaves it usable; any other failure may leave
/// half a reply in it. READONLY means the server became a replica (a
/// Sentinel failover): connect again, which asks the Sentinels again.
pub(super) fn keeps_connection(e: &redis::RedisError) -> bool {
    is_server_answer(e) && e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A record ready to store: its bytes, its TTL in ms (0: none), and the
/// acknowledgement it needs (a token with a refresh token).
pub(super) struct Pending {
    bytes: Vec<u8>,
    ttl_ms: u64,
    pub(super) acks: Option<ReplicaAcks>,
}

impl Shared {
    /// The replica acknowledgement to wait for, its timeout kept below the
    /// command timeout so that the socket does not give up first.
    pub(super) fn acks(&self) -> Option<ReplicaAcks> {
        self.replica_acks.map(|acks| ReplicaAcks {
            replicas: acks.replicas,
            timeout: acks.timeout.min(self.command_timeout * 3 / 4),
        })
    }

    /// The key's first [`record::MAX_RECORD_LEN`] + 1 bytes (empty: no key).
    pub(super) fn read_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(&self.key).arg(0).arg(record::MAX_RECORD_LEN);
        cmd
    }

    /// What a load makes of the bytes [`read_cmd`](Self::read_cmd) read.
    pub(super) fn loaded(&self, bytes: &[u8]) -> Result<Option<Token>, CacheError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() > record::MAX_RECORD_LEN {
            tracing::warn!(key = %self.key, limit = record::MAX_RECORD_LEN, "Redis token entry is larger than any record; treating it as a miss");
            return Ok(None);
        }
        match decode(&self.codec, &self.key, bytes) {
            Ok(token) => Ok(Some(token)),
            Err(e) => match unreadable(&e) {
                Some(why) => Err(self.unreadable_error(&why)),
                None if matches!(
                    e,
                    Undecoded::Corrupt(record::DecodeError::OtherConfiguration)
                ) =>
                {
                    // Another configuration's token: this instance fetches
                    // its own, and its store replaces it.
                    tracing::warn!(key = %self.key, error = %e, "Redis token entry holds a token for another configuration; treating it as a miss");
                    Ok(None)
                }
                None => {
                    // Left in place for inspection; the next store replaces it.
                    tracing::warn!(key = %self.key, error = %e, "Redis token entry is not a usable record; treating it as a miss");
                    Ok(None)
                }
            },
        }
    }

    /// The record to store for `token`; `None` when it has expired
    /// already (nothing worth sharing).
    pub(super) fn prepare_store(&self, token: &Token) -> Result<Option<Pending>, CacheError> {
        let bytes = encode(&self.codec, &self.key, token)?;
        let rotated = token.refresh_token().is_some();
        let ttl_ms = if rotated {
            0
        } else {
            let ttl = token
                .expires_at()
                .saturating_duration_since(SystemClock.now());
            if ttl.as_millis() == 0 {
                return Ok(None);
            }
            millis(ttl)
        };
        Ok(Some(Pending {
            bytes,
            ttl_ms,
            acks: self.acks().filter(|_| rotated),
        }))
    }

    /// Refuses to replace what the key holds (`current`, as read) when it
    /// is a record this instance cannot read.
    pub(super) fn check_replaceable(&self, current: &[u8]) -> Result<(), CacheError> {
        if current.is_empty() || current.len() > record::MAX_RECORD_LEN {
            return Ok(());
        }
        match decode(&self.codec, &self.key, current)
            .err()
            .as_ref()
            .and_then(unreadable)
        {
            Some(why) => Err(self.unreadable_error(&why)),
            None => Ok(()),
        }
    }

    /// The compare-and-set of `pending` over `current` (1: written).
    pub(super) fn store_script(
        &self,
        pending: &Pending,
        current: &[u8],
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.store.key(&self.key);
        invocation
            .arg(record::MAX_RECORD_LEN)
            .arg(current)
            .arg(&pending.bytes)
            .arg(pending.ttl_ms);
        invocation
    }

    /// Takes or extends our lease (1: ours).
    pub(super) fn acquire_script(&self, ttl: Duration) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.acquire.key(&self.lease_key);
        invocation.arg(&self.holder).arg(millis(ttl).max(1));
        invocation
    }

    /// Deletes the lease if it is ours.
    pub(super) fn release_script(&self) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.release.key(&self.lease_key);
        invocation.arg(&self.holder);
        invocation
    }

    /// A store written but acknowledged by `acked` replicas only.
    pub(super) fn store_not_acknowledged(&self, acked: usize, acks: ReplicaAcks) -> CacheError {
        CacheError::new(
            CacheErrorKind::Unavailable,
            format!(
                "Redis stored the token but {acked} of {} replicas acknowledged it within {:?}; counted as a failed store",
                acks.replicas, acks.timeout
            ),
        )
    }

    /// Every compare-and-set found the key changed since its read.
    pub(super) fn store_kept_changing(&self) -> CacheError {
        CacheError::new(
            CacheErrorKind::Unavailable,
            format!(
                "Redis token entry {} kept changing during the store ({STORE_ATTEMPTS} attempts); not stored",
                self.key
            ),
        )
    }

    /// A lease granted, then released because only `acked` replicas
    /// acknowledged it. Not Busy: no peer holds it, and the machine waits
    /// on a busy lease for as long as it stays busy. As an error, a
    /// client-credentials flow fetches for itself and a refresh-token flow
    /// waits and retries (it never fetches without the lease).
    pub(super) fn lease_not_acknowledged(&self, acked: usize) -> CacheError {
        tracing::warn!(key = %self.lease_key, acknowledged = acked, "Redis lease not acknowledged by a replica in time; released it");
        CacheError::new(
            CacheErrorKind::Unavailable,
            format!(
                "Redis granted the lease {} but {acked} replicas acknowledged it in time; released it",
                self.lease_key
            ),
        )
    }

    /// `why`: what [`unreadable`] says (it names the key).
    fn unreadable_error(&self, why: &str) -> CacheError {
        CacheError::new(
            CacheErrorKind::Unreadable,
            format!("{why} and never overwritten"),
        )
    }

    pub(super) fn reachable_again(&self) {
        tracing::info!(key = %self.key, "Redis token cache reachable again");
    }

    pub(super) fn unavailable(&self, error: &CacheError) {
        tracing::warn!(key = %self.key, error = %error, "Redis token cache unavailable; carrying on without it");
    }

    /// The primary a Sentinel named is held to the plain-text rule too.
    #[cfg(feature = "redis-sentinel")]
    pub(super) fn check_primary(&self, client: &redis::Client) -> Result<(), CacheError> {
        if let redis::ConnectionAddr::Tcp(host, _) = client.get_connection_info().addr() {
            if !self.allow_plain_text && !is_loopback(host) {
                return Err(plain_text_refused(host));
            }
        }
        Ok(())
    }

    /// A cluster client with the cache's timeouts (the backend must be a
    /// cluster).
    #[cfg(feature = "redis-cluster")]
    pub(super) fn cluster_client(&self) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let Backend::Cluster {
            nodes,
            #[cfg(feature = "redis-tls")]
            certs,
        } = &self.backend
        else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a cluster",
            )));
        };
        #[allow(unused_mut)]
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout)
            // A few quick retries (redirections during a failover); the
            // machine retries the operation itself later.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100);
        #[cfg(feature = "redis-tls")]
        if let Some(certs) = certs {
            builder = builder.certs(certs.clone());
        }
        #[cfg(any(feature = "redis-tokio", feature = "redis-smol"))]
        if self.guard_cluster_nodes() {
            builder = builder.async_dns_resolver(LoopbackResolver);
        }
        builder.build()
    }

    /// Whether the cluster's nodes must be checked against the plain-text
    /// rule as they are connected to: the seeds are plain text (the nodes
    /// the slot map names get the same mode) and plain text is not allowed
    /// to other hosts.
    #[cfg(feature = "redis-cluster")]
    pub(super) fn guard_cluster_nodes(&self) -> bool {
        let Backend::Cluster { nodes, .. } = &self.backend else {
            return false;
        };
        !self.allow_plain_text
            && nodes
                .iter()
                .any(|n| matches!(n.addr(), redis::ConnectionAddr::Tcp(..)))
    }

    /// What `Debug` shows of both caches (no URL: it may hold a password).
    pub(super) fn debug_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) {
        let topology = match &self.backend {
            Backend::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Backend::Cluster { .. } => "cluster",
            #[cfg(feature = "redis-sentinel")]
            Backend::Sentinel { .. } => "sentinel",
        };
        d.field("topology", &topology)
            .field("key", &self.key)
            .field("lease_key", &self.lease_key)
            .field("holder", &self.holder)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("replica_acks", &self.replica_acks);
    }
}

/// What a store's compare-and-set did.
enum Stored {
    Written,
    /// The key changed between the read and the write.
    Changed,
    /// Written, but fewer replicas than required acknowledged it in time.
    NotAcknowledged(usize),
}

/// What a lease attempt did.
enum Leased {
    Granted,
    Busy,
    /// Granted, then released: no replica acknowledged it in time.
    NotAcknowledged(usize),
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = self.state().conn.is_some();
        let mut d = f.debug_struct("RedisCache");
        self.shared.debug_fields(&mut d);
        d.field("connected", &connected).finish_non_exhaustive()
    }
}

impl TokenCache for RedisCache {
    fn metrics_label(&self) -> &'static str {
        "redis"
    }

    fn bind_config(&self, config: freshtoken_core::TokenId) {
        self.shared.codec.bind_config(config, &self.shared.key);
    }

    fn load(&self) -> Result<Option<Token>, CacheError> {
        let read = self.shared.read_cmd();
        let bytes: Vec<u8> = self.run(|c| read.query(c.as_dyn()))?;
        self.shared.loaded(&bytes)
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        let s = &self.shared;
        let Some(pending) = s.prepare_store(token)? else {
            return Ok(());
        };
        let read = s.read_cmd();
        for _ in 0..STORE_ATTEMPTS {
            let current: Vec<u8> = self.run(|c| read.query(c.as_dyn()))?;
            s.check_replaceable(&current)?;
            let stored = self.run(|c| {
                let written: i64 = s.store_script(&pending, &current).invoke(c.as_dyn())?;
                if written != 1 {
                    return Ok(Stored::Changed);
                }
                let Some(acks) = pending.acks else {
                    return Ok(Stored::Written);
                };
                let acked = c.wait_replicas(&s.key, acks)?;
                Ok(if acked >= acks.replicas {
                    Stored::Written
                } else {
                    Stored::NotAcknowledged(acked)
                })
            })?;
            match (stored, pending.acks) {
                (Stored::Written, _) => return Ok(()),
                (Stored::Changed, _) => continue,
                (Stored::NotAcknowledged(acked), Some(acks)) => {
                    self.drop_connection();
                    return Err(s.store_not_acknowledged(acked, acks));
                }
                (Stored::NotAcknowledged(_), None) => return Ok(()),
            }
        }
        Err(s.store_kept_changing())
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let s = &self.shared;
        let acks = s.acks();
        let leased = self.run(|c| {
            let granted: i64 = s.acquire_script(ttl).invoke(c.as_dyn())?;
            if granted != 1 {
                return Ok(Leased::Busy);
            }
            let Some(acks) = acks else {
                return Ok(Leased::Granted);
            };
            let acked = c.wait_replicas(&s.lease_key, acks)?;
            if acked >= acks.replicas {
                return Ok(Leased::Granted);
            }
            // A lease only the primary knows could vanish in a failover and
            // let a second holder in: give it back and wait like a peer.
            let _ = s.release_script().invoke::<i64>(c.as_dyn());
            Ok(Leased::NotAcknowledged(acked))
        })?;
        match leased {
            Leased::Granted => Ok(LeaseOutcome::Granted),
            Leased::Busy => Ok(LeaseOutcome::Busy),
            Leased::NotAcknowledged(acked) => {
                self.drop_connection();
                Err(s.lease_not_acknowledged(acked))
            }
        }
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        let release = self.shared.release_script();
        self.run(|c| release.invoke::<i64>(c.as_dyn())).map(|_| ())
    }
}

/// The bytes stored under the Redis key `key` for `token`: its record,
/// sealed if `codec` has keys (the key is bound to a sealed record).
pub(super) fn encode(codec: &Codec, key: &str, token: &Token) -> Result<Vec<u8>, CacheError> {
    codec.encode(token, &sealed::Binding::redis(key))
}

/// Why stored bytes hold no token.
pub(super) enum Undecoded {
    /// Not a record at all: a miss, which the next store may replace.
    Corrupt(record::DecodeError),
    /// A record this instance cannot read (a newer version, sealed with a
    /// key it does not hold, plaintext where encryption is required).
    Unreadable(CacheError),
}

impl fmt::Display for Undecoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undecoded::Corrupt(e) => e.fmt(f),
            Undecoded::Unreadable(e) => f.write_str(e.message()),
        }
    }
}

/// The token in the bytes stored under the Redis key `key`.
pub(super) fn decode(codec: &Codec, key: &str, bytes: &[u8]) -> Result<Token, Undecoded> {
    let what = format!("Redis token entry {key}");
    match codec.decode(bytes, &sealed::Binding::redis(key), &what) {
        Ok(Decoded::Token(token)) => Ok(token),
        Ok(Decoded::Corrupt(e)) => Err(Undecoded::Corrupt(e)),
        Err(e) => Err(Undecoded::Unreadable(e)),
    }
}

/// Why a record that failed to decode must be kept rather than treated as
/// garbage, if it must: it is a record this instance cannot read.
pub(super) fn unreadable(e: &Undecoded) -> Option<String> {
    match e {
        Undecoded::Unreadable(e) => Some(e.message().to_owned()),
        Undecoded::Corrupt(_) => None,
    }
}

/// Whole milliseconds, saturating (the core's conversion).
pub(super) use freshtoken_core::time::duration_millis as millis;

pub(super) fn is_server_answer(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Server(_)) || e.code().is_some()
}

/// The error's category and code, never its detail (which may quote a URL
/// or a value).
pub(super) fn describe(e: &redis::RedisError) -> String {
    // The refusal of a cluster node (our own text, with the host only).
    if let Some(refusal) = e
        .detail()
        .filter(|d| d.starts_with(PLAIN_TEXT_REFUSAL))
        .filter(|_| e.kind() == redis::ErrorKind::InvalidClientConfig)
    {
        return refusal.to_owned();
    }
    let mut s = e.category().to_owned();
    if s.is_empty() {
        s.push_str("error");
    }
    if let Some(code) = e.code() {
        s.push_str(": ");
        s.push_str(code);
    }
    // An I/O error's own text ("Connection refused", a TLS certificate
    // problem) names no URL and no value, and tells the operator what to fix.
    let io = std::error::Error::source(e).filter(|_| e.is_io_error());
    if let Some(io) = io {
        s.push_str(": ");
        s.push_str(&io.to_string());
    } else if e.is_timeout() {
        s.push_str(" (timeout)");
    } else if e.is_connection_refusal() {
        s.push_str(" (connection refused)");
    } else if e.is_connection_dropped() {
        s.push_str(" (connection dropped)");
    }
    s
}

pub(super) fn invalid_url(e: &redis::RedisError) -> CacheError {
    CacheError::new(
        CacheErrorKind::Io,
        format!("invalid Redis URL or TLS settings ({})", describe(e)),
    )
}

pub(super) fn to_cache_error(e: &redis::RedisError) -> CacheError {
    use redis::ServerErrorKind as S;
    let unavailable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly
            )
        );
    let kind = if unavailable {
        CacheErrorKind::Unavailable
    } else {
        CacheErrorKind::Io
    };
    CacheError::new(kind, format!("Redis {}", describe(e)))
}

/// A `rediss://` URL (the scheme compared as the redis crate's URL parser
/// does, without regard to case).
fn is_tls_url(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss:"))
}

/// The redis crate builds its rustls configuration from the process-wide
/// crypto provider and offers no way to pass one (`ClientConfig::builder()`
/// inside it); with none installed, rustls would install one by itself from
/// its crate features at the first connection (or panic when both ring and
/// aws-lc-rs are compiled in). freshtoken installs no process-wide provider,
/// so a `rediss://` cache needs the application's, and says so up front.
#[cfg(feature = "redis-tls")]
fn check_crypto_provider() -> Result<(), CacheError> {
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return Ok(());
    }
    Err(CacheError::new(
        CacheErrorKind::Io,
        "rediss:// needs a process-wide rustls CryptoProvider, which the redis crate's TLS uses and \
         freshtoken never installs: install one before building the cache, e.g. \
         `rustls::crypto::ring::default_provider().install_default()` \
         (or aws_lc_rs's)",
    ))
}
