//! Where tokens are shared: caches and their leases.
//!
//! A cache lets instances that cannot talk to each other (processes on one
//! machine, a fleet of serverless functions) share one token, so the
//! authority sees one request per refresh period rather than one per
//! instance. An optional lease says "I am fetching, wait for me"; it has a
//! TTL so a crashed holder does not block the others for long.
//!
//! A cache failure never stops refreshing: the machine treats a failed load
//! as a miss and a failed store as a warning (availability beats load).
//!
//! The caches:
//!
//! * [`MemoryCache`]: in this process; the fast first layer of a stack.
//! * `FileCache` (feature `file`): one file shared by the processes of a
//!   machine; atomic writes, a lease in a sidecar lock file.
//! * `RedisCache` (feature `redis`, `rediss://` with `redis-tls`): shared by
//!   a fleet; `SET NX PX` lease with a compare-and-delete release.
//! * `PostgresCache` (feature `postgres`): a row in a PostgreSQL table,
//!   shared by a fleet that has a database and no Redis; the lease is a row
//!   with a holder and a server-side deadline, taken in one statement.
//! * [`CacheStack`]: several of them checked in order, with write-back.
//! * `RedisCache` on a Redis Cluster (feature `redis-cluster`) or the
//!   primary that Redis Sentinel names (feature `redis-sentinel`), with
//!   leases and rotated refresh tokens acknowledged by a replica.
//! * `AsyncRedisCache` (features `redis-tokio`, `redis-smol`): the Redis
//!   cache on the redis crate's async connection, for the async drivers.
//!
//! The file and Redis caches share one versioned JSON format, `record`,
//! which also reads aliri_tokens 0.3's cache file.
//!
//! With the `encryption` feature, the file, Redis and PostgreSQL caches can
//! seal their records at rest (`EncryptionKeys`, XChaCha20-Poly1305, each
//! record bound to its cache key). An entry that exists but that this
//! instance cannot read (a key it does not hold, a newer format, a tampered
//! record) is a `CacheErrorKind::Unreadable` error: never a miss, and never
//! overwritten by a store.
//!
//! # Records bound to their configuration
//!
//! Each record of the file, Redis and PostgreSQL caches (sealed or not)
//! names the configuration its token was made for: the
//! [`TokenKey::config_id`](crate::TokenKey::config_id) of the token URL,
//! client id, scope, audience and resources, a digest that holds no secret.
//! The driver tells the cache its configuration when it starts
//! ([`TokenCache::bind_config`]; from the source, or
//! [`Builder::cache_config`](crate::Builder::cache_config)); a record made
//! for another configuration is then never adopted: the load is a miss
//! with a warning, the instance fetches its own token, and its store
//! replaces the entry. So two configurations that share a cache name (a
//! hand-made name, a scope changed under the same name) never serve each
//! other's token; they only take turns in the entry. A record that names no
//! configuration (written by an earlier release) is adopted, for the
//! upgrade: see [`record`]'s docs.
//!
//! These are blocking caches ([`TokenCache`]); async drivers run them on
//! their blocking pool. A cache with an async client implements
//! [`AsyncTokenCache`] instead, and the tokio and async-std drivers poll it
//! in their own task (`Builder::async_cache`).

#[cfg(feature = "file")]
mod file;
#[cfg(any(feature = "file", feature = "redis", feature = "postgres"))]
mod holder;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(
    feature = "file",
    feature = "redis",
    feature = "postgres",
    feature = "encryption"
))]
pub mod record;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "redis-tokio", feature = "redis-smol"))]
mod redis_async;
#[cfg(any(
    feature = "file",
    feature = "redis",
    feature = "postgres",
    feature = "encryption"
))]
mod sealed;
#[cfg(feature = "redis-sentinel")]
mod sentinel;
mod stack;

#[cfg(feature = "redis")]
pub use self::redis::RedisCache;
#[cfg(feature = "redis")]
pub use self::redis::RedisCacheBuilder;
#[cfg(any(feature = "redis-tokio", feature = "redis-smol"))]
pub use self::redis_async::AsyncRedisCache;
#[cfg(feature = "file")]
pub use file::FileCache;
pub use memory::MemoryCache;
#[cfg(feature = "postgres")]
pub use postgres::{AsyncPostgresCache, PostgresCache};
#[cfg(feature = "encryption")]
pub use sealed::EncryptionKeys;
pub use stack::CacheStack;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use freshtoken_core::LeaseOutcome;
use freshtoken_core::{CacheError, Timestamp, Token, TokenId};

