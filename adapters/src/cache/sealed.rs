//! How the persistent caches turn tokens into stored bytes and back:
//! the plain [`record`](super::record), or (feature `encryption`) that
//! record sealed with XChaCha20-Poly1305.
//!
//! # The sealed envelope
//!
//! ```text
//! FTSEAL2:<key id>:<base64url, no padding, of nonce (24 bytes) || ciphertext || tag (16 bytes)>
//! ```
//!
//! * ASCII on one line, so it fits a file, a Redis string and a `bytea`
//!   alike, and `FTSEAL` tells at a glance (and to a build without the
//!   feature) that the entry is encrypted.
//! * The key id names which key sealed it; ids are public (they are written
//!   in clear), keys never are.
//! * The associated data is the envelope's header (`FTSEAL2:<id>:`) and
//!   where the record is stored: the file's full path (absolute; the
//!   directory counts, not only the name), the Redis key, the PostgreSQL
//!   table (as configured) and row key. So a record copied or moved to
//!   another file, directory, key, table or row, or relabelled with another
//!   key id, fails to authenticate.
//! * Envelope version 1 (`FTSEAL1`, written by earlier builds) bound a
//!   record to its cache key only: the file's name, the row's key. It is
//!   still read, under that binding, so an upgrade keeps the fleet's
//!   current token (and refresh token); the next store rewrites it in
//!   version 2. Until then a version-1 record is accepted where its key
//!   matches, as before. Earlier builds do not read version 2 (it is
//!   Unreadable to them, never overwritten), so upgrade every instance
//!   that shares a cache before the first one writes.
//! * Each seal draws a fresh random 192-bit nonce from the operating
//!   system (`getrandom`). XChaCha20-Poly1305 was chosen over AES-256-GCM
//!   for exactly this: with 96-bit GCM nonces, random nonces under one key
//!   must stay well below 2^32 messages fleet-wide before a collision (which
//!   would reveal the authentication key) becomes a real risk, and a fleet of
//!   uncoordinated instances cannot keep a shared counter. With 192 bits, a
//!   collision among even 2^64 random nonces has a probability around
//!   2^-64, so every instance can draw its own nonces with no coordination.
//!   It is also constant-time in software, without AES instructions.
//!
//! # What cannot be read is never destroyed
//!
//! An entry that exists but cannot be read by this instance (sealed with a
//! key it does not hold, tampered with, moved from another key, a newer
//! envelope or record version, a plaintext record where encryption is
//! required, or a sealed one where no keys are configured) is
//! [`CacheErrorKind::Unreadable`]: not a miss, and no store replaces it (the
//! store fails with the same kind), because it may hold the newest refresh
//! token, written by a peer with a newer build or a newer key. Bytes that
//! are neither a record nor an envelope are corrupt: a miss, replaced by the
//! next store. Messages name the cache key, the key id and the reason,
//! never a key or a token.

// With `encryption` alone (no cache to use it yet) only the keys are used.
#![cfg_attr(
    not(any(feature = "file", feature = "redis", feature = "postgres")),
    allow(dead_code)
)]

use std::sync::OnceLock;

use freshtoken_core::{CacheError, CacheErrorKind, Token, TokenId};

use super::record::{self, DecodeError};

/// The envelope's prefix, before its version digit.
const MAGIC: &[u8] = b"FTSEAL";

/// What the caches store records with: plain, or sealed with keys; and
/// the configuration their records are made for, once the driver has said
/// it ([`bind_config`](Self::bind_config)).
#[derive(Clone, Default)]
pub(crate) struct Codec {
    #[cfg(feature = "encryption")]
    keys: Option<EncryptionKeys>,
    config: OnceLock<TokenId>,
}

/// A stored entry, read.
pub(crate) enum Decoded {
    /// A token.
    Token(Token),
    /// Bytes that are no record at all: a miss (with a warning), and the
    /// next store may replace them.
    Corrupt(DecodeError),
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "encryption")]
        if let Some(keys) = &self.keys {
            return keys.fmt(f);
        }
        f.write_str("plaintext")
    }
}

