//! A token cache in a PostgreSQL table: the fleet's "private table".

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use freshtoken_core::{CacheError, CacheErrorKind, LeaseOutcome, Token};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::holder::holder_id;
use super::sealed::{known_tag, Binding, Codec, Decoded};
use super::{AsyncTokenCache, TokenCache};

/// The default table name.
pub const DEFAULT_TABLE: &str = "freshtoken_cache";

/// The first key of the advisory lock that serializes table creation
/// (with the table name's hash as the second): "ftok" in ASCII.
const SCHEMA_LOCK: i32 = 0x6674_6f6b;

/// How many idle connections a cache keeps for later calls.
const MAX_IDLE: usize = 4;

/// A token cache in one PostgreSQL table, with a lease.
///
/// Many serverless fleets already have a PostgreSQL database and no Redis;
/// this cache lets them share one token (and one refresh-token grant)
/// through it.
///
/// # The table
///
/// One table (default `freshtoken_cache`, see [`table`](Self::table)),
/// created on first use if missing (`CREATE TABLE IF NOT EXISTS`; turn
/// that off with [`create_table(false)`](Self::create_table) where the role
/// may not run DDL), one row per cache key:
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS freshtoken_cache (
///     cache_key     text PRIMARY KEY,  -- the key given to `PostgresCache::new`
///     record        bytea,             -- the record (see below); NULL: no token yet
///     record_format text,              -- how `record` is encoded, e.g. 'json-v1'
///     expires_at_ms bigint,            -- the token's expiry (ms since the Unix epoch)
///     has_refresh   boolean,           -- whether the record carries a refresh token
///     lease_holder  text,              -- who holds the lease (NULL: nobody)
///     lease_until   timestamptz,       -- until when, by the server's clock
///     updated_at    timestamptz NOT NULL DEFAULT now()
/// );
/// ```
///
/// `record` holds the same versioned JSON record as the file and Redis
/// caches ([`record`](super::record)), or its encrypted envelope when encryption is on;
/// the other columns are metadata the statements below compare, so no
/// statement has to parse the record.
///
/// # The lease: a row, not an advisory lock
///
/// Taking the lease is one statement,
/// `INSERT ... ON CONFLICT (cache_key) DO UPDATE SET lease_holder = $me,
/// lease_until = now() + ttl WHERE` *the lease is free, lapsed, or already
/// ours* `RETURNING`: a row back means granted, none means busy. The row
/// lock PostgreSQL takes for the upsert makes this atomic among any number
/// of instances, and the deadline is read from the **server's** clock, so
/// instance clocks that disagree cannot let two holders in. Releasing is an
/// `UPDATE ... WHERE lease_holder = $me`, so an instance only ever frees its
/// own lease.
///
/// A session advisory lock (`pg_try_advisory_lock`) was the alternative. It
/// was not chosen because it lives exactly as long as a *connection*: the
/// holder would have to pin one connection across its whole fetch, a
/// transaction-mode pooler (PgBouncer) hands sessions around and breaks such
/// locks, and a holder that vanishes behind a half-open TCP connection keeps
/// the lock until the server notices, which can take minutes. A row with a
/// deadline lapses by itself after its TTL, like the file and Redis leases,
/// survives reconnects, and can be inspected with a `SELECT`.
///
/// # Stores never go backwards, and never destroy what they cannot read
///
/// A store reads the row, refuses to replace a record this instance cannot
/// read (a `record_format` it does not know, such as a newer version's, or
/// a sealed record that does not open: a key it does not hold, tampered
/// with, moved from another row) with a [`CacheErrorKind::Unreadable`]
/// error, and then writes with one upsert whose `WHERE` lets it replace the
/// row only when
///
/// * the record is still the one it looked at (`IS NOT DISTINCT FROM`:
///   another instance writing in between makes it look again), and
/// * the row has no record yet, or the new token carries a refresh token
///   (a rotated refresh token is always written: peers order refresh
///   tokens by the lease, never by wall clocks that other machines
///   stamped; the refresh-token generation will take this place), or its
///   expiry is not earlier than the stored one's (a late answer never
///   replaces a newer token of a client-credentials flow).
///
/// A store refused because the stored token is newer returns `Ok`: the
/// cache holds something at least as good.
///
/// # Connections, timeouts, failures
///
/// * The driver is `tokio-postgres`, run on one small private runtime (one
///   worker thread named `freshtoken-postgres`, shared by every
///   `PostgresCache` of the process). The blocking `postgres` crate wraps
///   the same client but offers no per-call deadline; here every call runs
///   under a deadline of its own (connect timeout plus command timeout) on
///   the client side, so a server that stops answering costs at most that,
///   never a hang. The runtime is private, so the cache works from any
///   thread, and its async face ([`into_async`](Self::into_async)) from any
///   executor, tokio or not.
/// * Each connection sets `statement_timeout` (the command timeout) and
///   `lock_timeout` (half of it) when it opens, so a row locked by someone
///   else (a `SELECT ... FOR UPDATE` in a stuck transaction) fails the call
///   quickly on the server side too, as an `Unavailable` error.
/// * Up to four idle connections are kept for later calls (a small pool;
///   calls from several threads each get their own). A connection that
///   failed is dropped, and the next call opens a new one: the server being
///   down is a [`CacheErrorKind::Unavailable`] error, which the machine
///   treats as a miss, and the first call after it comes back reconnects.
///   One warning is logged per outage, and the recovery too.
/// * TLS: `sslmode=require` in the connection string makes the connection
///   TLS-only, with rustls (ring), verifying the server's certificate chain
///   and name (what libpq calls `verify-full`) against the webpki roots, or
///   only your CA with [`with_root_certificate`](Self::with_root_certificate).
///   Any other `sslmode` is plaintext. The process-wide
///   rustls crypto provider is never read or installed. Refresh tokens
///   travel in this connection, so a plaintext connection (`sslmode`
///   `disable` or `prefer`) to a host that is not loopback or a unix socket
///   is refused unless [`allow_plaintext`](Self::allow_plaintext) says so.
///
/// Each `PostgresCache` value is one lease holder; its clones share the
/// holder and the connections.
///
/// Neither `Debug` nor any error shows the connection string (it may hold
/// a password) or a token.
///
/// ```
/// use freshtoken::cache::{PostgresCache, TokenCache};
/// use std::time::Duration;
///
/// // Nothing listens on port 1: the cache reports Unavailable, never hangs.
/// let cache = PostgresCache::new("host=127.0.0.1 port=1 user=app dbname=app", "myapp:token")?
///     .with_connect_timeout(Duration::from_millis(200));
/// let err = cache.load().unwrap_err();
/// assert_eq!(err.kind(), freshtoken::CacheErrorKind::Unavailable);
/// # Ok::<(), freshtoken::CacheError>(())
/// ```
#[derive(Clone)]
pub struct PostgresCache {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    allow_plaintext: bool,
    /// The table name as given (for messages) and quoted (for SQL).
    table: String,
    quoted_table: String,
    key: String,
    holder: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    create_table: bool,
    schema_ready: AtomicBool,
    pool: Mutex<Pool>,
    codec: Codec,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    /// Whether the last call failed to reach the server, so that an outage
    /// logs one warning.
    down: bool,
}

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    load: Statement,
    store: Statement,
    acquire: Statement,
    release: Statement,
}

