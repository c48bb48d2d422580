//! The Redis cache on the redis crate's async connection, for the async
//! drivers (features `redis-tokio` and/or `redis-smol`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use freshtoken_core::{CacheError, CacheErrorKind, LeaseOutcome, Token};
use redis::aio::MultiplexedConnection;

use super::redis::{
    keeps_connection, to_cache_error, wait_cmd, Backend, RedisCacheBuilder, ReplicaAcks, Shared,
    STORE_ATTEMPTS,
};
#[cfg(feature = "redis-sentinel")]
use super::sentinel;
use super::AsyncTokenCache;

/// The async twin of [`RedisCache`](super::RedisCache): the same keys,
/// record format, lease scripts, URL checks, bounded reads, replica
/// acknowledgements, encryption and protection of unreadable records (one
/// implementation of each, shared with the blocking cache: only the I/O
/// differs), on the redis crate's async connections. Give it to an async
/// driver with `Builder::async_cache`; the driver polls it in its own task
/// instead of on the blocking pool.
///
/// * **Runtimes**: with the `redis-tokio` feature it runs under tokio; with
///   `redis-smol` under smol and async-std (both are async-io based). With
///   both, the redis crate picks tokio inside a tokio runtime and smol
///   elsewhere.
/// * **Topology**: one server (`redis://`, `redis+unix://`, and `rediss://`
///   with the `redis-tls` feature), a Redis Cluster
///   ([`AsyncRedisCache::cluster`], feature `redis-cluster`: the redis
///   crate's async cluster connection) or a Sentinel-managed primary
///   ([`AsyncRedisCache::sentinel`], feature `redis-sentinel`: every
///   Sentinel asked, the newest configuration's primary taken, as the
///   blocking cache does). The options are [`RedisCacheBuilder`]'s, ended with
///   [`build_async`](RedisCacheBuilder::build_async); cluster hash tags,
///   `WAIT` defaults and what Redis does not promise are as documented on
///   [`RedisCache`](super::RedisCache).
/// * **TLS** (`rediss://`, feature `redis-tls`): rustls, trusting the
///   webpki roots or only your CA
///   ([`RedisCacheBuilder::root_certificate`]). As for the blocking cache,
///   the redis crate uses the process-wide rustls provider, which freshtoken
///   never installs: install yours before building the cache (building it
///   without one is an error that says so). Without `redis-tls` a
///   `rediss://` URL is refused when the cache is built.
/// * **Connections**: one multiplexed connection per cache value (for a
///   cluster, the async cluster connection, which keeps one per node), made
///   on first use with a connect timeout, and each command with a response
///   timeout (1 s each by default). A connection that fails, or whose write
///   too few replicas acknowledged, is dropped and the next call reconnects
///   (for Sentinel, asking the Sentinels again);
///   Redis down is [`CacheErrorKind::Unavailable`], with one warning per
///   outage.
///
/// Neither `Debug` nor any error shows the URL (it may hold a password) or
/// a token.
///
/// ```
/// use freshtoken::cache::{AsyncRedisCache, AsyncTokenCache};
/// use std::time::Duration;
///
/// # #[cfg(feature = "redis-tokio")]
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // Nothing listens on port 1: Unavailable, never a panic or a hang.
/// let cache = AsyncRedisCache::new("redis://127.0.0.1:1/", "myapp:token")?
///     .with_connect_timeout(Duration::from_millis(200));
/// let err = cache.load().await.unwrap_err();
/// assert_eq!(err.kind(), freshtoken::CacheErrorKind::Unavailable);
/// // Plain text to another host is refused, as for RedisCache.
/// assert!(AsyncRedisCache::new("redis://cache.internal/", "myapp:token").is_err());
/// # Ok::<(), freshtoken::CacheError>(())
/// # }).unwrap();
/// ```
pub struct AsyncRedisCache {
    shared: Shared,
    conn: Mutex<Option<Conn>>,
    down: AtomicBool,
}