/// A blocking token cache. Async drivers run it on their blocking pool.
pub trait TokenCache: Send + Sync + 'static {
    /// The stored token, if any. A corrupt or foreign entry is `Ok(None)`
    /// (with a warning) or a [`CacheErrorKind::Corrupt`](freshtoken_core::CacheErrorKind::Corrupt)
    /// error; either way the machine carries on.
    /// An entry that this instance cannot read but must not lose (a newer
    /// format version, written by a newer release) is a
    /// [`CacheErrorKind::Unreadable`](freshtoken_core::CacheErrorKind::Unreadable)
    /// error, and `store` refuses to replace it with the same error.
    fn load(&self) -> Result<Option<Token>, CacheError>;

    /// The stored token, when the machine holds one that expires at
    /// `newer_than` and wants a better one. A single cache just loads (the
    /// default); a layered one ([`CacheStack`]) asks its shared layers
    /// rather than stop at a local layer that holds the machine's own token.
    fn load_newer(&self, newer_than: Option<Timestamp>) -> Result<Option<Token>, CacheError> {
        let _ = newer_than;
        self.load()
    }

    /// Stores `token` (with its refresh token, when it has one).
    fn store(&self, token: &Token) -> Result<(), CacheError>;

    /// Tries to take the lease for `ttl`. The default: leases unsupported.
    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let _ = ttl;
        Ok(LeaseOutcome::Unsupported)
    }

    /// Releases the lease if this instance holds it (and only then).
    fn release_lease(&self) -> Result<(), CacheError> {
        Ok(())
    }

    /// Binds this cache's records to the configuration `config` (a
    /// [`TokenKey::config_id`](crate::TokenKey::config_id)): the driver
    /// calls it once, before the first load, when it knows what its
    /// source fetches (see the [module docs](self)). A cache that persists
    /// records writes `config` into each and treats a record made for
    /// another configuration as absent, with a warning. The first binding
    /// holds. The default does nothing: an in-process cache serves one
    /// refresher, and a custom cache may ignore it.
    fn bind_config(&self, config: TokenId) {
        let _ = config;
    }

    /// A short, fixed name for this kind of cache (`"memory"`, `"file"`,
    /// `"redis"`, `"postgres"`): the `layer` label of the cache metrics
    /// (feature `metrics`). The default is `"custom"`; a [`CacheStack`]
    /// says `"stack"` and labels each of its layers with theirs. Keep it a
    /// constant: label values must be few.
    ///
    /// ```
    /// use freshtoken::cache::{MemoryCache, TokenCache};
    /// assert_eq!(MemoryCache::new().metrics_label(), "memory");
    /// ```
    fn metrics_label(&self) -> &'static str {
        "custom"
    }
}

macro_rules! forward_cache {
    ($($ptr:ident),*) => {$(
        impl<T: TokenCache + ?Sized> TokenCache for $ptr<T> {
            fn load(&self) -> Result<Option<Token>, CacheError> {
                (**self).load()
            }
            fn load_newer(&self, newer_than: Option<Timestamp>) -> Result<Option<Token>, CacheError> {
                (**self).load_newer(newer_than)
            }
            fn store(&self, token: &Token) -> Result<(), CacheError> {
                (**self).store(token)
            }
            fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
                (**self).acquire_lease(ttl)
            }
            fn release_lease(&self) -> Result<(), CacheError> {
                (**self).release_lease()
            }
            fn bind_config(&self, config: TokenId) {
                (**self).bind_config(config)
            }
            fn metrics_label(&self) -> &'static str {
                (**self).metrics_label()
            }
        }
    )*};
}
forward_cache!(Arc, Box);