impl PostgresCache {
    /// A cache on the server that `conn` names (a libpq-style
    /// `key=value` string or a `postgresql://` URL, as tokio-postgres reads
    /// them), storing the token in the row `key` of the default table. No
    /// connection is made until the first use.
    ///
    /// Fails only on a connection string that cannot be parsed; the error
    /// does not repeat the string. (A plaintext connection to a remote host
    /// fails each call instead, see the type's docs.)
    pub fn new(conn: &str, key: impl Into<String>) -> Result<Self, CacheError> {
        let config = tokio_postgres::Config::from_str(conn).map_err(|_| {
            CacheError::new(
                CacheErrorKind::Io,
                "invalid PostgreSQL connection string (not repeated here: it may hold a password)",
            )
        })?;
        Self::with_config(config, key)
    }

    /// A cache with a ready tokio-postgres [`Config`](tokio_postgres::Config).
    pub fn with_config(
        mut config: tokio_postgres::Config,
        key: impl Into<String>,
    ) -> Result<Self, CacheError> {
        if config.get_application_name().is_none() {
            config.application_name("freshtoken");
        }
        let tls = tls_config(webpki_roots())?;
        Ok(PostgresCache {
            inner: Arc::new(Inner {
                config,
                tls: Some(tls),
                allow_plaintext: false,
                table: DEFAULT_TABLE.to_owned(),
                quoted_table: quote_table(DEFAULT_TABLE)?,
                key: key.into(),
                holder: holder_id(),
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(1),
                create_table: true,
                schema_ready: AtomicBool::new(false),
                pool: Mutex::new(Pool::default()),
                codec: Codec::default(),
            }),
        })
    }

