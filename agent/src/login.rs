//! `freshtoken login NAME`: the device authorization grant (RFC 8628) for
//! a token whose grant is `refresh_token`.
//!
//! It asks the token's `device_authorization_url` for a code, shows the
//! verification URI and the user code (and the complete URI when the
//! authority gives one), polls the token endpoint as
//! [`DeviceLogin`] does (the
//! authority's interval, `slow_down` +5 s), and when the user has approved
//! it stores the refresh token where the agent reads it:
//!
//! * the token's `refresh_token_file`, written atomically (a temporary file
//!   of mode 0600 in the same directory, renamed over the old one, so it is
//!   never readable by others and a symlink at the path is replaced, not
//!   followed);
//! * the token's cache, with the access token that came with it, marked as
//!   a later generation than any refresh token the cache holds: an agent or
//!   a `freshtoken token` then uses the new grant, not one a previous login
//!   left there.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use freshtoken::oauth2::device::DeviceLogin;
use freshtoken::oauth2::ClientAuth;
use freshtoken::policy::LifetimePolicy;
use freshtoken::{ClientSecret, Clock, SystemClock, Token};

use crate::config::{self, ConfigError, Grant, Resolved};
use crate::{config_failure, EXIT_FAILURE, EXIT_NO_SUCH_TOKEN, EXIT_OK};

/// Runs the login for token `name` of the configuration at `path`;
/// returns the exit code. Instructions go to `out`, failures to stderr.
pub fn run(name: &str, path: Option<&Path>, out: &mut dyn Write) -> i32 {
    let loaded = match config::load_for_login(path, &config::process_env(), name) {
        Ok(l) => l,
        Err(e) => return config_failure(&e),
    };
    let Some(token) = loaded.tokens.get(name) else {
        eprintln!("freshtoken: no token named {name} in the configuration");
        return EXIT_NO_SUCH_TOKEN;
    };
    let (login, file) = match prepare(token) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    let started = match login.start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("freshtoken: login for {name} failed: {e}");
            return EXIT_FAILURE;
        }
    };
    let mut text = format!(
        "Sign in at: {}\nCode: {}\n",
        started.verification_uri(),
        started.user_code()
    );
    if let Some(complete) = started.verification_uri_complete() {
        text.push_str(&format!("Or open: {complete}\n"));
    }
    text.push_str(&format!(
        "Waiting for the sign-in (the code expires in {} s)...\n",
        started.expires_in().as_secs()
    ));
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    let answer = match login.poll(&started) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("freshtoken: login for {name} failed: {e}");
            return EXIT_FAILURE;
        }
    };
    let Some(refresh_token) = answer.refresh_token.clone() else {
        eprintln!(
            "freshtoken: the authority gave no refresh token for {name} (ask for it in \
             `scope`, e.g. offline_access)"
        );
        return EXIT_FAILURE;
    };
    let content = format!("{}\n", refresh_token.expose_secret());
    if let Err(e) = crate::sink::write_atomic(file, content.as_bytes(), 0o600, None, None) {
        eprintln!(
            "freshtoken: cannot write the refresh token to {}: {e}",
            file.display()
        );
        return EXIT_FAILURE;
    }
    if let Err(message) = store_in_cache(token, &answer) {
        eprintln!("freshtoken: {message}");
        return EXIT_FAILURE;
    }
    let _ = writeln!(
        out,
        "Signed in: the refresh token of {name} is in {}",
        file.display()
    );
    EXIT_OK
}

/// The device login for `token` and the file its refresh token goes to.
fn prepare(token: &Resolved) -> Result<(DeviceLogin, &Path), ConfigError> {
    let key = |k: &str| format!("tokens.{}.{k}", token.name);
    let c = &token.config;
    if token.grant != Grant::RefreshToken {
        return Err(ConfigError {
            key: key("grant"),
            message: "login is for tokens with grant = \"refresh_token\"".to_owned(),
        });
    }
    let file = c.refresh_token_file.as_deref().ok_or_else(|| ConfigError {
        key: key("refresh_token_file"),
        message: "missing: login writes the refresh token to refresh_token_file".to_owned(),
    })?;
    let device_url = c
        .device_authorization_url
        .clone()
        .ok_or_else(|| ConfigError {
            key: key("device_authorization_url"),
            message: "missing: login needs the authority's device authorization endpoint"
                .to_owned(),
        })?;
    if c.client_assertion_file.is_some() {
        return Err(ConfigError {
            key: key("client_assertion_file"),
            message: "login supports public clients and client secrets only".to_owned(),
        });
    }
    let mut builder =
        DeviceLogin::builder(device_url, token.token_url.clone(), token.client_id.clone());
    if let Some(secret) = &token.client_secret {
        builder = builder.client_secret(ClientSecret::new(secret.expose()));
        if c.client_auth.as_deref() == Some("post") {
            builder = builder.client_auth(ClientAuth::Post);
        }
    }
    if let Some(scope) = &c.scope {
        builder = builder.scope(scope.clone());
    }
    if let Some(audience) = &c.audience {
        builder = builder.audience(audience.clone());
    }
    if let Some(resource) = &c.resource {
        builder = builder.resource(resource.clone());
    }
    let login = builder.build().map_err(|e| ConfigError {
        key: key("device_authorization_url"),
        message: e.to_string(),
    })?;
    Ok((login, file))
}

/// Stores the login's tokens in the token's cache (if it has one), a
/// generation above whatever the cache holds.
fn store_in_cache(
    token: &Resolved,
    answer: &freshtoken::source::TokenResponse,
) -> Result<(), String> {
    let cache = match crate::tokens::cache(token) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("cannot open the cache of {}: {e}", token.name)),
    };
    let generation = match cache.load() {
        Ok(Some(held)) => held.generation().saturating_add(1),
        // Nothing there, or nothing readable: the configured refresh token
        // (generation 0) would lose to any cached one, so start above it.
        _ => 1,
    };
    let now = SystemClock.now();
    let life = Duration::from_secs(
        answer
            .expires_in
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(300)
            .max(1),
    );
    let (stale_at, expires_at) = LifetimePolicy::default().times(now, life);
    let stored = Token::new(answer.access_token.clone(), now, stale_at, expires_at)
        .with_token_type(answer.token_type.clone())
        .with_refresh_token(answer.refresh_token.clone())
        .with_scope(answer.scope.clone())
        .with_generation(generation);
    cache.store(&stored).map_err(|e| {
        format!(
            "the refresh token of {} was written, but storing it in the cache failed: {e}",
            token.name
        )
    })
}
