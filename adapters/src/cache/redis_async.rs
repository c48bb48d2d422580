//! The Redis cache on the redis crate's async connection, for the async
//! drivers (features `redis-tokio` and/or `redis-smol`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use freshtoken_core::{CacheError, CacheErrorKind, Clock, LeaseOutcome, Token};
use redis::aio::MultiplexedConnection;

use super::holder::holder_id;
use super::record;
use super::redis::{
    check_url, decode, encode, invalid_url, is_server_answer, millis, to_cache_error, unreadable,
    ACQUIRE, RELEASE, STORE, STORE_ATTEMPTS,
};
use super::sealed::Codec;
use super::AsyncTokenCache;
use crate::clock::SystemClock;

/// The async twin of [`RedisCache`](super::RedisCache): the same keys,
/// record format, lease scripts, URL checks, bounded reads and protection
/// of newer-format records, on the redis crate's multiplexed async
/// connection. Give it to an async driver with `Builder::async_cache`; the
/// driver polls it in its own task instead of on the blocking pool.
///
/// * **Runtimes**: with the `redis-tokio` feature it runs under tokio; with
///   `redis-smol` under smol and async-std (both are async-io based). With
///   both, the redis crate picks tokio inside a tokio runtime and smol
///   elsewhere.
/// * **Topology**: one server (`redis://`, `redis+unix://`; not yet
///   `rediss://`, which is refused: use [`RedisCache`](super::RedisCache)
///   for TLS). Cluster and Sentinel are supported by the blocking
///   [`RedisCache`](super::RedisCache), which the async drivers run on
///   their blocking pool.
/// * **Connections**: one multiplexed connection per cache value, made on
///   first use with a connect timeout, and each command with a response
///   timeout (1 s each by default). A connection that fails is dropped and
///   the next call reconnects; Redis down is
///   [`CacheErrorKind::Unavailable`], with one warning per outage.
/// * **Replica acknowledgements** are off by default, as for a single
///   server; [`with_replica_acks`](Self::with_replica_acks) turns them on
///   for a primary with replicas.
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
    client: redis::Client,
    key: String,
    lease_key: String,
    holder: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    replica_acks: Option<(usize, Duration)>,
    acquire: redis::Script,
    release: redis::Script,
    store: redis::Script,
    conn: Mutex<Option<MultiplexedConnection>>,
    down: AtomicBool,
}

impl AsyncRedisCache {
    /// A cache at `url` storing the token under `key`; no connection is
    /// made until the first use. Fails on a URL that cannot be parsed or is
    /// refused (plain text to a host that is not loopback, a fragment).
    pub fn new(url: &str, key: impl Into<String>) -> Result<Self, CacheError> {
        Self::open(url, key.into(), false)
    }

    /// Like [`new`](Self::new), but allows plain `redis://` to any host:
    /// tokens then cross the network unencrypted; only for a network you
    /// trust.
    pub fn new_allowing_plain_text(url: &str, key: impl Into<String>) -> Result<Self, CacheError> {
        Self::open(url, key.into(), true)
    }

    fn open(url: &str, key: String, allow_plain_text: bool) -> Result<Self, CacheError> {
        check_url(url, allow_plain_text)?;
        if url.starts_with("rediss:") {
            return Err(CacheError::new(
                CacheErrorKind::Io,
                "the async Redis cache does not speak TLS yet; for rediss:// use RedisCache (the blocking one, which async drivers run on their blocking pool)",
            ));
        }
        let client = redis::Client::open(url).map_err(|e| invalid_url(&e))?;
        Ok(AsyncRedisCache {
            client,
            lease_key: format!("{key}:lease"),
            key,
            holder: holder_id(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            replica_acks: None,
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            store: redis::Script::new(STORE),
            conn: Mutex::new(None),
            down: AtomicBool::new(false),
        })
    }

    /// Uses `key` for the lease instead of `<key>:lease`.
    pub fn with_lease_key(mut self, key: impl Into<String>) -> Self {
        self.lease_key = key.into();
        self
    }

    /// How long to wait for a connection (default 1 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a command's answer (default 1 s).
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Lease grants and stores of tokens with a refresh token wait until
    /// `replicas` replicas acknowledged them (`WAIT`), for at most
    /// `timeout` (kept below the command timeout); one not acknowledged in
    /// time is an Unavailable lease error (the lease released) or a failed
    /// store. `0` turns it off.
    pub fn with_replica_acks(mut self, replicas: usize, timeout: Duration) -> Self {
        self.replica_acks = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// The token's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease's key.
    pub fn lease_key(&self) -> &str {
        &self.lease_key
    }

    fn acks(&self) -> Option<(usize, Duration)> {
        self.replica_acks
            .map(|(n, t)| (n, t.min(self.command_timeout * 3 / 4)))
    }

    async fn connection(&self) -> Result<MultiplexedConnection, CacheError> {
        let existing = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(conn) = existing {
            return Ok(conn);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.failed(&e))?;
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// Maps a failure, drops a connection that may be broken, and logs the
    /// first failure of an outage.
    fn failed(&self, e: &redis::RedisError) -> CacheError {
        if !is_server_answer(e) {
            self.conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        let error = to_cache_error(e);
        if error.kind() == CacheErrorKind::Unavailable && !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(key = %self.key, error = %error, "Redis token cache unavailable; carrying on without it");
        }
        error
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(key = %self.key, "Redis token cache reachable again");
        }
    }

    async fn read_bounded(&self, conn: &mut MultiplexedConnection) -> Result<Vec<u8>, CacheError> {
        redis::cmd("GETRANGE")
            .arg(&self.key)
            .arg(0)
            .arg(record::MAX_RECORD_LEN)
            .query_async(conn)
            .await
            .map_err(|e| self.failed(&e))
    }

    async fn wait_replicas(
        &self,
        conn: &mut MultiplexedConnection,
        (replicas, timeout): (usize, Duration),
    ) -> Result<bool, CacheError> {
        let acked: usize = redis::cmd("WAIT")
            .arg(replicas)
            .arg(millis(timeout).max(1))
            .query_async(conn)
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(acked >= replicas)
    }

    /// `why`: what [`unreadable`] says (it names the key).
    fn unreadable_error(&self, why: &str) -> CacheError {
        CacheError::new(
            CacheErrorKind::Unreadable,
            format!("{why} and never overwritten"),
        )
    }
}

impl fmt::Debug for AsyncRedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncRedisCache")
            .field("key", &self.key)
            .field("lease_key", &self.lease_key)
            .field("holder", &self.holder)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("replica_acks", &self.replica_acks)
            .finish_non_exhaustive()
    }
}