    /// Trusts only the CA in `root_ca_pem` (PEM, one or more certificates)
    /// for the server's certificate, instead of the webpki roots: for
    /// servers with a private CA. Use `sslmode=require` to insist on TLS.
    pub fn with_root_certificate(mut self, root_ca_pem: &[u8]) -> Result<Self, CacheError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(root_ca_pem) {
            let cert = cert.map_err(|_| {
                CacheError::new(CacheErrorKind::Io, "the root certificate is not valid PEM")
            })?;
            roots.add(cert).map_err(|e| {
                CacheError::new(
                    CacheErrorKind::Io,
                    format!("the root certificate is not usable: {e}"),
                )
            })?;
        }
        if roots.is_empty() {
            return Err(CacheError::new(
                CacheErrorKind::Io,
                "no certificate found in the root certificate PEM",
            ));
        }
        let tls = tls_config(roots)?;
        self.inner_mut().tls = Some(tls);
        Ok(self)
    }

    /// Allows a plaintext connection to a host that is not loopback or a
    /// unix socket. Tokens and refresh tokens then cross the network in
    /// clear text: only for networks you trust.
    pub fn allow_plaintext(mut self) -> Self {
        self.inner_mut().allow_plaintext = true;
        self
    }

    /// Uses the table `name` (default `freshtoken_cache`), optionally
    /// schema-qualified (`schema.table`). Each part must be a plain SQL
    /// identifier (letters, digits, `_`, not starting with a digit, at most
    /// 63 bytes); it is quoted in the statements, so its case is kept.
    pub fn table(mut self, name: &str) -> Result<Self, CacheError> {
        let quoted = quote_table(name)?;
        let inner = self.inner_mut();
        inner.table = name.to_owned();
        inner.quoted_table = quoted;
        Ok(self)
    }

    /// Whether to create the table if it is missing (default true).
    pub fn create_table(mut self, create: bool) -> Self {
        self.inner_mut().create_table = create;
        self
    }

    /// How long to wait for a connection (default 1 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().connect_timeout = timeout;
        self
    }

    /// How long a statement may take (default 1 s): the server's
    /// `statement_timeout`, and the client's own deadline for the answer.
    /// The server's `lock_timeout` is half of it.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().command_timeout = timeout.max(Duration::from_millis(2));
        self
    }

    /// Encrypts records at rest with `keys` (see
    /// [`EncryptionKeys`](super::EncryptionKeys)); the table's name (as
    /// given to [`table`](Self::table), so every instance must spell it the
    /// same way) and the row's cache key are bound to each record, so a
    /// record copied to another row or another table is refused.
    /// `record_format` is then `sealed2:<key id>:json-v1` (`sealed1:`
    /// records of earlier builds are still read, see
    /// [`EncryptionKeys`](super::EncryptionKeys)).
    #[cfg(feature = "encryption")]
    pub fn encryption(mut self, keys: super::EncryptionKeys) -> Self {
        self.inner_mut().codec = Codec::with_keys(keys);
        self
    }

    /// The async face of this cache, for `Builder::async_cache`: the same
    /// connections and runtime, awaited from any executor.
    pub fn into_async(self) -> AsyncPostgresCache {
        AsyncPostgresCache(self)
    }

    /// The row's key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The table's name, as given.
    pub fn table_name(&self) -> &str {
        &self.inner.table
    }

    /// Builder methods run before the cache is shared; a clone made before
    /// them gets its own copy.
    fn inner_mut(&mut self) -> &mut Inner {
        if Arc::get_mut(&mut self.inner).is_none() {
            let old = &self.inner;
            self.inner = Arc::new(Inner {
                config: old.config.clone(),
                tls: old.tls.clone(),
                allow_plaintext: old.allow_plaintext,
                table: old.table.clone(),
                quoted_table: old.quoted_table.clone(),
                key: old.key.clone(),
                holder: holder_id(),
                connect_timeout: old.connect_timeout,
                command_timeout: old.command_timeout,
                create_table: old.create_table,
                schema_ready: AtomicBool::new(false),
                pool: Mutex::new(Pool::default()),
                codec: old.codec.clone(),
            });
        }
        Arc::get_mut(&mut self.inner).expect("just made unique")
    }
}