/// A live async connection of either kind (both are cheap clones of a
/// multiplexed connection).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        script: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => script.invoke_async(c).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => script.invoke_async(c).await,
        }
    }

    /// `WAIT` on the connection that wrote `key` (in a cluster, routed to
    /// the primary of its slot).
    async fn wait_replicas(&mut self, key: &str, acks: ReplicaAcks) -> redis::RedisResult<usize> {
        let cmd = wait_cmd(acks);
        match self {
            Conn::Single(c) => {
                let _ = key;
                cmd.query_async(c).await
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => {
                let value = c.route_command(cmd, super::redis::primary_of(key)).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

impl AsyncRedisCache {
    /// A cache at `url` storing the token under `key`; no connection is
    /// made until the first use. Fails on a URL that cannot be parsed or is
    /// refused (plain text to a host that is not loopback, a fragment).
    pub fn new(url: &str, key: impl Into<String>) -> Result<Self, CacheError> {
        Self::builder(url, key).build_async()
    }

    /// Like [`new`](Self::new), but allows plain `redis://` to any host:
    /// tokens then cross the network unencrypted; only for a network you
    /// trust.
    pub fn new_allowing_plain_text(url: &str, key: impl Into<String>) -> Result<Self, CacheError> {
        Self::builder(url, key).allow_plain_text(true).build_async()
    }

    /// Options for a cache on one server at `url`; end them with
    /// [`build_async`](RedisCacheBuilder::build_async).
    pub fn builder(url: &str, key: impl Into<String>) -> RedisCacheBuilder {
        super::RedisCache::builder(url, key)
    }

    /// Options for a cache in a Redis Cluster (see
    /// [`RedisCache::cluster`](super::RedisCache::cluster)); end them with
    /// [`build_async`](RedisCacheBuilder::build_async).
    ///
    /// ```
    /// use freshtoken::cache::AsyncRedisCache;
    ///
    /// let cache = AsyncRedisCache::cluster(["redis://127.0.0.1:7000/"], "myapp:token")
    ///     .build_async()?;
    /// assert_eq!(cache.lease_key(), "{myapp:token}:lease");
    /// # Ok::<(), freshtoken::CacheError>(())
    /// ```
    #[cfg(feature = "redis-cluster")]
    pub fn cluster<I, S>(nodes: I, key: impl Into<String>) -> RedisCacheBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        super::RedisCache::cluster(nodes, key)
    }

    /// Options for a cache on the primary that the Sentinels report for
    /// `service` (see [`RedisCache::sentinel`](super::RedisCache::sentinel));
    /// end them with [`build_async`](RedisCacheBuilder::build_async).
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
        super::RedisCache::sentinel(sentinels, service, key)
    }

    pub(super) fn from_shared(shared: Shared) -> Self {
        AsyncRedisCache {
            shared,
            conn: Mutex::new(None),
            down: AtomicBool::new(false),
        }
    }

    /// Encrypts the record at rest with `keys`, as
    /// [`RedisCache::encryption`](super::RedisCache::encryption) does.
    #[cfg(feature = "encryption")]
    pub fn encryption(mut self, keys: super::EncryptionKeys) -> Self {
        self.shared.codec = super::sealed::Codec::with_keys(keys);
        self
    }

    /// Uses `key` for the lease instead of the default.
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

    /// Lease grants and stores of tokens with a refresh token wait until
    /// `replicas` replicas acknowledged them (`WAIT`), for at most
    /// `timeout` (kept below the command timeout); one not acknowledged in
    /// time is an Unavailable lease error (the lease released) or a failed
    /// store. `0` turns it off.
    pub fn with_replica_acks(mut self, replicas: usize, timeout: Duration) -> Self {
        self.shared.replica_acks = (replicas > 0).then_some(ReplicaAcks { replicas, timeout });
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

    async fn connection(&self) -> Result<Conn, CacheError> {
        let existing = crate::sync::lock(&self.conn).clone();
        if let Some(conn) = existing {
            return Ok(conn);
        }
        let conn = self.connect().await.map_err(|e| self.failed(e))?;
        *crate::sync::lock(&self.conn) = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<Conn, CacheError> {
        let s = &self.shared;
        let io = |e: redis::RedisError| to_cache_error(&e);
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.command_timeout));
        match &s.backend {
            Backend::Single(client) => Ok(Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(io)?,
            )),
            #[cfg(feature = "redis-cluster")]
            Backend::Cluster { .. } => Ok(Conn::Cluster(
                s.cluster_client()
                    .map_err(io)?
                    .get_async_connection()
                    .await
                    .map_err(io)?,
            )),
            #[cfg(feature = "redis-sentinel")]
            Backend::Sentinel {
                sentinels,
                service,
                tls,
            } => {
                self.connect_sentinel_primary(sentinels, service, *tls, &config)
                    .await
            }
        }
    }

    /// The async twin of `RedisCache`'s: every Sentinel is asked, the
    /// newest view's primary is taken if it says it is one (see
    /// [`super::sentinel`]; the redis crate's async Sentinel client takes
    /// the first Sentinel's word).
    #[cfg(feature = "redis-sentinel")]
    async fn connect_sentinel_primary(
        &self,
        sentinels: &[redis::ConnectionInfo],
        service: &str,
        tls: bool,
        config: &redis::AsyncConnectionConfig,
    ) -> Result<Conn, CacheError> {
        let io = |e: redis::RedisError| to_cache_error(&e);
        let mut last = CacheError::new(
            CacheErrorKind::Unavailable,
            format!("no Sentinel named a primary for {service:?}"),
        );
        let mut views = Vec::with_capacity(sentinels.len());
        for info in sentinels {
            let asked = async {
                let mut conn = redis::Client::open(info.clone())
                    .map_err(io)?
                    .get_multiplexed_async_connection_with_config(config)
                    .await
                    .map_err(io)?;
                sentinel::master_cmd(service)
                    .query_async::<redis::Value>(&mut conn)
                    .await
                    .map_err(io)
            };
            match asked.await {
                Ok(answer) => views.extend(sentinel::parse_master(&answer)),
                Err(e) => last = e,
            }
        }
        let Some((host, port)) = sentinel::choose(&views) else {
            return Err(last);
        };
        let client = redis::Client::open(sentinel::primary_url(&host, port, tls))
            .map_err(|e| super::redis::invalid_url(&e))?;
        self.shared.check_primary(&client)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .map_err(io)?;
        let role = redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut conn)
            .await;
        if role.is_ok_and(|r| sentinel::is_primary(&r)) {
            return Ok(Conn::Single(conn));
        }
        Err(CacheError::new(
            CacheErrorKind::Unavailable,
            "the server the Sentinels name as primary is not one (a failover under way)",
        ))
    }

    /// Drops a connection that may be broken, and logs the first failure
    /// of an outage.
    fn failed(&self, error: CacheError) -> CacheError {
        if error.kind() == CacheErrorKind::Unavailable && !self.down.swap(true, Ordering::Relaxed) {
            self.shared.unavailable(&error);
        }
        error
    }

    /// Maps a failed call on the connection (see [`failed`](Self::failed)).
    fn call_failed(&self, e: &redis::RedisError) -> CacheError {
        if !keeps_connection(e) {
            self.drop_connection();
        }
        self.failed(to_cache_error(e))
    }

    /// Forgets the connection: the next call connects again (for Sentinel,
    /// asking the Sentinels again). Also after a write that too few
    /// replicas acknowledged, whose server may have been demoted without
    /// knowing it (as `RedisCache` does, and why).
    fn drop_connection(&self) {
        crate::sync::lock(&self.conn).take();
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            self.shared.reachable_again();
        }
    }

    async fn read(&self, conn: &mut Conn) -> Result<Vec<u8>, CacheError> {
        conn.query(&self.shared.read_cmd())
            .await
            .map_err(|e| self.call_failed(&e))
    }
}