/// An async token cache: the twin of [`TokenCache`] for caches with an async
/// client. Its futures must be `Send`.
///
/// The tokio and async-std drivers take one through
/// `Builder::async_cache` and poll it in the driver's own task, with the
/// same guards as a blocking cache: a call that panics or takes longer than
/// the fetch timeout is a cache error (a miss, for a load), and the driver
/// carries on. The blocking driver has no executor to poll it with, so it
/// takes only [`TokenCache`]s.
///
/// ```
/// use freshtoken::cache::{AsyncTokenCache, MemoryCache, TokenCache};
/// use freshtoken::{AccessToken, CacheError, Timestamp, Token};
/// use freshtoken::cache::LeaseOutcome;
/// use std::time::Duration;
///
/// /// Stands for a cache with an async client (a database, a KV service).
/// struct Remote(MemoryCache);
///
/// impl AsyncTokenCache for Remote {
///     async fn load(&self) -> Result<Option<Token>, CacheError> {
///         self.0.load()
///     }
///     async fn store(&self, token: &Token) -> Result<(), CacheError> {
///         self.0.store(token)
///     }
///     // No lease: the defaults say `Unsupported` and release nothing.
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let cache = Remote(MemoryCache::new());
/// let token = Token::new(AccessToken::new("at"), Timestamp::EPOCH, Timestamp::EPOCH, Timestamp::MAX);
/// cache.store(&token).await.unwrap();
/// assert_eq!(cache.load().await.unwrap(), Some(token));
/// let ttl = Duration::from_secs(10);
/// assert_eq!(cache.acquire_lease(ttl).await.unwrap(), LeaseOutcome::Unsupported);
/// cache.release_lease().await.unwrap();
/// # });
/// ```
pub trait AsyncTokenCache: Send + Sync + 'static {
    /// The stored token, if any; see [`TokenCache::load`].
    fn load(&self) -> impl Future<Output = Result<Option<Token>, CacheError>> + Send;

    /// The stored token when the machine wants one newer than `newer_than`;
    /// see [`TokenCache::load_newer`]. The default loads.
    fn load_newer(
        &self,
        newer_than: Option<Timestamp>,
    ) -> impl Future<Output = Result<Option<Token>, CacheError>> + Send {
        let _ = newer_than;
        self.load()
    }

    /// Stores `token` (with its refresh token, when it has one).
    fn store(&self, token: &Token) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Tries to take the lease for `ttl`. The default: leases unsupported.
    fn acquire_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<LeaseOutcome, CacheError>> + Send {
        let _ = ttl;
        std::future::ready(Ok(LeaseOutcome::Unsupported))
    }

    /// Releases the lease if this instance holds it (and only then).
    fn release_lease(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Binds this cache's records to the configuration `config`; see
    /// [`TokenCache::bind_config`]. The default does nothing.
    fn bind_config(&self, config: TokenId) {
        let _ = config;
    }

    /// A short, fixed name for this kind of cache, the `layer` label of the
    /// cache metrics; see [`TokenCache::metrics_label`]. The default is
    /// `"custom"`.
    fn metrics_label(&self) -> &'static str {
        "custom"
    }
}

macro_rules! forward_async_cache {
    ($($ptr:ident),*) => {$(
        impl<T: AsyncTokenCache> AsyncTokenCache for $ptr<T> {
            fn load(&self) -> impl Future<Output = Result<Option<Token>, CacheError>> + Send {
                (**self).load()
            }
            fn load_newer(
                &self,
                newer_than: Option<Timestamp>,
            ) -> impl Future<Output = Result<Option<Token>, CacheError>> + Send {
                (**self).load_newer(newer_than)
            }
            fn store(&self, token: &Token) -> impl Future<Output = Result<(), CacheError>> + Send {
                (**self).store(token)
            }
            fn acquire_lease(
                &self,
                ttl: Duration,
            ) -> impl Future<Output = Result<LeaseOutcome, CacheError>> + Send {
                (**self).acquire_lease(ttl)
            }
            fn release_lease(&self) -> impl Future<Output = Result<(), CacheError>> + Send {
                (**self).release_lease()
            }
            fn bind_config(&self, config: TokenId) {
                (**self).bind_config(config)
            }
            fn metrics_label(&self) -> &'static str {
                (**self).metrics_label()
            }
        }
    )*};
}
forward_async_cache!(Arc, Box);