impl Inner {
    /// Refuses a connection that may be plaintext to a remote host.
    fn check_plaintext(&self) -> Result<(), CacheError> {
        let inner = self;
        if inner.allow_plaintext || inner.config.get_ssl_mode() == SslMode::Require {
            return Ok(());
        }
        let local = |host: &Host| match host {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_matches(|c| c == '[' || c == ']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        };
        let hosts_local = inner.config.get_hosts().iter().all(local);
        let addrs_local = inner
            .config
            .get_hostaddrs()
            .iter()
            .all(std::net::IpAddr::is_loopback);
        if hosts_local && addrs_local {
            Ok(())
        } else {
            Err(CacheError::new(
                CacheErrorKind::Io,
                "refusing a PostgreSQL connection that may be plaintext to a non-loopback host \
                 (refresh tokens travel in it): use sslmode=require, or allow_plaintext()",
            ))
        }
    }
}

impl PostgresCache {
    /// Runs `op` on the private runtime and waits for it, never longer than
    /// the call's deadline (plus a margin for the runtime's own scheduling).
    fn block_on<T: Send + 'static>(
        &self,
        op: impl FnOnce(Arc<Inner>) -> BoxFuture<T> + Send + 'static,
    ) -> Result<T, CacheError> {
        self.inner.check_plaintext()?;
        let rt = runtime()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let inner = self.inner.clone();
        let deadline = inner.deadline();
        rt.spawn(async move {
            let _ = tx.send(run(inner, op).await);
        });
        match rx.recv_timeout(deadline + Duration::from_millis(500)) {
            Ok(result) => result,
            Err(_) => Err(CacheError::new(
                CacheErrorKind::Unavailable,
                "PostgreSQL: no answer in time (the cache's runtime is overloaded or gone)",
            )),
        }
    }

    /// The same as [`block_on`](Self::block_on), awaited instead.
    async fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(Arc<Inner>) -> BoxFuture<T> + Send + 'static,
    ) -> Result<T, CacheError> {
        self.inner.check_plaintext()?;
        let rt = runtime()?;
        let (tx, rx) = futures::channel::oneshot::channel();
        let inner = self.inner.clone();
        rt.spawn(async move {
            let _ = tx.send(run(inner, op).await);
        });
        rx.await.unwrap_or_else(|_| {
            Err(CacheError::new(
                CacheErrorKind::Unavailable,
                "PostgreSQL: the cache's runtime stopped",
            ))
        })
    }
}

type BoxFuture<T> =
    std::pin::Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send>>;

/// One attempt at `op` under the call's deadline, with pool bookkeeping;
/// a reused connection that turns out closed (the server restarted since)
/// is replaced once.
async fn run<T: Send + 'static>(
    inner: Arc<Inner>,
    op: impl FnOnce(Arc<Inner>) -> BoxFuture<T> + Send + 'static,
) -> Result<T, CacheError> {
    let deadline = inner.deadline();
    let result = tokio::time::timeout(deadline, op(inner.clone())).await;
    let result = match result {
        Ok(r) => r.map_err(|e| to_cache_error(&e)),
        Err(_) => Err(CacheError::new(
            CacheErrorKind::Unavailable,
            format!("PostgreSQL: no answer within {deadline:?}"),
        )),
    };
    let mut pool = inner.pool();
    if let Err(e) = &result {
        if e.message().contains(SqlState::UNDEFINED_TABLE.code()) {
            // The table was dropped (or never made): make it again on the
            // next connection, whose statements are prepared against it.
            inner.schema_ready.store(false, Ordering::Release);
            pool.idle.clear();
        }
    }
    match &result {
        Ok(_) => {
            if std::mem::take(&mut pool.down) {
                tracing::info!(key = %inner.key, table = %inner.table, "PostgreSQL token cache reachable again");
            }
        }
        Err(error) if error.kind() == CacheErrorKind::Unavailable => {
            if !std::mem::replace(&mut pool.down, true) {
                tracing::warn!(key = %inner.key, table = %inner.table, error = %error, "PostgreSQL token cache unavailable; carrying on without it");
            }
        }
        Err(_) => {}
    }
    result
}

impl Inner {
    fn deadline(&self) -> Duration {
        self.connect_timeout + self.command_timeout
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        crate::sync::lock(&self.pool)
    }