impl Codec {
    /// Seals records with `keys` from now on.
    #[cfg(feature = "encryption")]
    pub(crate) fn with_keys(keys: EncryptionKeys) -> Self {
        Codec {
            keys: Some(keys),
            config: OnceLock::new(),
        }
    }

    /// Writes `config` into every record from now on, and refuses records
    /// made for another one (see [`record`]'s docs). The first binding
    /// holds: a cache value serves one refresher, and a second binding
    /// to another configuration (one cache value given to two builders)
    /// is reported and ignored. `what` names the entry in the warning.
    pub(crate) fn bind_config(&self, config: TokenId, what: &dyn std::fmt::Display) {
        if let Err(other) = self.config.set(config) {
            if self.config.get() != Some(&other) {
                tracing::warn!(
                    entry = %what,
                    "one cache value was given to refreshers of two configurations; its \
                     records stay bound to the first: give each refresher its own cache"
                );
            }
        }
    }

    /// The bytes to store for `token` where `binding` says.
    pub(crate) fn encode(&self, token: &Token, binding: &Binding) -> Result<Vec<u8>, CacheError> {
        let plain = zeroize_on_drop(record::encode_for(token, self.config.get().copied()));
        #[cfg(feature = "encryption")]
        if let Some(keys) = &self.keys {
            return keys.seal(&plain.0, &binding.current);
        }
        let _ = binding;
        Ok(plain.0.clone())
    }

    /// Reads stored bytes: a token, corrupt bytes (a miss), or an
    /// [`Unreadable`](CacheErrorKind::Unreadable) error. `what` names the
    /// entry in messages (a path, a key).
    pub(crate) fn decode(
        &self,
        bytes: &[u8],
        binding: &Binding,
        what: &str,
    ) -> Result<Decoded, CacheError> {
        let unreadable = |why: &str| {
            CacheError::new(
                CacheErrorKind::Unreadable,
                format!("{what}: {why}; it is left in place"),
            )
        };
        let trimmed = trim_start(bytes);
        if trimmed.starts_with(MAGIC) {
            #[cfg(feature = "encryption")]
            if let Some(keys) = &self.keys {
                let plain = keys
                    .open(trimmed, binding)
                    .map_err(|why| unreadable(&why))?;
                return self.inner(&plain.0, &unreadable);
            }
            let _ = binding;
            return Err(unreadable(
                "the entry is encrypted, and this cache has no encryption keys",
            ));
        }
        #[cfg(feature = "encryption")]
        if let Some(keys) = &self.keys {
            if !keys.0.accept_plaintext {
                // A readable plaintext record where encryption is required:
                // it may be a not-yet-upgraded peer's newest token.
                return match record::decode(bytes) {
                    Err(e @ DecodeError::UnsupportedVersion(_)) => Err(unreadable(&e.to_string())),
                    Err(e) => Ok(Decoded::Corrupt(e)),
                    Ok(_) => Err(unreadable(
                        "the entry is not encrypted, and this cache requires encryption \
                         (EncryptionKeys::accept_plaintext reads it, to migrate)",
                    )),
                };
            }
        }
        self.inner(bytes, &unreadable)
    }

    /// The record inside (or without) an envelope; one made for another
    /// configuration is a miss ([`DecodeError::OtherConfiguration`]).
    fn inner(
        &self,
        bytes: &[u8],
        unreadable: &dyn Fn(&str) -> CacheError,
    ) -> Result<Decoded, CacheError> {
        match record::decode_for(bytes, self.config.get().copied()) {
            Ok(token) => Ok(Decoded::Token(token)),
            Err(e @ DecodeError::UnsupportedVersion(_)) => Err(unreadable(&e.to_string())),
            Err(e) => Ok(Decoded::Corrupt(e)),
        }
    }

    /// Whether a store may replace the entry `existing`: an error of kind
    /// Unreadable if this instance cannot read it (see the module docs).
    /// (The file and Redis caches judge the entry they read under their
    /// lock or compare-and-set with [`decode`](Self::decode) instead.)
    #[cfg(test)]
    pub(crate) fn check_overwrite(
        &self,
        existing: &[u8],
        binding: &Binding,
        what: &str,
    ) -> Result<(), CacheError> {
        self.decode(existing, binding, what)
            .map(|_| ())
            .map_err(|e| {
                CacheError::new(
                    CacheErrorKind::Unreadable,
                    format!("not overwriting it: {}", e.message()),
                )
            })
    }