impl fmt::Debug for AsyncRedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connected = crate::sync::lock(&self.conn).is_some();
        let mut d = f.debug_struct("AsyncRedisCache");
        self.shared.debug_fields(&mut d);
        d.field("connected", &connected).finish_non_exhaustive()
    }
}

impl AsyncTokenCache for AsyncRedisCache {
    fn metrics_label(&self) -> &'static str {
        "redis"
    }

    fn bind_config(&self, config: freshtoken_core::TokenId) {
        self.shared.codec.bind_config(config, &self.shared.key);
    }

    async fn load(&self) -> Result<Option<Token>, CacheError> {
        let mut conn = self.connection().await?;
        let bytes = self.read(&mut conn).await?;
        self.succeeded();
        self.shared.loaded(&bytes)
    }

    async fn store(&self, token: &Token) -> Result<(), CacheError> {
        let s = &self.shared;
        let Some(pending) = s.prepare_store(token)? else {
            return Ok(());
        };
        let mut conn = self.connection().await?;
        for _ in 0..STORE_ATTEMPTS {
            let current = self.read(&mut conn).await?;
            s.check_replaceable(&current)?;
            let written: i64 = conn
                .invoke(&s.store_script(&pending, &current))
                .await
                .map_err(|e| self.call_failed(&e))?;
            if written != 1 {
                continue;
            }
            if let Some(acks) = pending.acks {
                let acked = conn
                    .wait_replicas(&s.key, acks)
                    .await
                    .map_err(|e| self.call_failed(&e))?;
                if acked < acks.replicas {
                    self.drop_connection();
                    return Err(s.store_not_acknowledged(acked, acks));
                }
            }
            self.succeeded();
            return Ok(());
        }
        Err(s.store_kept_changing())
    }

    async fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let s = &self.shared;
        let mut conn = self.connection().await?;
        let granted: i64 = conn
            .invoke(&s.acquire_script(ttl))
            .await
            .map_err(|e| self.call_failed(&e))?;
        self.succeeded();
        if granted != 1 {
            return Ok(LeaseOutcome::Busy);
        }
        let Some(acks) = s.acks() else {
            return Ok(LeaseOutcome::Granted);
        };
        let acked = conn
            .wait_replicas(&s.lease_key, acks)
            .await
            .map_err(|e| self.call_failed(&e))?;
        if acked >= acks.replicas {
            return Ok(LeaseOutcome::Granted);
        }
        // As in RedisCache: a lease only the primary knows is given back.
        let _ = conn.invoke::<i64>(&s.release_script()).await;
        self.drop_connection();
        Err(s.lease_not_acknowledged(acked))
    }

    async fn release_lease(&self) -> Result<(), CacheError> {
        let mut conn = self.connection().await?;
        conn.invoke::<i64>(&self.shared.release_script())
            .await
            .map_err(|e| self.call_failed(&e))?;
        self.succeeded();
        Ok(())
    }
}
