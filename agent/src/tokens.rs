//! One configured token: its source, its cache, its driver.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use freshtoken::cache::{FileCache, RedisCache, TokenCache};
use freshtoken::clock::Now;
use freshtoken::driver::{Builder, DriverHandle};
use freshtoken::handle::Snapshot;
use freshtoken::oauth2::{ClientAuth, ClientCredentials, RefreshTokenSource, SourceBuilder};
use freshtoken::source::{
    AppServiceIdentity, AzureManagedIdentity, CloudIdentityError, GcpMetadata, TokenSource,
};
use freshtoken::{ClientSecret, RefreshToken, Timestamp, Token, TokenHandle, TokenStatus};

use crate::config::{ConfigError, Grant, Resolved};

/// The source of `token`, built from its configuration.
pub fn source(token: &Resolved) -> Result<Arc<dyn TokenSource>, ConfigError> {
    fn common<S>(mut b: SourceBuilder<S>, token: &Resolved) -> SourceBuilder<S> {
        let c = &token.config;
        if let Some(secret) = &token.client_secret {
            b = b.client_secret(ClientSecret::new(secret.expose()));
        }
        if let Some(path) = &c.client_assertion_file {
            b = b.client_assertion_file(path.clone());
        }
        if c.client_auth.as_deref() == Some("post") {
            b = b.client_auth(ClientAuth::Post);
        }
        if let Some(scope) = &c.scope {
            b = b.scope(scope.clone());
        }
        if let Some(audience) = &c.audience {
            b = b.audience(audience.clone());
        }
        if let Some(resource) = &c.resource {
            b = b.resource(resource.clone());
        }
        b.timeout(fetch_timeout(token))
    }
    let url_error = |e: freshtoken::oauth2::UrlError| ConfigError {
        key: format!("tokens.{}.token_url", token.name),
        message: e.to_string(),
    };
    Ok(match token.grant {
        Grant::ClientCredentials => {
            let builder = match &token.client_secret {
                Some(secret) => ClientCredentials::builder(
                    token.token_url.clone(),
                    token.client_id.clone(),
                    ClientSecret::new(secret.expose()),
                ),
                None => ClientCredentials::builder_without_secret(
                    token.token_url.clone(),
                    token.client_id.clone(),
                ),
            };
            Arc::new(common(builder, token).build().map_err(url_error)?)
        }
        Grant::RefreshToken => {
            let mut builder =
                RefreshTokenSource::builder(token.token_url.clone(), token.client_id.clone());
            if let Some(rt) = &token.refresh_token {
                builder = builder.refresh_token(RefreshToken::new(rt.expose()));
            }
            Arc::new(common(builder, token).build().map_err(url_error)?)
        }
        Grant::GceMetadata | Grant::AzureImds | Grant::AzureAppService => cloud_source(token)?.0,
    })
}