    /// The PostgreSQL cache's `record_format` for what [`encode`](Self::encode)
    /// writes.
    #[cfg(feature = "postgres")]
    pub(crate) fn format_tag(&self) -> String {
        #[cfg(feature = "encryption")]
        if let Some(keys) = &self.keys {
            return sealed_tag(keys.current_id());
        }
        plain_tag()
    }
}

/// Whether a PostgreSQL `record_format` is one this build knows (the bytes
/// then say whether this instance can read them): the plain record of this
/// version, or one sealed in envelope version 1 or 2 with any key id.
#[cfg(feature = "postgres")]
pub(crate) fn known_tag(tag: &str) -> bool {
    let plain = plain_tag();
    tag == plain
        || tag
            .strip_prefix("sealed2:")
            .or_else(|| tag.strip_prefix("sealed1:"))
            .and_then(|rest| rest.strip_suffix(plain.as_str()))
            .is_some_and(|id| id.ends_with(':') && id.len() > 1)
}

#[cfg(feature = "postgres")]
fn plain_tag() -> String {
    format!("json-v{}", record::VERSION)
}

#[cfg(all(feature = "postgres", feature = "encryption"))]
fn sealed_tag(id: &str) -> String {
    format!("sealed2:{id}:json-v{}", record::VERSION)
}

/// Where a record is stored, as a sealed record's associated data: what
/// version 2 binds (`current`), and what version 1 bound (`legacy`: the
/// cache key alone).
#[derive(Clone)]
#[cfg_attr(not(feature = "encryption"), allow(dead_code))]
pub(crate) struct Binding {
    current: Vec<u8>,
    legacy: Vec<u8>,
}

/// The bytes say nothing the cache's own fields do not.
impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding").finish_non_exhaustive()
    }
}

impl Binding {
    /// A file cache's record: its full path, made absolute against the
    /// working directory (lexically: links are not resolved, so the path
    /// names the same place whether or not the file exists yet).
    #[cfg(any(feature = "file", test))]
    pub(crate) fn file(path: &std::path::Path) -> Self {
        let full = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Binding {
            current: labelled(b"file", &[full.as_os_str().as_encoded_bytes()]),
            legacy: legacy(path.file_name().unwrap_or_default().as_encoded_bytes()),
        }
    }

    /// A Redis cache's record: its key.
    #[cfg(feature = "redis")]
    pub(crate) fn redis(key: &str) -> Self {
        Binding {
            current: labelled(b"redis", &[key.as_bytes()]),
            legacy: legacy(key.as_bytes()),
        }
    }

    /// A PostgreSQL cache's record: its table (the name as configured)
    /// and its row's key.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(table: &str, key: &str) -> Self {
        Binding {
            current: labelled(b"postgres", &[table.as_bytes(), key.as_bytes()]),
            legacy: legacy(key.as_bytes()),
        }
    }
}

/// `freshtoken cache\0<kind>\0` then each part after its length (8 bytes,
/// big-endian), so no two different places give the same bytes.
fn labelled(kind: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut b = b"freshtoken cache\0".to_vec();
    b.extend_from_slice(kind);
    b.push(0);
    for part in parts {
        b.extend_from_slice(&(part.len() as u64).to_be_bytes());
        b.extend_from_slice(part);
    }
    b
}

