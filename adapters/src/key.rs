//! [`TokenKey`]: what a token is for (authority, client, audience, scope,
//! resources), the name of its cache entry, and the binding of the cache
//! records made for it.

use freshtoken_core::TokenId;

/// What distinguishes one token from another: the authority's token URL
/// (optional), the client it is issued to, and the audience, scope and
/// RFC 8707 resources it is issued for.
///
/// Scope values and resources are kept sorted and without duplicates, so
/// `"b a"` and `"a b"` are one key.
///
/// ```
/// use freshtoken::manager::TokenKey;
///
/// let a = TokenKey::new("svc").with_scope("write read").with_resource("https://b").with_resource("https://a");
/// let b = TokenKey::new("svc").with_scope("read write").with_resource("https://a").with_resource("https://b");
/// assert_eq!(a, b);
/// assert_eq!(a.scope(), Some("read write"));
/// assert!(a.cache_name().starts_with("svc-"));
/// assert_ne!(a.cache_name(), TokenKey::new("svc").cache_name());
/// // Another authority, another entry.
/// let other = a.clone().with_token_url("https://other.example/token");
/// assert_ne!(other.cache_name(), a.cache_name());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey {
    token_url: Option<String>,
    client: String,
    audience: Option<String>,
    scope: Option<String>,
    resources: Vec<String>,
    dpop_jkt: Option<String>,
    instance_only: bool,
}

impl TokenKey {
    /// The key of `client`'s token with no audience, scope or resource.
    pub fn new(client: impl Into<String>) -> Self {
        TokenKey {
            token_url: None,
            client: client.into(),
            audience: None,
            scope: None,
            resources: Vec::new(),
            dpop_jkt: None,
            instance_only: false,
        }
    }

    /// Sets the authority's token endpoint the token is fetched from. It is
    /// part of the key and of its [`cache_name`](Self::cache_name), so a
    /// token from one authority is never served for another. The spawn
    /// closure still gives the URL to its source; a query string or
    /// fragment is part of the key as written.
    pub fn with_token_url(mut self, token_url: impl Into<String>) -> Self {
        self.token_url = Some(token_url.into());
        self
    }

    /// Sets the `audience` parameter.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets the scope (space-separated values; order does not matter).
    pub fn with_scope(mut self, scope: impl AsRef<str>) -> Self {
        let mut values: Vec<&str> = scope.as_ref().split_whitespace().collect();
        values.sort_unstable();
        values.dedup();
        self.scope = (!values.is_empty()).then(|| values.join(" "));
        self
    }

