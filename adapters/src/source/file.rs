//! [`FileSource`]: a token that another process writes to a file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use freshtoken_core::lifetime::JwtTimes;
use freshtoken_core::{AccessToken, FetchError, FetchRequest, IdToken, Timestamp, TokenResponse};
use serde::Deserialize;

use super::TokenSource;
use crate::cache::record::{self, DecodeError, MAX_RECORD_LEN};
use crate::handle::TokenHandle;
use crate::regular_file::{self, OpenError};

/// What the file holds. [`Auto`](FileFormat::Auto) (the default) recognises
/// every form listed in the [`FileSource`] docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileFormat {
    /// Recognise the content.
    #[default]
    Auto,
    /// The whole file is the token (surrounding whitespace trimmed).
    Raw,
    /// `Authorization: <type> <token>`.
    Header,
    /// `{"access_token", "token_type"?, "expires_at"? | "expires_in"?}`.
    Json,
    /// A freshtoken cache record or an aliri_tokens file.
    Record,
}

/// A token read from the file, with its absolute expiry.
///
/// `Debug` never shows the token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileToken {
    /// The access token.
    pub access_token: AccessToken,
    /// The token type (`Bearer` when the file does not say).
    pub token_type: String,
    /// When it expires (local wall clock).
    pub expires_at: Timestamp,
    /// The scope, when the file records one.
    pub scope: Option<String>,
    /// The id token, when the file records one.
    pub id_token: Option<IdToken>,
}

/// A token that another process writes to a file.
///
/// This is how a Rust process consumes what the freshtoken agent, Vault
/// Agent's file sink or a Kubernetes projected service-account token writes:
/// the driver calls [`fetch`](TokenSource::fetch), which reads the file, and
/// the machine keeps the token until it goes stale, then reads the file
/// again. [`watch`](FileSource::watch) also re-reads it as soon as the file
/// changes, so a rotated token is picked up without waiting for the old one
/// to go stale.
///
/// What the file may hold ([`FileFormat::Auto`] tells them apart):
///
/// | content | expiry from |
/// | --- | --- |
/// | a freshtoken cache record ([`record`](crate::cache::record)) or an aliri_tokens 0.3 file | its `expires_at_ms` / `expiry` |
/// | JSON `{"access_token": .., "token_type": .., "expires_at": ..}` (the agent's `json` token file) | `expires_at`, Unix seconds |
/// | JSON `{"access_token": .., "expires_in": ..}` | the file's modification time plus `expires_in` |
/// | `Authorization: Bearer <token>` (the agent's `header` token file) | the JWT `exp`, else [`FileSource::lifetime`] |
/// | a raw token (the agent's `raw` file, a projected token) | the JWT `exp`, else [`FileSource::lifetime`] from the modification time |
///
/// A missing, empty, partial (cut-off JSON or JWT) or expired file is a
/// transient [`FetchError`], so the driver retries with its backoff and keeps
/// serving the previous token while it is valid. A token with no expiry to
/// be found and no configured lifetime is a permanent error (a configuration
/// mistake). Reading never panics and never takes more than
/// [`MAX_RECORD_LEN`] bytes; errors name the path and the problem, never
/// the content. A refresh token in a cache record is not passed on: the
/// file's writer owns the grant.
///
/// ```
/// use freshtoken::source::{FileSource, TokenSource};
/// use freshtoken::FetchErrorKind;
/// use freshtoken::source::FetchRequest;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("api.token");
/// let source = FileSource::new(&path);
/// // Not there yet: a transient error, retried with backoff.
/// assert!(source.fetch(&FetchRequest::first()).unwrap_err().kind() == FetchErrorKind::Transient);
///
/// std::fs::write(&path, r#"{"access_token":"at","token_type":"Bearer","expires_at":4102444800}"#)?;
/// let answer = source.fetch(&FetchRequest::first())?;
/// assert_eq!(answer.access_token.expose_secret(), "at");
/// assert!(answer.expires_in.unwrap() > 0);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
    format: FileFormat,
    lifetime: Option<Duration>,
    min_remaining: Duration,
}