/// The source of a token from a cloud's identity endpoint (`grant =
/// "gce_metadata"`, `"azure_imds"` or `"azure_app_service"`), built by the
/// library's builder, and the URL it asks.
pub fn cloud_source(token: &Resolved) -> Result<(Arc<dyn TokenSource>, String), ConfigError> {
    let c = &token.config;
    let timeout = fetch_timeout(token);
    let error = |e: CloudIdentityError| cloud_error(token, &e);
    // The two Azure builders' identity setters, which have the same names.
    macro_rules! identity {
        ($builder:expr) => {{
            let mut b = $builder;
            if let Some(id) = &c.identity_client_id {
                b = b.client_id(id.clone()).map_err(error)?;
            }
            if let Some(id) = &c.identity_object_id {
                b = b.object_id(id.clone()).map_err(error)?;
            }
            if let Some(id) = &c.identity_resource_id {
                b = b.resource_id(id.clone()).map_err(error)?;
            }
            b.timeout(timeout)
        }};
    }
    let resource = || c.resource.clone().unwrap_or_default();
    match token.grant {
        Grant::GceMetadata => {
            let mut b = GcpMetadata::builder().timeout(timeout);
            if let Some(host) = &token.cloud_endpoint {
                b = b.host(host.clone());
            }
            if let Some(account) = &c.service_account {
                b = b.service_account(account.clone());
            }
            if let Some(scope) = &c.scope {
                b = b.scopes(
                    scope
                        .split(|ch: char| ch == ',' || ch.is_whitespace())
                        .filter(|s| !s.is_empty()),
                );
            }
            let source = b.build().map_err(error)?;
            let url = source.url().to_owned();
            Ok((Arc::new(source), url))
        }
        Grant::AzureImds => {
            let mut b = identity!(AzureManagedIdentity::builder(resource()));
            if let Some(endpoint) = &token.cloud_endpoint {
                b = b.endpoint(endpoint.clone());
            }
            let source = b.build().map_err(error)?;
            let url = source.url().to_owned();
            Ok((Arc::new(source), url))
        }
        Grant::AzureAppService => {
            let (Some(endpoint), Some(header)) = (&token.cloud_endpoint, &token.identity_header)
            else {
                return Err(ConfigError {
                    key: format!("tokens.{}.identity_endpoint", token.name),
                    message: "missing".to_owned(),
                });
            };
            let b = identity!(AppServiceIdentity::builder(
                endpoint.clone(),
                header.expose(),
                resource()
            ));
            let source = b.build().map_err(error)?;
            let url = source.url().to_owned();
            Ok((Arc::new(source), url))
        }
        Grant::ClientCredentials | Grant::RefreshToken => Err(ConfigError {
            key: format!("tokens.{}.grant", token.name),
            message: "not a cloud identity grant".to_owned(),
        }),
    }
}

/// The key a cloud source's complaint is about: the configuration's key,
/// or the platform's variable the value came from.
fn cloud_error(token: &Resolved, e: &CloudIdentityError) -> ConfigError {
    let c = &token.config;
    let key = match e {
        CloudIdentityError::InvalidParameter { what, .. } => match *what {
            "metadata host" => "metadata_host",
            "service account" => "service_account",
            "resource" => "resource",
            "identity header" => "identity_header_env",
            "managed identity" => "identity_client_id",
            _ => "grant",
        },
        _ if token.grant == Grant::GceMetadata => "metadata_host",
        _ => "identity_endpoint",
    };
    let key = match (key, token.grant) {
        ("metadata_host", _) if c.metadata_host.is_none() => {
            freshtoken::source::GCE_METADATA_HOST_ENV.to_owned()
        }
        ("identity_endpoint", Grant::AzureAppService) if c.identity_endpoint.is_none() => {
            "IDENTITY_ENDPOINT".to_owned()
        }
        (key, _) => format!("tokens.{}.{key}", token.name),
    };
    ConfigError {
        key,
        message: e.to_string(),
    }
}

/// How long a fetch may take.
pub fn fetch_timeout(token: &Resolved) -> Duration {
    Duration::from_secs(token.config.fetch_timeout_secs.unwrap_or(30).max(1))
}

/// The shared cache of `token`, if it has one, bound to the token's
/// configuration ([`Resolved::token_key`]): its reads outside a driver
/// (the direct `token` path, `login`) never adopt a record that another
/// configuration wrote under the same file or Redis key either.
pub fn cache(token: &Resolved) -> Result<Option<Arc<dyn TokenCache>>, ConfigError> {
    let Some(cache) = &token.config.cache else {
        return Ok(None);
    };
    let cache: Arc<dyn TokenCache> = if let Some(path) = &cache.file {
        Arc::new(FileCache::new(path.clone()))
    } else if let Some(url) = &token.redis_url {
        Arc::new(
            RedisCache::new(url.expose(), token.redis_key()).map_err(|e| ConfigError {
                key: format!("tokens.{}.cache", token.name),
                message: format!("cannot use the Redis cache: {e}"),
            })?,
        )
    } else {
        return Ok(None);
    };
    cache.bind_config(token.token_key().config_id());
    Ok(Some(cache))
}

/// A running driver for one token.
pub struct Running {
    /// Readers' handle.
    pub handle: TokenHandle,
    /// The driver's control.
    pub driver: DriverHandle,
}