/// What envelope version 1 bound: the cache key, under a fixed label.
fn legacy(key: &[u8]) -> Vec<u8> {
    let mut b = b"freshtoken cache key\0".to_vec();
    b.extend_from_slice(key);
    b
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Bytes wiped when dropped (record bytes hold the tokens).
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        #[cfg(feature = "encryption")]
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

fn zeroize_on_drop(bytes: Vec<u8>) -> Wiped {
    Wiped(bytes)
}

#[cfg(feature = "encryption")]
pub use keys::EncryptionKeys;

#[cfg(feature = "encryption")]
mod keys {
    use std::fmt;
    use std::path::Path;
    use std::sync::Arc;

    use base64::Engine;
    use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use freshtoken_core::{CacheError, CacheErrorKind};
    use zeroize::Zeroizing;

    use super::Wiped;

    const NONCE_LEN: usize = 24;
    const TAG_LEN: usize = 16;
    /// The longest key file read; a key list is a few hundred bytes.
    const MAX_KEY_FILE: u64 = 64 * 1024;

    /// The keys that encrypt cached records at rest (XChaCha20-Poly1305,
    /// 256-bit keys), for [`FileCache`](crate::cache), `RedisCache` and
    /// `PostgresCache` (their `encryption` builder methods).
    ///
    /// * **Several keys, for rotation.** The first key seals every record
    ///   written; every key opens records sealed with it. To rotate: add the
    ///   new key *second* everywhere (all instances can now read it), then
    ///   move it first (new records use it), and drop the old key once every
    ///   record has been rewritten (a token's lifetime after the switch).
    /// * **Key ids** (1 to 32 of `A-Z a-z 0-9 _ - .`) are written in clear in
    ///   each record, so a reader knows which key to use; they are not
    ///   secret. Keys are.
    /// * **The text form** (environment variable or file): entries
    ///   `id:key`, separated by commas, spaces or new lines, `#` starting a
    ///   comment line; each key is 32 bytes in hex (64 digits) or base64
    ///   (standard or URL-safe, padding optional). Make one with
    ///   `openssl rand -base64 32`.
    /// * **Migrating a plaintext cache**: with encryption on, a plaintext
    ///   record is Unreadable (it is left alone, see the module docs of the
    ///   caches) unless [`accept_plaintext`](Self::accept_plaintext) is set
    ///   for the rollout.
    ///
    /// Neither `Debug` nor any error shows a key; key material is wiped
    /// from memory when the keys are dropped.
    ///
    /// ```
    /// use freshtoken::cache::EncryptionKeys;
    ///
    /// // Two keys: "k2" seals, "k1" (the previous one) still opens.
    /// let text = "k2:7Fh0uGd1Jc4ZQw9sYkX2bV3nR8mT5pLq0aE6iU1oW4c=\n\
    ///             k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    /// let keys = EncryptionKeys::parse(text)?;
    /// assert_eq!(keys.ids(), ["k2", "k1"]);
    /// assert!(!format!("{keys:?}").contains("7Fh0"));
    ///
    /// // The same from the environment or a file:
    /// // EncryptionKeys::from_env("MYAPP_CACHE_KEYS")?;
    /// // EncryptionKeys::from_file("/run/secrets/cache-keys")?;
    /// assert!(EncryptionKeys::parse("k1:tooshort").is_err());
    /// # Ok::<(), freshtoken::CacheError>(())
    /// ```
    #[derive(Clone)]
    pub struct EncryptionKeys(pub(super) Arc<Keys>);

    pub(super) struct Keys {
        /// The first one seals.
        pub(super) entries: Vec<Entry>,
        pub(super) accept_plaintext: bool,
    }

    pub(super) struct Entry {
        pub(super) id: String,
        cipher: XChaCha20Poly1305,
    }

    impl EncryptionKeys {
        /// One key, which seals and opens.
        pub fn new(id: &str, key: [u8; 32]) -> Result<Self, CacheError> {
            let key = Zeroizing::new(key);
            Ok(EncryptionKeys(Arc::new(Keys {
                entries: vec![entry(id, &key[..])?],
                accept_plaintext: false,
            })))
        }

        /// Adds an older key, which only opens records sealed with it.
        pub fn with_old_key(self, id: &str, key: [u8; 32]) -> Result<Self, CacheError> {
            let key = Zeroizing::new(key);
            let mut keys = self.unwrap_keys();
            if keys.entries.iter().any(|e| e.id == id) {
                return Err(key_error(format!("key id {id:?} appears twice")));
            }
            keys.entries.push(entry(id, &key[..])?);
            Ok(EncryptionKeys(Arc::new(keys)))
        }

        /// Reads plaintext records too (they are rewritten sealed): for the
        /// rollout of encryption over an existing cache. Off by default.
        pub fn accept_plaintext(self, accept: bool) -> Self {
            let mut keys = self.unwrap_keys();
            keys.accept_plaintext = accept;
            EncryptionKeys(Arc::new(keys))
        }

        /// Keys from their text form (see the type's docs).
        pub fn parse(text: &str) -> Result<Self, CacheError> {
            let mut entries: Vec<Entry> = Vec::new();
            let items = text
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
                .filter(|item| !item.is_empty());
            for (n, item) in items.enumerate() {
                let Some((id, material)) = item.split_once(':') else {
                    return Err(key_error(format!("key entry {} is not id:key", n + 1)));
                };
                let key = decode_key(material).map_err(|why| {
                    key_error(format!("key {:?} (entry {}): {why}", safe_id(id), n + 1))
                })?;
                if entries.iter().any(|e| e.id == id) {
                    return Err(key_error(format!("key id {:?} appears twice", safe_id(id))));
                }
                entries.push(entry(id, &key[..])?);
            }
            if entries.is_empty() {
                return Err(key_error("no keys given".to_owned()));
            }
            Ok(EncryptionKeys(Arc::new(Keys {
                entries,
                accept_plaintext: false,
            })))
        }

        /// Keys from the environment variable `var` (text form).
        pub fn from_env(var: &str) -> Result<Self, CacheError> {
            let text = Zeroizing::new(
                std::env::var(var)
                    .map_err(|e| key_error(format!("environment variable {var}: {e}")))?,
            );
            Self::parse(&text)
        }

        /// Keys from the file at `path` (text form, at most 64 KiB). Keep it
        /// readable by the service's user only. Only a regular file is read
        /// (opened without blocking: a FIFO at the path fails at once).
        pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CacheError> {
            use crate::regular_file::{self, OpenError};
            use std::io::Read;
            let path = path.as_ref();
            let fail = |e: std::io::Error| key_error(format!("key file {}: {e}", path.display()));
            let file = regular_file::open(path).map_err(|e| match e {
                OpenError::Io(e) => fail(e),
                OpenError::NotRegular(kind) => key_error(format!(
                    "refusing the key file {}: it is {kind}, not a regular file",
                    path.display()
                )),
            })?;
            let mut bytes = Zeroizing::new(Vec::new());
            file.take(MAX_KEY_FILE + 1)
                .read_to_end(&mut bytes)
                .map_err(fail)?;
            if bytes.len() as u64 > MAX_KEY_FILE {
                return Err(key_error(format!(
                    "key file {} is larger than 64 KiB",
                    path.display()
                )));
            }
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| key_error(format!("key file {} is not UTF-8 text", path.display())))?;
            Self::parse(text)
        }

        /// The key ids, the sealing one first.
        pub fn ids(&self) -> Vec<&str> {
            self.0.entries.iter().map(|e| e.id.as_str()).collect()
        }

        #[cfg(feature = "postgres")]
        pub(super) fn current_id(&self) -> &str {
            &self.0.entries[0].id
        }

        fn unwrap_keys(self) -> Keys {
            match Arc::try_unwrap(self.0) {
                Ok(keys) => keys,
                Err(shared) => Keys {
                    entries: shared
                        .entries
                        .iter()
                        .map(|e| Entry {
                            id: e.id.clone(),
                            cipher: e.cipher.clone(),
                        })
                        .collect(),
                    accept_plaintext: shared.accept_plaintext,
                },
            }
        }

        /// Seals `plain` in envelope version 2, bound to `binding` (what
        /// [`Binding`](super::Binding) binds now).
        pub(super) fn seal(&self, plain: &[u8], binding: &[u8]) -> Result<Vec<u8>, CacheError> {
            let entry = &self.0.entries[0];
            let header = format!("FTSEAL2:{}:", entry.id);
            let nonce = XNonce::try_generate().map_err(|e| {
                CacheError::new(
                    CacheErrorKind::Io,
                    format!("no randomness for an encryption nonce: {e}"),
                )
            })?;
            let aad = [header.as_bytes(), binding].concat();
            let sealed = entry
                .cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: plain,
                        aad: &aad,
                    },
                )
                .map_err(|_| CacheError::new(CacheErrorKind::Io, "cannot encrypt the record"))?;
            let mut body = Vec::with_capacity(NONCE_LEN + sealed.len());
            body.extend_from_slice(&nonce);
            body.extend_from_slice(&sealed);
            let mut out = header.into_bytes();
            out.extend_from_slice(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(&body)
                    .as_bytes(),
            );
            Ok(out)
        }

        /// Opens an envelope (starting with `FTSEAL`); the error says why
        /// not, without any secret.
        /// Version 2 is opened with what `binding` binds now, version 1
        /// with the cache key alone (what it was sealed with).
        pub(super) fn open(&self, bytes: &[u8], binding: &super::Binding) -> Result<Wiped, String> {
            let bytes = trim_end(bytes);
            let rest = &bytes[super::MAGIC.len()..];
            let (rest, binding) = if let Some(rest) = rest.strip_prefix(b"2:") {
                (rest, &binding.current)
            } else if let Some(rest) = rest.strip_prefix(b"1:") {
                (rest, &binding.legacy)
            } else {
                let version: String = rest
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .map(|&b| b as char)
                    .take(8)
                    .collect();
                return Err(format!(
                    "the entry is sealed in envelope version {version:?}, which this build does not read"
                ));
            };
            let binding = binding.as_slice();
            let Some(colon) = rest.iter().position(|&b| b == b':') else {
                return Err("the encrypted entry is malformed (no key id)".to_owned());
            };
            let id = String::from_utf8_lossy(&rest[..colon]).into_owned();
            let Some(entry) = self.0.entries.iter().find(|e| e.id == id) else {
                return Err(format!(
                    "the entry is sealed with key id {:?}, which this instance does not hold (it holds {:?})",
                    safe_id(&id),
                    self.ids()
                ));
            };
            let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&rest[colon + 1..])
                .map_err(|_| "the encrypted entry is malformed (bad base64)".to_owned())?;
            if body.len() < NONCE_LEN + TAG_LEN {
                return Err("the encrypted entry is malformed (too short)".to_owned());
            }
            let (nonce, sealed) = body.split_at(NONCE_LEN);
            let nonce = XNonce::try_from(nonce)
                .map_err(|_| "the encrypted entry is malformed (nonce)".to_owned())?;
            let header_len = super::MAGIC.len() + 2 + colon + 1;
            let aad = [&bytes[..header_len], binding].concat();
            entry
                .cipher
                .decrypt(&nonce, Payload { msg: sealed, aad: &aad })
                .map(Wiped)
                .map_err(|_| {
                    format!(
                        "the entry does not authenticate with key {:?}: it was altered, moved from another cache key, file, directory or table, or sealed with a different key of the same id",
                        safe_id(&id)
                    )
                })
        }
    }

    impl fmt::Debug for EncryptionKeys {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EncryptionKeys")
                .field("ids", &self.ids())
                .field("accept_plaintext", &self.0.accept_plaintext)
                .finish_non_exhaustive()
        }
    }

    fn entry(id: &str, key: &[u8]) -> Result<Entry, CacheError> {
        let valid = !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(key_error(format!(
                "key id {:?} is not 1 to 32 of A-Z a-z 0-9 _ - .",
                safe_id(id)
            )));
        }
        let cipher = XChaCha20Poly1305::new_from_slice(key)
            .map_err(|_| key_error(format!("key {id:?} is not 32 bytes")))?;
        Ok(Entry {
            id: id.to_owned(),
            cipher,
        })
    }

    /// 32 bytes from hex or base64; the error never quotes the material.
    fn decode_key(material: &str) -> Result<Zeroizing<Vec<u8>>, &'static str> {
        let material = material.trim();
        let bytes = if material.len() == 64 && material.bytes().all(|b| b.is_ascii_hexdigit()) {
            Zeroizing::new(
                (0..32)
                    .map(|i| u8::from_str_radix(&material[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| "not hex")?,
            )
        } else {
            use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
            let unpadded = material.trim_end_matches('=');
            Zeroizing::new(
                STANDARD_NO_PAD
                    .decode(unpadded)
                    .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
                    .map_err(|_| "neither 64 hex digits nor base64")?,
            )
        };
        if bytes.len() != 32 {
            return Err("not 32 bytes (make one with `openssl rand -base64 32`)");
        }
        Ok(bytes)
    }

    /// An id as shown in messages: ids are not secret, but a malformed
    /// entry might be key material typed into the wrong place; show only
    /// ids that look like ids.
    fn safe_id(id: &str) -> String {
        if id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            id.to_owned()
        } else {
            "(malformed id)".to_owned()
        }
    }

    fn key_error(message: String) -> CacheError {
        CacheError::new(
            CacheErrorKind::Io,
            format!("cache encryption keys: {message}"),
        )
    }

    fn trim_end(bytes: &[u8]) -> &[u8] {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        &bytes[..end]
    }
}