    /// An idle connection, or a new one.
    async fn checkout(self: &Arc<Self>) -> Result<(Conn, bool), tokio_postgres::Error> {
        loop {
            let idle = self.pool().idle.pop();
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => return Ok((conn, true)),
                None => return self.connect().await.map(|c| (c, false)),
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        if conn.client.is_closed() {
            return;
        }
        let mut pool = self.pool();
        if pool.idle.len() < MAX_IDLE {
            pool.idle.push(conn);
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<Conn, tokio_postgres::Error> {
        let mut config = self.config.clone();
        config.connect_timeout(self.connect_timeout);
        // TLS (verified) only with sslmode=require; `prefer` is plaintext,
        // which `check_plaintext` allows only to loopback, unix sockets or
        // with `allow_plaintext` (libpq's `prefer` would not verify the
        // server either, and a local server's snakeoil certificate would
        // fail verification).
        let client = match (&self.tls, config.get_ssl_mode()) {
            (Some(tls), SslMode::Require) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            _ => {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
        };
        let statement_ms = self.command_timeout.as_millis().max(1);
        let lock_ms = (statement_ms / 2).max(1);
        client
            .batch_execute(&format!(
                "SET statement_timeout = {statement_ms}; SET lock_timeout = {lock_ms}; \
                 SET idle_in_transaction_session_timeout = {statement_ms}"
            ))
            .await?;
        if self.create_table && !self.schema_ready.load(Ordering::Acquire) {
            self.ensure_table(&client).await?;
            self.schema_ready.store(true, Ordering::Release);
        }
        let t = &self.quoted_table;
        let load_sql = format!("SELECT record, record_format FROM {t} WHERE cache_key = $1");
        let store_sql = format!(
                "INSERT INTO {t} AS t (cache_key, record, record_format, expires_at_ms, has_refresh, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, now()) \
                 ON CONFLICT (cache_key) DO UPDATE SET record = EXCLUDED.record, \
                   record_format = EXCLUDED.record_format, expires_at_ms = EXCLUDED.expires_at_ms, \
                   has_refresh = EXCLUDED.has_refresh, updated_at = now() \
                 WHERE t.record IS NOT DISTINCT FROM $7::bytea \
                   AND t.record_format IS NOT DISTINCT FROM $6::text \
                   AND (t.record IS NULL OR EXCLUDED.has_refresh OR t.expires_at_ms IS NULL \
                        OR t.expires_at_ms <= EXCLUDED.expires_at_ms) \
                 RETURNING 1"
        );
        let acquire_sql = format!(
            "INSERT INTO {t} AS t (cache_key, lease_holder, lease_until) \
                 VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond') \
                 ON CONFLICT (cache_key) DO UPDATE SET lease_holder = EXCLUDED.lease_holder, \
                   lease_until = EXCLUDED.lease_until \
                 WHERE t.lease_holder IS NULL OR t.lease_holder = EXCLUDED.lease_holder \
                    OR t.lease_until IS NULL OR t.lease_until <= now() \
                 RETURNING 1"
        );
        let release_sql = format!(
            "UPDATE {t} SET lease_holder = NULL, lease_until = NULL \
                 WHERE cache_key = $1 AND lease_holder = $2"
        );
        let (load, store, acquire, release) = futures::try_join!(
            client.prepare(&load_sql),
            client.prepare(&store_sql),
            client.prepare(&acquire_sql),
            client.prepare(&release_sql),
        )?;
        Ok(Conn {
            client,
            load,
            store,
            acquire,
            release,
        })
    }

    async fn ensure_table(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        // `CREATE TABLE IF NOT EXISTS` is not safe against itself: two
        // sessions creating one table at once can fail on the catalog's
        // unique indexes (23505, or 42710 for the row type). A transaction
        // advisory lock on the table's name serializes the creators; the
        // quoted name holds only identifier characters and double quotes,
        // so it is a safe string literal.
        let sql = format!(
            "BEGIN; \
             SELECT pg_advisory_xact_lock({SCHEMA_LOCK}, hashtext('{t}')); \
             CREATE TABLE IF NOT EXISTS {t} (\
                cache_key text PRIMARY KEY, \
                record bytea, \
                record_format text, \
                expires_at_ms bigint, \
                has_refresh boolean, \
                lease_holder text, \
                lease_until timestamptz, \
                updated_at timestamptz NOT NULL DEFAULT now()); \
             COMMIT",
            t = self.quoted_table
        );
        let out = client.batch_execute(&sql).await;
        if out.is_err() {
            // Leave the session clean for the pool (the error may have
            // left the transaction open).
            let _ = client.batch_execute("ROLLBACK").await;
        }
        match out {
            // Belt and braces: a creator that did not take the lock (an
            // older build) lost the race, and the table exists.
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::UNIQUE_VIOLATION)
                        | Some(&SqlState::DUPLICATE_TABLE)
                        | Some(&SqlState::DUPLICATE_OBJECT)
                ) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Runs `f` on a connection: a pooled one, replaced once by a fresh one
    /// if it turns out closed (the server restarted while it sat idle).
    async fn with_conn<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, tokio_postgres::Error>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let (conn, reused) = self.checkout().await?;
        let conn = Arc::new(conn);
        let out = f(conn.clone()).await;
        let out = match out {
            Err(e) if reused && is_broken(&e) => {
                drop(conn);
                self.pool().idle.clear();
                let fresh = Arc::new(self.connect().await?);
                let out = f(fresh.clone()).await;
                self.finish(fresh, &out);
                return out;
            }
            out => out,
        };
        self.finish(conn, &out);
        out
    }

    /// Returns a connection to the pool unless its call left it in doubt.
    fn finish<T>(&self, conn: Arc<Conn>, out: &Result<T, tokio_postgres::Error>) {
        let keep = match out {
            Ok(_) => true,
            // An error answer from the server leaves the session usable.
            Err(e) => e.as_db_error().is_some(),
        };
        if keep {
            if let Ok(conn) = Arc::try_unwrap(conn) {
                self.checkin(conn);
            }
        }
    }

    fn encode(&self, token: &Token) -> Result<(Vec<u8>, String), CacheError> {
        let bytes = self
            .codec
            .encode(token, &Binding::postgres(&self.table, &self.key))?;
        Ok((bytes, self.codec.format_tag()))
    }

    fn what(&self) -> String {
        format!("PostgreSQL row {:?} in {}", self.key, self.table)
    }

    /// Decodes a row's record: `Ok(None)` for a corrupt one (a miss, with
    /// a warning), an Unreadable error for one this instance cannot read.
    fn decode(&self, bytes: &[u8], format: Option<&str>) -> Result<Option<Token>, CacheError> {
        let format = format.unwrap_or("");
        if !known_tag(format) {
            return Err(CacheError::new(
                CacheErrorKind::Unreadable,
                format!(
                    "{} holds a record of format {:?}, which this instance cannot read; it is left in place",
                    self.what(),
                    format.chars().take(64).collect::<String>()
                ),
            ));
        }
        match self.codec.decode(
            bytes,
            &Binding::postgres(&self.table, &self.key),
            &self.what(),
        )? {
            Decoded::Token(token) => Ok(Some(token)),
            Decoded::Corrupt(e @ super::record::DecodeError::OtherConfiguration) => {
                tracing::warn!(key = %self.key, table = %self.table, error = %e, "PostgreSQL token row holds a token for another configuration; treating it as a miss");
                Ok(None)
            }
            Decoded::Corrupt(e) => {
                tracing::warn!(key = %self.key, table = %self.table, error = %e, "PostgreSQL token row is not a usable record; treating it as a miss");
                Ok(None)
            }
        }
    }
}

/// Whether an error means the connection is gone (not a server's answer).
fn is_broken(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || (e.as_db_error().is_none()
            && std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some())
}

impl fmt::Debug for PostgresCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let idle = inner.pool().idle.len();
        let mut d = f.debug_struct("PostgresCache");
        d.field("table", &inner.table)
            .field("key", &inner.key)
            .field("holder", &inner.holder)
            .field("tls", &inner.config.get_ssl_mode())
            .field("connect_timeout", &inner.connect_timeout)
            .field("command_timeout", &inner.command_timeout)
            .field("idle_connections", &idle);
        d.field("records", &inner.codec);
        d.finish_non_exhaustive()
    }
}

fn load_op(inner: Arc<Inner>) -> BoxFuture<Option<(Vec<u8>, Option<String>)>> {
    Box::pin(async move {
        let key = inner.key.clone();
        inner
            .with_conn(|c| {
                let key = key.clone();
                async move {
                    let row = c.client.query_opt(&c.load, &[&key]).await?;
                    Ok(row.and_then(|row| {
                        let record: Option<Vec<u8>> = row.get(0);
                        record.map(|r| (r, row.get::<_, Option<String>>(1)))
                    }))
                }
            })
            .await
    })
}

/// A store's outcome.
enum Stored {
    Written,
    /// The row holds a newer token (of a client-credentials flow).
    Older,
    /// The row holds a record this instance cannot read.
    Refused(CacheError),
    /// The row kept changing between our look and our write.
    Raced,
}

fn store_op(
    inner: Arc<Inner>,
    bytes: Vec<u8>,
    format: String,
    expires_at_ms: i64,
    has_refresh: bool,
) -> BoxFuture<Stored> {
    Box::pin(async move {
        let bytes = Arc::new(bytes);
        let this = inner.clone();
        inner
            .with_conn(|c| {
                let (inner, bytes, format) = (this.clone(), bytes.clone(), format.clone());
                async move {
                    let key = &inner.key;
                    for _ in 0..3 {
                        // Look first: a record this instance cannot read is
                        // never replaced (its format, then its bytes, which
                        // may be tampered with or moved from another row).
                        let row = c.client.query_opt(&c.load, &[key]).await?;
                        let (current, current_format): (Option<Vec<u8>>, Option<String>) =
                            row.map_or((None, None), |r| (r.get(0), r.get(1)));
                        if let Some(record) = &current {
                            if let Err(e) = inner.decode(record, current_format.as_deref()) {
                                return Ok(Stored::Refused(CacheError::new(
                                    CacheErrorKind::Unreadable,
                                    format!("not overwriting it: {}", e.message()),
                                )));
                            }
                        }
                        // Then write, if the row is still what we looked at.
                        let seen = current.as_deref();
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                            key,
                            &bytes.as_slice(),
                            &format,
                            &expires_at_ms,
                            &has_refresh,
                            &current_format,
                            &seen,
                        ];
                        if c.client.query_opt(&c.store, &params).await?.is_some() {
                            return Ok(Stored::Written);
                        }
                        let now: Option<Vec<u8>> = c
                            .client
                            .query_opt(&c.load, &[key])
                            .await?
                            .and_then(|r| r.get(0));
                        if now == current {
                            return Ok(Stored::Older);
                        }
                    }
                    Ok(Stored::Raced)
                }
            })
            .await
    })
}