/// Starts the blocking driver for `token`.
pub fn spawn(token: &Resolved, heartbeat: Duration) -> Result<Running, ConfigError> {
    let source = source(token)?;
    let mut builder = Builder::new()
        .heartbeat(heartbeat)
        .fetch_timeout(fetch_timeout(token))
        .thread_name(format!("freshtoken-{}", token.name))
        // The `refresher` label of the library's metrics.
        .name(token.name.clone());
    if let Some(cache) = cache(token)? {
        builder = builder.cache(cache);
    }
    let (handle, driver) = builder.spawn_thread(source).map_err(|e| ConfigError {
        key: format!("tokens.{}", token.name),
        message: format!("cannot start a thread: {e}"),
    })?;
    Ok(Running { handle, driver })
}

/// The wall clock now.
pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A token read from a cache worth handing out without asking anyone:
/// fresh (not stale). Its times were stamped by whoever stored it, so the
/// wall clock is all it can be judged by; a driver's token is judged by
/// [`status`], on both clocks.
pub fn fresh(token: &Token) -> bool {
    token.status(now()) == TokenStatus::Fresh
}

/// How a driver's current token stands at `now` (its handle's
/// [`TokenHandle::now`]), by both clocks: a wall clock stepped back never
/// makes an expired token look valid. `None` without a token.
pub fn status(snapshot: &Snapshot, now: Now) -> Option<TokenStatus> {
    snapshot.token.as_ref()?;
    Some(if !snapshot.is_valid_at(now) {
        TokenStatus::Expired
    } else if snapshot.is_stale_at(now) {
        TokenStatus::Stale
    } else {
        TokenStatus::Fresh
    })
}

/// Milliseconds until a driver's current token expires at `now`, by
/// whichever clock says sooner (negative once it has expired); `None`
/// without a token.
pub fn expires_in_ms(snapshot: &Snapshot, now: Now) -> Option<i64> {
    let token = snapshot.token.as_ref()?;
    let wall = token.expires_at().signed_millis_since(now.wall);
    let mono = snapshot.life.map(|life| {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if now.mono < life.expires_at {
            ms(life.expires_at.saturating_duration_since(now.mono))
        } else {
            -ms(now.mono.saturating_duration_since(life.expires_at))
        }
    });
    Some(mono.map_or(wall, |mono| wall.min(mono)))
}

/// `at` as an RFC 3339 time in UTC, to the millisecond
/// (`2026-12-06T09:12:00.123Z`).
pub fn rfc3339(at: Timestamp) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(at.as_millis());
    humantime::format_rfc3339_millis(time).to_string()
}

/// What the lifetime policy decided on the authority's behalf for the
/// current token ([`Snapshot::lifetime_note`]), for the status: a `kind`,
/// the figures, and a sentence that says why the token goes stale or
/// expires when it does (never a secret). `None` when the answer needed
/// no decision (or the token came from a cache).
///
/// The authority's refresh hint reads "stale at TIME because the
/// authority said refresh_in=N s"; when the hint was below the refresh
/// floor, the floor it was raised to is named (the token's fresh period).
pub fn lifetime_note(snapshot: &Snapshot) -> Option<serde_json::Value> {
    use freshtoken::handle::LifetimeNote;
    use serde_json::json;
    let note = snapshot.lifetime_note?;
    let token = snapshot.token.as_deref()?;
    Some(match note {
        LifetimeNote::RefreshHint { refresh_in } => {
            let fresh = token
                .stale_at()
                .saturating_duration_since(token.issued_at());
            // The hint, or the floor it was raised to, counted from the send.
            let fresh_s = (fresh.as_millis() as f64 / 1000.0).round() as i64;
            let mut text = format!(
                "stale at {} because the authority said refresh_in={refresh_in} s",
                rfc3339(token.stale_at())
            );
            if fresh_s > refresh_in {
                text.push_str(&format!(" (raised to the {fresh_s} s refresh floor)"));
            }
            json!({
                "kind": "refresh_hint",
                "refresh_in": refresh_in,
                "stale_after": fresh_s,
                "text": text,
            })
        }
        LifetimeNote::LifetimeFromJwt => json!({
            "kind": "lifetime_from_jwt",
            "text": format!(
                "no expires_in: expires at {} by the JWT's exp",
                rfc3339(token.expires_at())
            ),
        }),
        LifetimeNote::DefaultLifetime => json!({
            "kind": "default_lifetime",
            "text": format!(
                "no expires_in and no JWT exp: the default lifetime, {} s, was assumed",
                token.lifetime().as_secs()
            ),
        }),
        LifetimeNote::Clamped { given, used } => json!({
            "kind": "clamped",
            "given": given,
            "used": used,
            "text": format!("expires_in={given} s was out of range: {used} s was used"),
        }),
        LifetimeNote::JwtExpiryEarlier => json!({
            "kind": "jwt_expiry_earlier",
            "text": format!(
                "expires at {}: the JWT's exp is earlier than expires_in says",
                rfc3339(token.expires_at())
            ),
        }),
    })
}