#[cfg(all(test, feature = "encryption"))]
mod tests {
    use super::*;
    use freshtoken_core::{AccessToken, RefreshToken, Timestamp};

    fn token() -> Token {
        Token::new(
            AccessToken::new("ACCESS-SECRET"),
            Timestamp::from_millis(1_000),
            Timestamp::from_millis(2_000),
            Timestamp::from_millis(3_000),
        )
        .with_refresh_token(Some(RefreshToken::new("REFRESH-SECRET")))
    }

    fn keys(spec: &str) -> EncryptionKeys {
        EncryptionKeys::parse(spec).unwrap()
    }

    /// The binding of a file cache at the relative path `key`.
    fn binding(key: &[u8]) -> Binding {
        Binding::file(std::path::Path::new(std::str::from_utf8(key).unwrap()))
    }

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const K2: &str = "k2:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn read(codec: &Codec, bytes: &[u8], key: &str) -> Result<Token, CacheError> {
        match codec.decode(bytes, &binding(key.as_bytes()), key)? {
            Decoded::Token(t) => Ok(t),
            Decoded::Corrupt(e) => panic!("corrupt: {e}"),
        }
    }

    #[test]
    fn seals_and_opens() {
        let codec = Codec::with_keys(keys(K1));
        let sealed = codec.encode(&token(), &binding(b"a")).unwrap();
        assert!(sealed.starts_with(b"FTSEAL2:k1:"));
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(!text.contains("SECRET"));
        assert_eq!(read(&codec, &sealed, "a").unwrap(), token());
        // Random nonces: the same record seals differently each time.
        let again = codec.encode(&token(), &binding(b"a")).unwrap();
        assert_ne!(sealed, again);
        assert_eq!(read(&codec, &again, "a").unwrap(), token());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let k1 = Codec::with_keys(keys(K1));
        let k2 = Codec::with_keys(keys(K2));
        let sealed = k1.encode(&token(), &binding(b"a")).unwrap();
        let unreadable = |r: Result<Token, CacheError>| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), CacheErrorKind::Unreadable, "{e}");
            assert!(!format!("{e:?}").contains("SECRET"));
            e.to_string()
        };
        // Another key, another cache key, no keys at all.
        assert!(unreadable(read(&k2, &sealed, "a")).contains("\"k1\""));
        assert!(unreadable(read(&k1, &sealed, "b")).contains("moved"));
        // The same name in another directory.
        let here = k1.encode(&token(), &binding(b"one/a")).unwrap();
        assert_eq!(read(&k1, &here, "one/a").unwrap(), token());
        assert!(unreadable(read(&k1, &here, "two/a")).contains("directory"));
        assert!(unreadable(read(&Codec::default(), &sealed, "a")).contains("no encryption keys"));
        // Tampered: every byte of the body flipped in turn.
        for i in "FTSEAL2:k1:".len()..sealed.len() {
            let mut t = sealed.clone();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let e = k1
                .decode(&t, &binding(b"a"), "a")
                .err()
                .unwrap_or_else(|| panic!("byte {i} altered and accepted"));
            assert_eq!(e.kind(), CacheErrorKind::Unreadable);
        }
        // Relabelled with another key's id: refused too.
        let both = Codec::with_keys(keys(&format!("{K2},{}", K1.replace("k1", "k3"))));
        let relabelled = [b"FTSEAL2:k3:", &sealed[11..]].concat();
        unreadable(read(&both, &relabelled, "a"));
        // A newer envelope version.
        let newer = [b"FTSEAL3:k1:", &sealed[11..]].concat();
        assert!(unreadable(read(&k1, &newer, "a")).contains("version"));
        // A plaintext record where encryption is required; accepted on request.
        let plain = record::encode(&token());
        unreadable(read(&k1, &plain, "a"));
        let migrating = Codec::with_keys(keys(K1).accept_plaintext(true));
        assert_eq!(read(&migrating, &plain, "a").unwrap(), token());
        // Garbage is corrupt (a miss), not unreadable.
        assert!(matches!(
            k1.decode(b"garbage", &binding(b"a"), "a"),
            Ok(Decoded::Corrupt(_))
        ));
        assert!(k1.check_overwrite(b"garbage", &binding(b"a"), "a").is_ok());
        let e = k2
            .check_overwrite(&sealed, &binding(b"a"), "a")
            .unwrap_err();
        assert_eq!(e.kind(), CacheErrorKind::Unreadable);
    }

    #[test]
    fn mangled_envelopes_never_panic() {
        let codec = Codec::with_keys(keys(&format!("{K1},{K2}")));
        let sealed = codec.encode(&token(), &binding(b"a")).unwrap();
        let b = binding(b"a");
        // Every prefix, and every single-byte change and removal.
        for n in 0..=sealed.len() {
            let _ = codec.decode(&sealed[..n], &b, "a");
        }
        for i in 0..sealed.len() {
            for x in [b':', b'0', b'=', b' ', 0xff, b'\n', b'-'] {
                let mut m = sealed.clone();
                m[i] = x;
                let _ = codec.decode(&m, &b, "a");
                m.remove(i);
                let _ = codec.decode(&m, &b, "a");
            }
        }
        for odd in [
            &b"FTSEAL"[..],
            b"FTSEAL1",
            b"FTSEAL1:",
            b"FTSEAL1::",
            b"FTSEAL2:k1:",
            b"FTSEAL2:k1",
            b"  FTSEAL2:k1:AAAA  \n",
            b"FTSEAL99999999999999999999:k1:",
            b"FTSEALx",
        ] {
            let e = codec.decode(odd, &b, "a").err().expect("refused");
            assert_eq!(e.kind(), CacheErrorKind::Unreadable);
        }
    }

    #[test]
    fn rotation_reads_old_records() {
        let old = Codec::with_keys(keys(K1));
        let sealed_old = old.encode(&token(), &binding(b"a")).unwrap();
        let rotated = Codec::with_keys(keys(&format!("{K2}\n# previous\n{K1}")));
        assert_eq!(read(&rotated, &sealed_old, "a").unwrap(), token());
        let sealed_new = rotated.encode(&token(), &binding(b"a")).unwrap();
        assert!(sealed_new.starts_with(b"FTSEAL2:k2:"));
        assert!(read(&old, &sealed_new, "a").is_err());
    }

    #[test]
    fn key_text_errors_never_show_material() {
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LWlzLXRvby1sb25nLWZvci0zMg";
        for text in [
            format!("k1:{secret}"),
            secret.to_owned(),
            format!("{secret}:{secret}"),
            String::new(),
            format!("{K1},{K1}"),
            "k1:0011".to_owned(),
        ] {
            let e = EncryptionKeys::parse(&text).unwrap_err();
            assert!(!e.to_string().contains(secret), "{e}");
            assert!(!e.to_string().contains("AAECAwQF"), "{e}");
        }
        let k = keys(K1);
        assert!(!format!("{k:?}").contains("AAECAwQF"));
        let e = EncryptionKeys::new("bad id!", [0; 32]).unwrap_err();
        assert!(e.to_string().contains("key id"));
        let two = EncryptionKeys::new("a", [1; 32])
            .unwrap()
            .with_old_key("b", [2; 32])
            .unwrap();
        assert_eq!(two.ids(), ["a", "b"]);
        assert!(two.with_old_key("a", [3; 32]).is_err());
    }
}