impl PostgresCache {
    fn load_blocking(&self) -> Result<Option<Token>, CacheError> {
        let row = self.block_on(load_op)?;
        match row {
            None => Ok(None),
            Some((bytes, format)) => self.inner.decode(&bytes, format.as_deref()),
        }
    }

    fn store_args(&self, token: &Token) -> Result<(Vec<u8>, String, i64, bool), CacheError> {
        let (bytes, format) = self.inner.encode(token)?;
        let expires = i64::try_from(token.expires_at().as_millis()).unwrap_or(i64::MAX);
        Ok((bytes, format, expires, token.refresh_token().is_some()))
    }

    fn stored(&self, outcome: Stored) -> Result<(), CacheError> {
        match outcome {
            Stored::Written => Ok(()),
            Stored::Older => {
                tracing::debug!(key = %self.inner.key, "PostgreSQL token row holds a newer token; store skipped");
                Ok(())
            }
            Stored::Refused(e) => Err(e),
            Stored::Raced => Err(CacheError::new(
                CacheErrorKind::Unavailable,
                format!("{} kept changing during the store", self.inner.what()),
            )),
        }
    }
}

fn acquire_op(inner: Arc<Inner>, ttl_ms: f64) -> BoxFuture<bool> {
    Box::pin(async move {
        let (key, holder) = (inner.key.clone(), inner.holder.clone());
        inner
            .with_conn(|c| {
                let (key, holder) = (key.clone(), holder.clone());
                async move {
                    let row = c
                        .client
                        .query_opt(&c.acquire, &[&key, &holder, &ttl_ms])
                        .await?;
                    Ok(row.is_some())
                }
            })
            .await
    })
}