impl FileSource {
    /// A source reading `path`, any format, no default lifetime, tokens with
    /// less than a second left refused.
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileSource {
            path: path.as_ref().to_owned(),
            format: FileFormat::Auto,
            lifetime: None,
            min_remaining: Duration::from_secs(1),
        }
    }

    /// Reads only this format.
    pub fn format(mut self, format: FileFormat) -> Self {
        self.format = format;
        self
    }

    /// The lifetime of a token whose file gives no expiry (an opaque raw
    /// token), counted from the file's modification time.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// A token with less than this left is treated as expired (default 1 s,
    /// the driver's shortest lifetime: a token with less left would be
    /// stretched to it). Lower it only together with the driver's lifetime
    /// bounds ([`LifetimePolicy::with_lifetime_bounds`](freshtoken_core::LifetimePolicy::with_lifetime_bounds)),
    /// for tokens that live only a few seconds.
    pub fn min_remaining(mut self, min: Duration) -> Self {
        self.min_remaining = min;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file now and returns its token, whether or not it expired.
    ///
    /// ```
    /// use freshtoken::source::FileSource;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("token");
    /// // {"exp":4102444800}: a JWT read for its expiry, never verified.
    /// std::fs::write(&path, "eyJhbGciOiJub25lIn0.eyJleHAiOjQxMDI0NDQ4MDB9.\n")?;
    /// let token = FileSource::new(&path).read()?;
    /// assert_eq!(token.expires_at.as_secs(), 4_102_444_800);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&self) -> Result<FileToken, FetchError> {
        let (bytes, modified) = self.read_bytes()?;
        self.parse(&bytes, modified)
    }

    /// Re-reads the file whenever it changes (polling its size, inode and
    /// modification time every `interval`) and tells the driver behind
    /// `handle` to refresh when the file holds a different token than the
    /// current one. The driver's invalidation interval
    /// ([`Builder::invalidate_interval`](crate::driver::Builder::invalidate_interval),
    /// 5 s by default) bounds how often that happens. Drop the returned
    /// [`FileWatch`] to stop watching; it also stops when the driver stops.
    pub fn watch(&self, handle: &TokenHandle, interval: Duration) -> std::io::Result<FileWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = handle.clone();
        let source = self.clone();
        let interval = interval.max(Duration::from_millis(1));
        let thread = std::thread::Builder::new()
            .name("freshtoken-file-watch".to_owned())
            .spawn(move || source.watch_loop(&handle, &flag, interval))?;
        Ok(FileWatch {
            stop,
            thread: Some(thread),
        })
    }

    fn watch_loop(&self, handle: &TokenHandle, stop: &AtomicBool, interval: Duration) {
        let mut seen = identity(&self.path);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(interval);
            if matches!(
                handle.snapshot().state,
                freshtoken_core::RefreshState::Stopped
            ) {
                return;
            }
            let now = identity(&self.path);
            if now == seen {
                continue;
            }
            seen = now;
            let Ok(found) = self.read() else { continue };
            if let Some(current) = handle.token() {
                if current.access_token() != &found.access_token {
                    tracing::debug!(path = %self.path.display(), "token file changed; refreshing");
                    handle.invalidate(&current);
                }
            }
        }
    }

    fn read_bytes(&self) -> Result<(Vec<u8>, Option<SystemTime>), FetchError> {
        let what = |e: std::io::Error| {
            FetchError::transient(format!("cannot read {}: {e}", self.path.display()))
        };
        // Non-blocking, and only a regular file: a FIFO planted at the
        // path fails the read at once instead of hanging the driver's
        // worker until someone writes to it.
        let file = regular_file::open(&self.path).map_err(|e| match e {
            OpenError::Io(e) => what(e),
            OpenError::NotRegular(kind) => FetchError::transient(format!(
                "refusing {}: it is {kind}, not a regular file",
                self.path.display()
            )),
        })?;
        let meta = file.metadata().map_err(what)?;
        let mut bytes = Vec::new();
        file.take(MAX_RECORD_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(what)?;
        if bytes.len() > MAX_RECORD_LEN {
            return Err(FetchError::transient(format!(
                "{} is larger than {MAX_RECORD_LEN} bytes: not a token file",
                self.path.display()
            )));
        }
        Ok((bytes, meta.modified().ok()))
    }

    fn bad(&self, why: impl std::fmt::Display) -> FetchError {
        FetchError::transient(format!("{}: {why}", self.path.display()))
    }

    /// Parses `bytes` (modified at `modified`) in the configured format.
    fn parse(&self, bytes: &[u8], modified: Option<SystemTime>) -> Result<FileToken, FetchError> {
        let text = std::str::from_utf8(bytes).map_err(|_| self.bad("not UTF-8 text"))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(self.bad("empty (not written yet?)"));
        }
        let written = modified
            .map(Timestamp::from_system_time)
            .unwrap_or_else(|| Timestamp::from_system_time(SystemTime::now()));
        let format = match self.format {
            FileFormat::Auto if text.starts_with('{') => {
                if looks_like_record(text) {
                    FileFormat::Record
                } else {
                    FileFormat::Json
                }
            }
            FileFormat::Auto if has_header_prefix(text) => FileFormat::Header,
            FileFormat::Auto => FileFormat::Raw,
            other => other,
        };
        match format {
            FileFormat::Record => self.parse_record(text),
            FileFormat::Json => self.parse_json(text, written),
            FileFormat::Header => {
                let rest = strip_header_prefix(text)
                    .ok_or_else(|| self.bad("not an `Authorization: <type> <token>` line"))?;
                let mut parts = rest.split_whitespace();
                let (Some(kind), Some(token), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(self.bad("not an `Authorization: <type> <token>` line"));
                };
                self.opaque(token, kind, written)
            }
            FileFormat::Raw | FileFormat::Auto => self.opaque(text, "Bearer", written),
        }
    }

    fn parse_record(&self, text: &str) -> Result<FileToken, FetchError> {
        let token = record::decode(text.as_bytes()).map_err(|e| match e {
            DecodeError::Empty | DecodeError::Truncated => {
                self.bad("partial record (being written?)")
            }
            other => self.bad(other),
        })?;
        Ok(FileToken {
            access_token: token.access_token().clone(),
            token_type: token.token_type().to_owned(),
            expires_at: token.expires_at(),
            scope: token.scope().map(str::to_owned),
            id_token: token.id_token().cloned(),
        })
    }

    fn parse_json(&self, text: &str, written: Timestamp) -> Result<FileToken, FetchError> {
        #[derive(Deserialize)]
        struct Json {
            access_token: String,
            token_type: Option<String>,
            expires_at: Option<f64>,
            expires_in: Option<f64>,
            scope: Option<String>,
            id_token: Option<String>,
        }
        // serde_json's messages may quote a value: say only where it broke.
        let json: Json = serde_json::from_str(text).map_err(|e| {
            if e.is_eof() {
                self.bad("partial JSON (being written?)")
            } else {
                self.bad(format!(
                    "not a token JSON object (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            }
        })?;
        if json.access_token.is_empty() {
            return Err(self.bad("empty access_token"));
        }
        let seconds = |s: f64| {
            (s.is_finite() && s >= 0.0).then(|| Timestamp::from_millis((s * 1_000.0) as u64))
        };
        let expires_at = match (json.expires_at, json.expires_in) {
            (Some(at), _) => {
                // Milliseconds when it cannot be seconds (year 5138 and later).
                let at = if at > 1e11 { at / 1_000.0 } else { at };
                Some(seconds(at).ok_or_else(|| self.bad("expires_at is not a time"))?)
            }
            (None, Some(within)) => Some(
                seconds(within)
                    .map(|d| written.saturating_add(Duration::from_millis(d.as_millis())))
                    .ok_or_else(|| self.bad("expires_in is not a duration"))?,
            ),
            (None, None) => None,
        };
        let expires_at = match expires_at {
            // Whole seconds are up to a second early: a JWT's `exp` within
            // that second is the same time, more precisely.
            Some(at) => match JwtTimes::read(&json.access_token).and_then(|t| t.exp) {
                Some(exp) if exp >= at && exp < at.saturating_add(Duration::from_secs(1)) => exp,
                _ => at,
            },
            None => self.expiry_of(&json.access_token, written)?,
        };
        Ok(FileToken {
            access_token: AccessToken::new(json.access_token),
            token_type: json.token_type.unwrap_or_else(|| "Bearer".to_owned()),
            expires_at,
            scope: json.scope,
            id_token: json.id_token.map(IdToken::new),
        })
    }

    /// A bare token: its expiry comes from its JWT `exp` or the lifetime.
    fn opaque(&self, token: &str, kind: &str, written: Timestamp) -> Result<FileToken, FetchError> {
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.bad("more than one token in the file"));
        }
        Ok(FileToken {
            access_token: AccessToken::new(token),
            token_type: kind.to_owned(),
            expires_at: self.expiry_of(token, written)?,
            scope: None,
            id_token: None,
        })
    }

    fn expiry_of(&self, token: &str, written: Timestamp) -> Result<Timestamp, FetchError> {
        if let Some(exp) = JwtTimes::read(token).and_then(|t| t.exp) {
            return Ok(exp);
        }
        // Two dots and base64url around them: a JWT, cut off or mangled.
        if token.matches('.').count() == 2 || token.starts_with("eyJ") {
            return Err(self.bad("a JWT that cannot be read (partial?)"));
        }
        match self.lifetime {
            Some(lifetime) => Ok(written.saturating_add(lifetime)),
            None => Err(FetchError::permanent(format!(
                "{}: the token has no expiry (not a JWT): configure FileSource::lifetime",
                self.path.display()
            ))),
        }
    }
}

