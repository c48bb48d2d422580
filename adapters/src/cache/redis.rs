//! A token cache in Redis, shared by a fleet.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use freshtoken_core::{CacheError, CacheErrorKind, Clock, LeaseOutcome, Token};

use super::holder::holder_id;
use super::sealed::{self, Codec, Decoded};
use super::TokenCache;
use crate::clock::SystemClock;

/// Takes the lease if it is free, or extends it if it is already ours (a
/// retry under the lease must not find itself locked out).
const ACQUIRE: &str = r"
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
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Writes the token only if the entry is still what the store checked
/// (ARGV[1] '1' and ARGV[2] its bytes, or '0' for no entry): a store never
/// replaces an entry this instance cannot read. ARGV[3] is the record,
/// ARGV[4] the TTL in ms ('' for none).
const STORE_IF_UNCHANGED: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
    if cur ~= ARGV[2] then return 0 end
elseif cur then
    return 0
end
if ARGV[4] == '' then
    redis.call('SET', KEYS[1], ARGV[3])
else
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
";

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
///   lease. The lease key defaults to `<key>:lease`. Each `RedisCache`
///   value is one holder.
/// * Connection URLs: `redis://[user:pass@]host[:port][/db]`,
///   `redis+unix:///path/to/socket[?db=N]`, and `rediss://...` (TLS) when
///   the `redis-tls` feature is on (trusting the webpki roots, or only your
///   CA with [`with_root_certificate`](Self::with_root_certificate)).
///   Connections have a connect timeout and
///   a per-command timeout (1 s each by default).
/// * A store never replaces an entry this instance cannot read (a newer
///   record version, or one sealed with a key it does not hold): it reads
///   the entry, and writes only if it is still the same, in one script. It
///   fails with [`CacheErrorKind::Unreadable`] instead. With the
///   `encryption` feature, [`encryption`](Self::encryption) seals records.
/// * Redis down is a [`CacheErrorKind::Unavailable`] error, which the machine
///   treats as a miss (availability beats load). One warning is logged when
///   Redis becomes unreachable; each later call tries to reconnect, and the
///   recovery is logged too.
/// * The API is blocking; async drivers run it on their blocking pool.
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
/// # Ok::<(), freshtoken::CacheError>(())
/// ```
pub struct RedisCache {
    client: redis::Client,
    key: String,
    lease_key: String,
    holder: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    acquire: redis::Script,
    release: redis::Script,
    store_if_unchanged: redis::Script,
    codec: Codec,
    state: Mutex<ConnState>,
}

#[derive(Default)]
struct ConnState {
    conn: Option<redis::Connection>,
    /// Whether the last attempt failed, so that an outage logs one warning.
    down: bool,
}