fn release_op(inner: Arc<Inner>) -> BoxFuture<()> {
    Box::pin(async move {
        let (key, holder) = (inner.key.clone(), inner.holder.clone());
        inner
            .with_conn(|c| {
                let (key, holder) = (key.clone(), holder.clone());
                async move {
                    c.client.execute(&c.release, &[&key, &holder]).await?;
                    Ok(())
                }
            })
            .await
    })
}

fn ttl_millis(ttl: Duration) -> f64 {
    (ttl.as_secs_f64() * 1000.0).max(1.0)
}

impl TokenCache for PostgresCache {
    fn metrics_label(&self) -> &'static str {
        "postgres"
    }

    fn bind_config(&self, config: freshtoken_core::TokenId) {
        self.inner.codec.bind_config(config, &self.inner.key);
    }

    fn load(&self) -> Result<Option<Token>, CacheError> {
        self.load_blocking()
    }

    fn store(&self, token: &Token) -> Result<(), CacheError> {
        let (bytes, format, expires, refresh) = self.store_args(token)?;
        let outcome =
            self.block_on(move |inner| store_op(inner, bytes, format, expires, refresh))?;
        self.stored(outcome)
    }

    fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let ttl_ms = ttl_millis(ttl);
        let granted = self.block_on(move |inner| acquire_op(inner, ttl_ms))?;
        Ok(if granted {
            LeaseOutcome::Granted
        } else {
            LeaseOutcome::Busy
        })
    }

    fn release_lease(&self) -> Result<(), CacheError> {
        self.block_on(release_op)
    }
}

/// [`PostgresCache`] as an [`AsyncTokenCache`], from
/// [`PostgresCache::into_async`]: the calls run on the cache's private
/// runtime and are awaited, so it works under any executor.
///
/// ```no_run
/// use freshtoken::cache::{AsyncTokenCache, PostgresCache};
///
/// # async fn demo() -> Result<(), freshtoken::CacheError> {
/// let cache = PostgresCache::new("host=db.internal sslmode=require user=app", "app:token")?
///     .into_async();
/// let token = cache.load().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AsyncPostgresCache(PostgresCache);

impl AsyncPostgresCache {
    /// The blocking face of the same cache.
    pub fn blocking(&self) -> &PostgresCache {
        &self.0
    }
}