impl TokenSource for FileSource {
    fn fetch(&self, _request: &FetchRequest) -> Result<TokenResponse, FetchError> {
        let token = self.read()?;
        let now = Timestamp::from_system_time(SystemTime::now());
        let left = token.expires_at.saturating_duration_since(now);
        if token.expires_at <= now || left < self.min_remaining {
            return Err(self.bad("the token in the file has expired (is its writer running?)"));
        }
        // `expires_in` is whole seconds. Rounded down it is never later
        // than the file says, but up to a second early, which for a
        // short-lived token is a large part of its life. When the expiry is
        // the JWT's own `exp`, round up instead: the driver takes the
        // earlier of `expires_in` and the JWT's `exp` (read to the
        // millisecond), so the token then lives exactly as long as it does.
        let from_jwt = JwtTimes::read(token.access_token.expose_secret())
            .and_then(|t| t.exp)
            .is_some_and(|exp| exp == token.expires_at);
        let secs = if from_jwt {
            left.as_millis().div_ceil(1_000)
        } else {
            u128::from(left.as_secs())
        };
        let expires_in = i64::try_from(secs).unwrap_or(i64::MAX);
        Ok(TokenResponse::new(token.access_token)
            .with_token_type(token.token_type)
            .with_expires_in(Some(expires_in))
            .with_scope(token.scope)
            .with_id_token(token.id_token)
            // Our own clock as the "server" date: a JWT's `iat` (which may be
            // long past for a token read from a file) is then not taken as
            // clock skew.
            .with_server_date(Some(now)))
    }
}