impl RedisCache {
    /// A cache at `url` (see the type's docs for the forms) storing the
    /// token under `key`. No connection is made until the first use.
    ///
    /// Fails only on a URL that cannot be parsed; the error does not repeat
    /// the URL.
    pub fn new(url: &str, key: impl Into<String>) -> Result<Self, CacheError> {
        #[cfg(feature = "redis-tls")]
        install_crypto_provider();
        let client = redis::Client::open(url).map_err(|e| invalid_url(&e))?;
        Ok(Self::with_client(client, key.into()))
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
        install_crypto_provider();
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_ca_pem.to_vec()),
        };
        let client = redis::Client::build_with_tls(url, certs).map_err(|e| invalid_url(&e))?;
        Ok(Self::with_client(client, key.into()))
    }

    fn with_client(client: redis::Client, key: String) -> Self {
        RedisCache {
            client,
            lease_key: format!("{key}:lease"),
            key,
            holder: holder_id(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
            store_if_unchanged: redis::Script::new(STORE_IF_UNCHANGED),
            codec: Codec::default(),
            state: Mutex::new(ConnState::default()),
        }
    }

    /// Encrypts the record at rest with `keys` (see
    /// [`EncryptionKeys`](super::EncryptionKeys)). The Redis key is bound
    /// to the record, so a record copied to another key is refused.
    #[cfg(feature = "encryption")]
    pub fn encryption(mut self, keys: super::EncryptionKeys) -> Self {
        self.codec = Codec::with_keys(keys);
        self
    }

    fn binding(&self) -> Vec<u8> {
        sealed::binding(self.key.as_bytes())
    }

    fn what(&self) -> String {
        format!("Redis key {:?}", self.key)
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

    /// The token's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease's key.
    pub fn lease_key(&self) -> &str {
        &self.lease_key
    }

    fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        Ok(conn)
    }

    /// Runs `f` on the connection, (re)connecting first if there is none.
    fn run<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, CacheError> {
        let mut state = self.state();
        let result = match state.conn.take() {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
        .and_then(|mut conn| {
            let out = f(&mut conn);
            // A server's error answer leaves the connection usable; any
            // other failure may leave half a reply in it.
            if out.is_ok() || matches!(out, Err(ref e) if is_server_answer(e)) {
                state.conn = Some(conn);
            }
            out
        });
        match result {
            Ok(value) => {
                if std::mem::take(&mut state.down) {
                    tracing::info!(key = %self.key, "Redis token cache reachable again");
                }
                Ok(value)
            }
            Err(e) => {
                let error = to_cache_error(&e);
                if error.kind() == CacheErrorKind::Unavailable
                    && !std::mem::replace(&mut state.down, true)
                {
                    tracing::warn!(key = %self.key, error = %error, "Redis token cache unavailable; carrying on without it");
                }
                Err(error)
            }
        }
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("RedisCache")
            .field("key", &self.key)
            .field("lease_key", &self.lease_key)
            .field("holder", &self.holder)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("connected", &state.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenCache for RedisCache {
    fn load(&self) -> Result<Option<Token>, CacheError> {
        let bytes: Option<Vec<u8>> = self.run(|c| redis::cmd("GET").arg(&self.key).query(c))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match self.codec.decode(&bytes, &self.binding(), &self.what())? {
            Decoded::Token(token) => Ok(Some(token)),
            Decoded::Corrupt(e) => {
                // Left in place for inspection; the next store replaces it.
                tracing::warn!(key = %self.key, error = %e, "Redis token entry is not a usable record; treating it as a miss");
                Ok(None)
            }
        }
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        let bytes = self.codec.encode(token, &self.binding())?;
        let mut ttl_ms = String::new();
        if token.refresh_token().is_none() {
            let ttl = token
                .expires_at()
                .saturating_duration_since(SystemClock.now());
            if ttl.as_millis() == 0 {
                // Already expired: nothing worth sharing.
                return Ok(());
            }
            ttl_ms = millis(ttl).to_string();
        }
        // Look at what is there, refuse to replace what this instance cannot
        // read, and write only if it is still the same (a peer may write in
        // between: then look again).
        for _ in 0..3 {
            let current: Option<Vec<u8>> =
                self.run(|c| redis::cmd("GET").arg(&self.key).query(c))?;
            if let Some(current) = &current {
                self.codec
                    .check_overwrite(current, &self.binding(), &self.what())?;
            }
            let written: i64 = self.run(|c| {
                self.store_if_unchanged
                    .key(&self.key)
                    .arg(if current.is_some() { "1" } else { "0" })
                    .arg(current.as_deref().unwrap_or_default())
                    .arg(&bytes)
                    .arg(&ttl_ms)
                    .invoke(c)
            })?;
            if written == 1 {
                return Ok(());
            }
        }
        Err(CacheError::new(
            CacheErrorKind::Unavailable,
            format!("{} kept changing during the store", self.what()),
        ))
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let granted: i64 = self.run(|c| {
            self.acquire
                .key(&self.lease_key)
                .arg(&self.holder)
                .arg(millis(ttl).max(1))
                .invoke(c)
        })?;
        Ok(if granted == 1 {
            LeaseOutcome::Granted
        } else {
            LeaseOutcome::Busy
        })
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        self.run(|c| {
            self.release
                .key(&self.lease_key)
                .arg(&self.holder)
                .invoke::<i64>(c)
        })
        .map(|_| ())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_server_answer(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Server(_)) || e.code().is_some()
}

/// The error's category and code, never its detail (which may quote a URL
/// or a value).
fn describe(e: &redis::RedisError) -> String {
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

fn invalid_url(e: &redis::RedisError) -> CacheError {
    CacheError::new(
        CacheErrorKind::Io,
        format!("invalid Redis URL or TLS settings ({})", describe(e)),
    )
}

fn to_cache_error(e: &redis::RedisError) -> CacheError {
    use redis::ServerErrorKind as S;
    let unavailable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown)
        );
    let kind = if unavailable {
        CacheErrorKind::Unavailable
    } else {
        CacheErrorKind::Io
    };
    CacheError::new(kind, format!("Redis {}", describe(e)))
}

/// rustls needs a process-wide crypto provider; if the application has not
/// installed one, install ring (which this feature brings). Installing when
/// one exists is a no-op.
#[cfg(feature = "redis-tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