impl AsyncTokenCache for AsyncRedisCache {
    fn metrics_label(&self) -> &'static str {
        "redis"
    }

    async fn load(&self) -> Result<Option<Token>, CacheError> {
        let mut conn = self.connection().await?;
        let bytes = self.read_bounded(&mut conn).await?;
        self.succeeded();
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() > record::MAX_RECORD_LEN {
            tracing::warn!(key = %self.key, limit = record::MAX_RECORD_LEN, "Redis token entry is larger than any record; treating it as a miss");
            return Ok(None);
        }
        match decode(&Codec::default(), &self.key, &bytes) {
            Ok(token) => Ok(Some(token)),
            Err(e) => match unreadable(&e) {
                Some(why) => Err(self.unreadable_error(&why)),
                None => {
                    tracing::warn!(key = %self.key, error = %e, "Redis token entry is not a usable record; treating it as a miss");
                    Ok(None)
                }
            },
        }
    }

    async fn store(&self, token: &Token) -> Result<(), CacheError> {
        let bytes = encode(&Codec::default(), &self.key, token)?;
        let rotated = token.refresh_token().is_some();
        let ttl_ms = if rotated {
            0
        } else {
            let ttl = token
                .expires_at()
                .saturating_duration_since(SystemClock.now());
            if ttl.as_millis() == 0 {
                return Ok(());
            }
            millis(ttl)
        };
        let mut conn = self.connection().await?;
        for _ in 0..STORE_ATTEMPTS {
            let current = self.read_bounded(&mut conn).await?;
            if !current.is_empty() && current.len() <= record::MAX_RECORD_LEN {
                if let Some(why) = decode(&Codec::default(), &self.key, &current)
                    .err()
                    .as_ref()
                    .and_then(unreadable)
                {
                    return Err(self.unreadable_error(&why));
                }
            }
            let written: i64 = self
                .store
                .key(&self.key)
                .arg(record::MAX_RECORD_LEN)
                .arg(&current)
                .arg(&bytes)
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(&e))?;
            if written != 1 {
                continue;
            }
            if let Some(acks) = self.acks().filter(|_| rotated) {
                if !self.wait_replicas(&mut conn, acks).await? {
                    return Err(CacheError::new(
                        CacheErrorKind::Unavailable,
                        format!(
                            "Redis stored the token but fewer than {} replicas acknowledged it within {:?}; counted as a failed store",
                            acks.0, acks.1
                        ),
                    ));
                }
            }
            self.succeeded();
            return Ok(());
        }
        Err(CacheError::new(
            CacheErrorKind::Unavailable,
            format!(
                "Redis token entry {} kept changing during the store ({STORE_ATTEMPTS} attempts); not stored",
                self.key
            ),
        ))
    }

    async fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let mut conn = self.connection().await?;
        let granted: i64 = self
            .acquire
            .key(&self.lease_key)
            .arg(&self.holder)
            .arg(millis(ttl).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(&e))?;
        self.succeeded();
        if granted != 1 {
            return Ok(LeaseOutcome::Busy);
        }
        if let Some(acks) = self.acks() {
            if !self.wait_replicas(&mut conn, acks).await? {
                let _ = self
                    .release
                    .key(&self.lease_key)
                    .arg(&self.holder)
                    .invoke_async::<i64>(&mut conn)
                    .await;
                // An error, not Busy: see RedisCache::acquire_lease.
                tracing::warn!(key = %self.lease_key, "Redis lease not acknowledged by a replica in time; released it");
                return Err(CacheError::new(
                    CacheErrorKind::Unavailable,
                    format!(
                        "Redis granted the lease {} but no replica acknowledged it in time; released it",
                        self.lease_key
                    ),
                ));
            }
        }
        Ok(LeaseOutcome::Granted)
    }

    async fn release_lease(&self) -> Result<(), CacheError> {
        let mut conn = self.connection().await?;
        self.release
            .key(&self.lease_key)
            .arg(&self.holder)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(|e| self.failed(&e))?;
        self.succeeded();
        Ok(())
    }
}