/// Watches a token file for [`FileSource::watch`]; dropping it stops the
/// watching thread (within one poll interval).
#[derive(Debug)]
pub struct FileWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            drop(thread.join());
        }
    }
}

/// What tells one version of a file from the next without reading it.
fn identity(path: &Path) -> Option<(u64, Option<SystemTime>, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let ino = 0;
    Some((meta.len(), meta.modified().ok(), ino))
}

fn looks_like_record(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        version: Option<serde::de::IgnoredAny>,
        expiry: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_str::<Probe>(text) {
        Ok(p) => p.version.is_some() || p.expiry.is_some(),
        // A cut-off file: the record format if it says so early on.
        Err(_) => text.contains("\"version\"") || text.contains("\"expiry\""),
    }
}

fn has_header_prefix(text: &str) -> bool {
    strip_header_prefix(text).is_some()
}

fn strip_header_prefix(text: &str) -> Option<&str> {
    const PREFIX: &str = "authorization:";
    let head = text.get(..PREFIX.len())?;
    head.eq_ignore_ascii_case(PREFIX)
        .then(|| text[PREFIX.len()..].trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use freshtoken_core::FetchErrorKind;

    fn jwt(exp: u64) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(r#"{"alg":"none"}"#),
            enc.encode(format!(r#"{{"exp":{exp},"iat":1}}"#))
        )
    }

    fn far() -> u64 {
        Timestamp::from_system_time(SystemTime::now()).as_secs() + 3_600
    }

    fn write(content: &[u8]) -> (tempfile::TempDir, FileSource) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, content).unwrap();
        (dir, FileSource::new(path))
    }

    #[test]
    fn reads_every_format() {
        let exp = far();
        let token = jwt(exp);
        let record = record::encode(
            &freshtoken_core::Token::new(
                AccessToken::new("rec"),
                Timestamp::EPOCH,
                Timestamp::from_secs(exp - 10),
                Timestamp::from_secs(exp),
            )
            .with_refresh_token(Some(freshtoken_core::RefreshToken::new("rt-secret"))),
        );
        let aliri = format!(
            r#"{{"access_token":"ali","id_token":null,"lifetime":3600,"issued":1,"stale":2,"expiry":{exp}}}"#
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (token.clone().into_bytes(), token.as_str()),
            (format!("{token}\n").into_bytes(), token.as_str()),
            (
                format!("Authorization: Bearer {token}\n").into_bytes(),
                token.as_str(),
            ),
            (
                format!(r#"{{"access_token":"j","token_type":"Bearer","expires_at":{exp}}}"#)
                    .into_bytes(),
                "j",
            ),
            (record, "rec"),
            (aliri.into_bytes(), "ali"),
        ];
        for (bytes, want) in cases {
            let (_dir, source) = write(&bytes);
            let got = source.read().unwrap();
            assert_eq!(got.access_token.expose_secret(), want);
            assert_eq!(got.expires_at.as_secs(), exp, "{want}");
            let answer = source.fetch(&FetchRequest::first()).unwrap();
            assert!(answer.refresh_token.is_none());
            let left = answer.expires_in.unwrap();
            assert!((3_590..=3_600).contains(&left), "{left}");
        }
    }

    #[test]
    fn expires_in_counts_from_the_modification_time() {
        let (_dir, source) = write(br#"{"access_token":"x","expires_in":600}"#);
        let got = source.read().unwrap();
        let now = Timestamp::from_system_time(SystemTime::now());
        let left = got.expires_at.saturating_duration_since(now).as_secs();
        assert!((590..=600).contains(&left), "{left}");
    }

    #[test]
    fn opaque_tokens_need_a_lifetime() {
        let (_dir, source) = write(b"opaque-token-value");
        let err = source.read().unwrap_err();
        assert_eq!(err.kind(), FetchErrorKind::Permanent);
        assert!(!err.to_string().contains("opaque-token-value"));
        let source = source.lifetime(Duration::from_secs(60));
        assert_eq!(
            source.read().unwrap().access_token.expose_secret(),
            "opaque-token-value"
        );
    }

    #[test]
    fn missing_partial_and_expired_files_are_transient_and_quote_nothing() {
        let exp = far();
        let token = jwt(exp);
        let full = format!(r#"{{"access_token":"{token}","expires_at":{exp}}}"#);
        let record = String::from_utf8(record::encode(&freshtoken_core::Token::new(
            AccessToken::new("secret-rec"),
            Timestamp::EPOCH,
            Timestamp::from_secs(1),
            Timestamp::from_secs(exp),
        )))
        .unwrap();
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"   \n".to_vec(),
            token.as_bytes()[..token.len() / 2].to_vec(),
            br#"{"access_token":"x","expires_at":1}"#.to_vec(),
            jwt(1).into_bytes(),
            vec![0xff, 0xfe, 0x00],
            b"two tokens".to_vec(),
        ];
        // Every cut of the JSON and of a record.
        for cut in 1..full.len() {
            bad.push(full.as_bytes()[..cut].to_vec());
        }
        for cut in 1..record.len() {
            bad.push(record.as_bytes()[..cut].to_vec());
        }
        for bytes in bad {
            let (_dir, source) = write(&bytes);
            let result = source.fetch(&FetchRequest::first());
            let Err(err) = result else {
                // A cut that still parses must still be a whole token.
                let answer = result.unwrap();
                let at = answer.access_token.expose_secret();
                assert!(at == token || at == "secret-rec" || at == "x", "{at}");
                continue;
            };
            assert!(err.kind() == FetchErrorKind::Transient, "{err}");
            let shown = err.to_string();
            assert!(
                !shown.contains("secret-rec") && !shown.contains(&token[..20]),
                "{shown}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = FileSource::new(dir.path().join("nope"));
        assert!(
            missing.fetch(&FetchRequest::first()).unwrap_err().kind() == FetchErrorKind::Transient
        );
        let directory = FileSource::new(dir.path());
        assert!(
            directory.fetch(&FetchRequest::first()).unwrap_err().kind()
                == FetchErrorKind::Transient
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let source = FileSource::new(&path).lifetime(Duration::from_secs(5));
        let seeds: [&[u8]; 4] = [
            b"{\"version\":1,",
            b"{\"access_token\":",
            b"Authorization: ",
            b"eyJ",
        ];
        for i in 0..2_000 {
            let mut bytes = seeds[i % seeds.len()].to_vec();
            for _ in 0..rng.usize(0..64) {
                bytes.push(rng.u8(..));
            }
            std::fs::write(&path, &bytes).unwrap();
            let _ = source.fetch(&FetchRequest::first());
        }
    }
}