/// Whether waiting can bring a token where `why` says there is none: not
/// once renewal failed for good or needs an operator (a wrong secret, a
/// revoked grant), nor when the authority's tokens never live as long as
/// asked.
pub fn may_come(why: &freshtoken::handle::NoValidToken) -> bool {
    use freshtoken::handle::NoValidToken;
    match why {
        NoValidToken::Failed { .. } | NoValidToken::Stopped => false,
        NoValidToken::NotValidLongEnough {
            needed, lifetime, ..
        } => lifetime >= needed,
        other => !other.last_error().is_some_and(|e| {
            matches!(
                e.kind(),
                freshtoken::FetchErrorKind::Permanent | freshtoken::FetchErrorKind::GrantRevoked
            )
        }),
    }
}

/// A number of seconds given on the command line or in a query
/// (`--min-validity 600`, `min_validity=1.5`): finite, not negative, at
/// most a year.
pub fn seconds(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && (0.0..=31_536_000.0).contains(&secs))
        .then(|| Duration::from_secs_f64(secs))
}

/// Why there is no valid token, as the library says it, with the expiry as
/// an RFC 3339 time rather than Unix seconds.
pub fn why_not(why: &freshtoken::handle::NoValidToken) -> String {
    match why {
        freshtoken::handle::NoValidToken::Expired {
            expired_at,
            last_error,
        } => {
            let mut text = format!("the token expired at {}", rfc3339(*expired_at));
            if let Some(e) = last_error {
                text.push_str(&format!(" (last error: {e})"));
            }
            text
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_finite_and_not_negative() {
        assert_eq!(seconds("600"), Some(Duration::from_secs(600)));
        assert_eq!(seconds(" 1.5"), Some(Duration::from_millis(1500)));
        for bad in ["", "-1", "NaN", "inf", "1e12", "10m"] {
            assert_eq!(seconds(bad), None, "{bad:?}");
        }
    }

    /// The direct path binds the cache to `Resolved::token_key`, the driver
    /// to its source's key: they must be one configuration, or the second
    /// binding would be refused with a warning.
    #[test]
    fn the_cache_binding_and_the_sources_key_agree() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            "[tokens.api]\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"a\"\n\
             scope = \"write  read\"\naudience = \"https://api\"\nresource = \"https://r\"\n\
             [tokens.api.cache]\nfile = \"api.json\"\n",
        )
        .unwrap();
        let env = vec![(
            "FRESHTOKEN_TOKENS_API_CLIENT_SECRET".to_owned(),
            "s3cret".to_owned(),
        )];
        let loaded = crate::config::load(Some(&cfg), &env).unwrap();
        let resolved = &loaded.tokens["api"];
        let key = resolved.token_key();
        assert_eq!(source(resolved).unwrap().token_key(), Some(key.clone()));
        assert_eq!(key.scope(), Some("read write"));
        assert_ne!(
            key.config_id(),
            freshtoken::TokenKey::new("a")
                .with_token_url("http://127.0.0.1:1/token")
                .config_id()
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(
            rfc3339(Timestamp::from_millis(1_796_540_566_095)),
            "2026-12-06T07:02:46.095Z"
        );
    }

    /// Each lifetime note says why in one sentence, with its figures; a
    /// token from a cache (no note) has none.
    #[test]
    fn lifetime_notes_say_why() {
        use freshtoken::handle::LifetimeNote;
        use freshtoken::AccessToken;
        use std::sync::Arc;

        let with = |note, stale_s: u64| {
            let mut snapshot = Snapshot::initial();
            snapshot.token = Some(Arc::new(Token::new(
                AccessToken::new("secret-at"),
                Timestamp::from_secs(1_796_540_000),
                Timestamp::from_secs(1_796_540_000 + stale_s),
                Timestamp::from_secs(1_796_543_600),
            )));
            snapshot.lifetime_note = note;
            lifetime_note(&snapshot)
        };
        assert_eq!(with(None, 2_700), None);
        let hint = with(Some(LifetimeNote::RefreshHint { refresh_in: 600 }), 600).unwrap();
        assert_eq!(
            hint["text"],
            "stale at 2026-12-06T07:03:20.000Z because the authority said refresh_in=600 s"
        );
        assert_eq!(
            (hint["refresh_in"].as_i64(), hint["stale_after"].as_i64()),
            (Some(600), Some(600))
        );
        let floor = with(Some(LifetimeNote::RefreshHint { refresh_in: 1 }), 5).unwrap();
        assert!(floor["text"]
            .as_str()
            .unwrap()
            .ends_with("refresh_in=1 s (raised to the 5 s refresh floor)"));
        let clamped = with(Some(LifetimeNote::Clamped { given: -5, used: 1 }), 2_700).unwrap();
        assert_eq!(
            clamped["text"],
            "expires_in=-5 s was out of range: 1 s was used"
        );
        for (note, kind) in [
            (LifetimeNote::LifetimeFromJwt, "lifetime_from_jwt"),
            (LifetimeNote::DefaultLifetime, "default_lifetime"),
            (LifetimeNote::JwtExpiryEarlier, "jwt_expiry_earlier"),
        ] {
            let shown = with(Some(note), 2_700).unwrap();
            assert_eq!(shown["kind"], kind);
            assert!(!shown.to_string().contains("secret-at"));
        }
    }

    /// A driver's token is judged by both clocks: after the wall clock
    /// was stepped back, the monotonic one says it has expired.
    #[test]
    fn status_and_expires_in_take_the_sooner_clock() {
        use freshtoken::clock::MonoTime;
        use freshtoken::proto::MonoLife;
        use freshtoken::AccessToken;
        use std::sync::Arc;

        let mut snapshot = Snapshot::initial();
        snapshot.token = Some(Arc::new(Token::new(
            AccessToken::new("at"),
            Timestamp::from_secs(1_000),
            Timestamp::from_secs(1_030),
            Timestamp::from_secs(1_060),
        )));
        snapshot.life = Some(MonoLife {
            stale_at: MonoTime::from_millis(30_000),
            expires_at: MonoTime::from_millis(60_000),
        });
        let at = |wall: u64, mono_s: u64| {
            Now::new(
                Timestamp::from_secs(wall),
                MonoTime::from_millis(mono_s * 1_000),
            )
        };
        assert_eq!(status(&snapshot, at(1_010, 10)), Some(TokenStatus::Fresh));
        assert_eq!(expires_in_ms(&snapshot, at(1_010, 10)), Some(50_000));
        // 40 s later, the wall clock stepped back 120 s.
        assert_eq!(status(&snapshot, at(930, 50)), Some(TokenStatus::Stale));
        assert_eq!(expires_in_ms(&snapshot, at(930, 50)), Some(10_000));
        assert_eq!(status(&snapshot, at(940, 70)), Some(TokenStatus::Expired));
        assert_eq!(expires_in_ms(&snapshot, at(940, 70)), Some(-10_000));
        assert_eq!(status(&Snapshot::initial(), at(940, 70)), None);
    }
}