impl AsyncTokenCache for AsyncPostgresCache {
    fn metrics_label(&self) -> &'static str {
        "postgres"
    }

    fn bind_config(&self, config: freshtoken_core::TokenId) {
        self.0.inner.codec.bind_config(config, &self.0.inner.key);
    }

    async fn load(&self) -> Result<Option<Token>, CacheError> {
        let row = self.0.call(load_op).await?;
        match row {
            None => Ok(None),
            Some((bytes, format)) => self.0.inner.decode(&bytes, format.as_deref()),
        }
    }

    async fn store(&self, token: &Token) -> Result<(), CacheError> {
        let (bytes, format, expires, refresh) = self.0.store_args(token)?;
        let outcome = self
            .0
            .call(move |inner| store_op(inner, bytes, format, expires, refresh))
            .await?;
        self.0.stored(outcome)
    }

    async fn acquire_lease(&self, ttl: Duration) -> Result<LeaseOutcome, CacheError> {
        let ttl_ms = ttl_millis(ttl);
        let granted = self.0.call(move |inner| acquire_op(inner, ttl_ms)).await?;
        Ok(if granted {
            LeaseOutcome::Granted
        } else {
            LeaseOutcome::Busy
        })
    }

    async fn release_lease(&self) -> Result<(), CacheError> {
        self.0.call(release_op).await
    }
}

/// The private runtime: one worker thread for the whole process.
fn runtime() -> Result<&'static tokio::runtime::Runtime, CacheError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("freshtoken-postgres")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            CacheError::new(
                CacheErrorKind::Io,
                format!("cannot start the PostgreSQL cache's runtime: {e}"),
            )
        })
}

fn webpki_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// rustls with ring, given explicitly: the process-wide provider is
/// neither needed nor touched.
fn tls_config(roots: rustls::RootCertStore) -> Result<MakeRustlsConnect, CacheError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CacheError::new(CacheErrorKind::Io, format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Validates and quotes `name` (`table` or `schema.table`).
fn quote_table(name: &str) -> Result<String, CacheError> {
    let parts: Vec<&str> = name.split('.').collect();
    let valid = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    };
    if parts.len() > 2 || !parts.iter().all(valid) {
        return Err(CacheError::new(
            CacheErrorKind::Io,
            "invalid table name: use letters, digits and _ (not first), optionally schema.table",
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// The error's class and the server's primary message (PostgreSQL keeps
/// values out of primary messages; they go to DETAIL, which is not shown).
fn to_cache_error(e: &tokio_postgres::Error) -> CacheError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let class = &code.code()[..2];
        let unavailable = matches!(class, "08" | "53" | "57" | "40" | "58")
            || *code == SqlState::LOCK_NOT_AVAILABLE;
        let kind = if unavailable {
            CacheErrorKind::Unavailable
        } else {
            CacheErrorKind::Io
        };
        let message: String = db.message().chars().take(200).collect();
        return CacheError::new(kind, format!("PostgreSQL error {}: {message}", code.code()));
    }
    // Connection, I/O, TLS and timeout errors: tokio-postgres's own text
    // names the failure and its cause, never the connection string.
    CacheError::new(CacheErrorKind::Unavailable, format!("PostgreSQL {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked_and_quoted() {
        assert_eq!(quote_table("tokens").unwrap(), "\"tokens\"");
        assert_eq!(quote_table("app.Tokens_2").unwrap(), "\"app\".\"Tokens_2\"");
        for bad in ["", "a.b.c", "1abc", "x;drop", "t\"", "a b", ".t", "t."] {
            assert!(quote_table(bad).is_err(), "{bad:?}");
        }
        assert!(quote_table(&"x".repeat(64)).is_err());
    }

    #[test]
    fn connection_strings_never_show_up() {
        let e = PostgresCache::new("host=db user=u password=hunter2 'unclosed", "k").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let cache = PostgresCache::new("host=127.0.0.1 user=u password=hunter2", "k").unwrap();
        assert!(!format!("{cache:?}").contains("hunter2"));
    }

    #[test]
    fn plaintext_to_a_remote_host_is_refused() {
        for conn in ["host=db.example user=u", "host=10.1.2.3 sslmode=prefer"] {
            let e = PostgresCache::new(conn, "k").unwrap().load().unwrap_err();
            assert!(e.to_string().contains("sslmode=require"), "{e}");
            assert_eq!(e.kind(), CacheErrorKind::Io);
            // Allowed explicitly, it tries to connect (and fails fast here).
            let cache = PostgresCache::new(conn, "k").unwrap().allow_plaintext();
            assert!(cache.inner.check_plaintext().is_ok());
        }
        for conn in [
            "host=db.example sslmode=require",
            "host=localhost",
            "host=127.0.0.1",
            "host=/run/postgresql",
            "postgresql://u@[::1]:5432/db",
        ] {
            let cache = PostgresCache::new(conn, "k").unwrap();
            assert!(cache.inner.check_plaintext().is_ok(), "{conn}");
        }
        let config = tokio_postgres::Config::from_str("host=10.0.0.1").unwrap();
        let cache = PostgresCache::with_config(config, "k").unwrap();
        assert!(cache.inner.check_plaintext().is_err());
    }
}