    /// Adds an RFC 8707 `resource`.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        let resource = resource.into();
        if let Err(i) = self.resources.binary_search(&resource) {
            self.resources.insert(i, resource);
        }
        self
    }

    /// Sets the RFC 7638 thumbprint of the DPoP key the token is bound to
    /// (an OAuth2 source with [`dpop`](crate::oauth2::SourceBuilder::dpop)
    /// sets its key's). It is part of the [`config_id`](Self::config_id),
    /// so a cached DPoP-bound token is adopted only by an instance that
    /// holds the same key: an instance with another key finds no token
    /// there (with a warning) and fetches its own.
    pub fn with_dpop_jkt(mut self, thumbprint: impl Into<String>) -> Self {
        self.dpop_jkt = Some(thumbprint.into());
        self
    }

    /// The thumbprint of the DPoP key the token is bound to, if set.
    pub fn dpop_jkt(&self) -> Option<&str> {
        self.dpop_jkt.as_deref()
    }

    /// Marks the token as usable by this process alone: it is bound to a
    /// DPoP key the process generated ([`DpopKey::generate`](crate::oauth2::DpopKey::generate);
    /// an OAuth2 source with such a key marks its key). No cache can share
    /// such a token, and one stored there would be an entry no instance
    /// ever reads (a new one per process started), so a driver given a
    /// shared cache runs without it and says so in
    /// [`TokenHandle::sharing`](crate::TokenHandle::sharing). It is not
    /// part of the [`config_id`](Self::config_id): the key's thumbprint
    /// already is.
    ///
    /// ```
    /// use freshtoken::manager::TokenKey;
    ///
    /// let key = TokenKey::new("svc").with_dpop_jkt("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    /// assert!(!key.is_instance_only());
    /// let own = key.clone().instance_only();
    /// assert!(own.is_instance_only());
    /// assert_eq!(own.config_id(), key.config_id());
    /// ```
    pub fn instance_only(mut self) -> Self {
        self.instance_only = true;
        self
    }

    /// Whether the token serves this process alone (see
    /// [`instance_only`](Self::instance_only)).
    pub fn is_instance_only(&self) -> bool {
        self.instance_only
    }

    /// The token URL, if set.
    pub fn token_url(&self) -> Option<&str> {
        self.token_url.as_deref()
    }

    /// The client id.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The audience, if set.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The scope, normalized, if set.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The resources, sorted.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// A stable, file-name-safe name for this key's cache entry:
    /// `<client>-<config id>`, the client id with characters other than
    /// `A-Za-z0-9._-` replaced by `_` (at most 40 of them), then the
    /// [`config_id`](Self::config_id) (see the manager's docs, "Cache
    /// names").
    pub fn cache_name(&self) -> String {
        let client: String = self
            .client
            .chars()
            .take(40)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{client}-{}", self.config_id())
    }

    /// The fingerprint of the whole key: the first 64 bits of a SHA-256
    /// digest ([`TokenId::of`]) of the token URL when one is set, client,
    /// audience, sorted scope, sorted resources and the DPoP key's
    /// thumbprint when one is set, each length-prefixed.
    /// Keys that differ in any of them have different ids; the id is
    /// stable across processes and releases (a key without a token URL
    /// has the id it had before token URLs were part of the key).
    ///
    /// It ends the [`cache_name`](Self::cache_name), and the persistent
    /// caches write it into every record as the configuration the token
    /// was made for, so that a record made for another configuration is
    /// never adopted (see [`TokenCache::bind_config`](crate::cache::TokenCache::bind_config)).
    /// It holds no secret and reveals none of its inputs.
    ///
    /// ```
    /// use freshtoken::manager::TokenKey;
    ///
    /// let key = TokenKey::new("svc").with_scope("read");
    /// assert!(key.cache_name().ends_with(&key.config_id().to_string()));
    /// assert_ne!(key.config_id(), TokenKey::new("svc").with_scope("write").config_id());
    /// // A token bound to another DPoP key is another configuration's.
    /// let bound = key.clone().with_dpop_jkt("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    /// assert_ne!(bound.config_id(), key.config_id());
    /// assert_ne!(bound.config_id(), key.clone().with_dpop_jkt("another").config_id());
    /// ```
    pub fn config_id(&self) -> TokenId {
        let mut canonical = Vec::new();
        let mut field = |tag: u8, value: &str| {
            canonical.push(tag);
            canonical.extend_from_slice(&(value.len() as u64).to_le_bytes());
            canonical.extend_from_slice(value.as_bytes());
        };
        // The token URL comes first, and only when set: a key without
        // one keeps the name it had before URLs were part of the key.
        if let Some(u) = &self.token_url {
            field(b'u', u);
        }
        field(b'c', &self.client);
        if let Some(a) = &self.audience {
            field(b'a', a);
        }
        if let Some(s) = &self.scope {
            field(b's', s);
        }
        for r in &self.resources {
            field(b'r', r);
        }
        if let Some(k) = &self.dpop_jkt {
            field(b'k', k);
        }
        TokenId::of(&canonical)
    }

    /// A file cache for this key: `<dir>/<cache_name>.json`.
    #[cfg(feature = "file")]
    pub fn file_cache(&self, dir: impl AsRef<std::path::Path>) -> crate::cache::FileCache {
        crate::cache::FileCache::new(dir.as_ref().join(format!("{}.json", self.cache_name())))
    }

    /// A Redis cache for this key, at `<prefix><cache_name>`.
    #[cfg(feature = "redis")]
    pub fn redis_cache(
        &self,
        url: &str,
        prefix: &str,
    ) -> Result<crate::cache::RedisCache, freshtoken_core::CacheError> {
        crate::cache::RedisCache::new(url, format!("{prefix}{}", self.cache_name()))
    }

    /// Sets this key's audience, scope and resources on an OAuth2 source
    /// builder (the token URL and client id are the builder's own: give it
    /// the key's [`token_url`](Self::token_url) when the key has one).
    #[cfg(feature = "oauth2-sources")]
    pub fn apply<S>(
        &self,
        builder: crate::oauth2::SourceBuilder<S>,
    ) -> crate::oauth2::SourceBuilder<S> {
        let mut builder = builder;
        if let Some(a) = &self.audience {
            builder = builder.audience(a.clone());
        }
        if let Some(s) = &self.scope {
            builder = builder.scope(s.clone());
        }
        for r in &self.resources {
            builder = builder.resource(r.clone());
        }
        builder
    }
}
