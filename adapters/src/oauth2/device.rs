//! The device authorization grant (RFC 8628): a user signs in on another
//! device (a browser), and a CLI or an agent gets their refresh token.
//!
//! [`DeviceLogin`] runs it; see its docs for the polling rules.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshtoken_core::oauth2::{
    parse_response, ClientAuth, FetchCredentials, GrantKind, HttpResponse, TokenRequest,
};
use freshtoken_core::{Assertion, ClientSecret, FetchError, FetchErrorKind, FetchRequest};
use freshtoken_core::{Clock, TokenResponse};

use super::transport::{default_http_transport, HttpTransport};
use super::url::{check_token_url, UrlError};
use crate::clock::SystemClock;

/// The polling interval when the authority names none (RFC 8628 3.2).
pub const DEFAULT_DEVICE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// What `slow_down` adds to the polling interval (RFC 8628 3.5).
pub const DEVICE_SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// The longest wait between two polls, whatever the authority asks for.
const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// The longest a device code is polled for, whatever the authority says.
const MAX_EXPIRES_IN: u64 = 24 * 3600;

/// Why a device login did not give a token.
///
/// Its `Display` never shows the device code or a token.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceLoginError {
    /// The user declined (or the authority refused) the request:
    /// `access_denied`.
    #[error("the sign-in was denied{}", suffix(.description))]
    AccessDenied {
        /// The authority's `error_description`, redacted.
        description: Option<String>,
    },
    /// The device code expired before the user approved it
    /// (`expired_token`, or its `expires_in` passed): start again.
    #[error("the device code expired before the sign-in was approved; start again")]
    Expired,
    /// The authority refused the request, or could not be reached.
    #[error("{0}")]
    Authority(FetchError),
    /// The device authorization answer is not what RFC 8628 3.2 says.
    #[error("the device authorization answer is unusable: {0}")]
    InvalidAnswer(&'static str),
}

fn suffix(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// What the user is to do, and the device code to poll with: the answer
/// to the device authorization request (RFC 8628 3.2).
///
/// `Debug` never shows the device code.
#[derive(Clone)]
pub struct DeviceAuthorization {
    device_code: Assertion,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: Duration,
    interval: Duration,
    received: Instant,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl DeviceAuthorization {
    /// The code the user enters at the verification URI.
    pub fn user_code(&self) -> &str {
        &self.user_code
    }

    /// Where the user goes to enter the code.
    pub fn verification_uri(&self) -> &str {
        &self.verification_uri
    }

    /// The verification URI with the code in it, when the authority gives
    /// one (for a link or a QR code).
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.verification_uri_complete.as_deref()
    }

    /// How long the codes were valid for when they arrived.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }

    /// The wait between two polls the authority asked for (5 s if it
    /// named none).
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// The device authorization grant (RFC 8628) for a public or confidential
/// client: [`start`](Self::start) asks for a device code and a user code,
/// the user enters the code at the verification URI, and
/// [`poll`](Self::poll) waits for their approval and returns the tokens.
///
/// Polling follows RFC 8628 3.5: at the authority's `interval` (5 s when it
/// names none); `authorization_pending` keeps polling, `slow_down` adds 5 s
/// to the interval for good, a network failure, a timeout or a 5xx doubles
/// it (up to 5 minutes), `access_denied` is
/// [`DeviceLoginError::AccessDenied`], and `expired_token` (or the code's
/// own `expires_in` passing) is [`DeviceLoginError::Expired`]. Any other
/// refusal (`invalid_client`, say) ends the login with the authority's
/// error.
///
/// Keep the refresh token of the answer where the refresh-token source's
/// driver finds it: [`RefreshTokenSource::builder`]'s
/// [`refresh_token`](super::SourceBuilder::refresh_token), from a file of
/// mode 0600 (the agent's `freshtoken login` writes the token's
/// `refresh_token_file`).
///
/// Both URLs must be https, or http to loopback ([`check_token_url`]).
///
/// ```no_run
/// use freshtoken::oauth2::device::DeviceLogin;
///
/// let login = DeviceLogin::builder(
///     "https://login.example.com/oauth2/device",
///     "https://login.example.com/oauth2/token",
///     "my-cli",
/// )
/// .scope("openid offline_access")
/// .build()?;
/// let started = login.start()?;
/// println!("Open {} and enter {}", started.verification_uri(), started.user_code());
/// let tokens = login.poll(&started)?;
/// let refresh_token = tokens.refresh_token.expect("asked for offline_access");
/// # let _ = refresh_token;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// [`RefreshTokenSource::builder`]: super::RefreshTokenSource::builder
pub struct DeviceLogin {
    request: TokenRequest,
    device_url: String,
    transport: Arc<dyn HttpTransport>,
}

impl fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceLogin")
            .field("request", &self.request)
            .field("device_url", &self.device_url)
            .finish_non_exhaustive()
    }
}

impl DeviceLogin {
    /// A builder for `client_id` (a public client unless a secret is
    /// given) at these endpoints: the device authorization endpoint
    /// (`device_authorization_endpoint` in the authority's metadata) and
    /// the token endpoint.
    pub fn builder(
        device_authorization_url: impl Into<String>,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
    ) -> DeviceLoginBuilder {
        DeviceLoginBuilder {
            request: TokenRequest::device_code(token_url, client_id),
            device_url: device_authorization_url.into(),
            transport: None,
        }
    }

    /// Sends the device authorization request (RFC 8628 3.1) and reads the
    /// codes from the answer.
    pub fn start(&self) -> Result<DeviceAuthorization, DeviceLoginError> {
        let http = self
            .request
            .build_device_authorization(&self.device_url, &FetchCredentials::new())
            .map_err(DeviceLoginError::Authority)?;
        let cap = self.request.response_size_cap();
        let response = self
            .transport
            .send(&http, cap)
            .map_err(DeviceLoginError::Authority)?;
        let received = Instant::now();
        if !(200..300).contains(&response.status()) || response.body().len() > cap {
            // The token endpoint's error format (RFC 8628 3.2 says so).
            let err = match parse_response(GrantKind::DeviceCode, &response, SystemClock.now(), cap)
            {
                Err(e) => e,
                Ok(_) => FetchError::permanent("the device authorization endpoint refused")
                    .with_status(response.status()),
            };
            return Err(DeviceLoginError::Authority(err));
        }
        read_authorization(&response, received)
    }

    /// Polls the token endpoint until the user approves or denies the
    /// request, or the code expires, sleeping between polls.
    pub fn poll(
        &self,
        authorization: &DeviceAuthorization,
    ) -> Result<TokenResponse, DeviceLoginError> {
        self.poll_with(authorization, std::thread::sleep)
    }

    /// [`poll`](Self::poll), with `wait` called with each wait before a
    /// poll (the interval in force) to do the waiting: to show progress
    /// while sleeping, or to check what the polling asks for in a test.
    pub fn poll_with(
        &self,
        authorization: &DeviceAuthorization,
        mut wait: impl FnMut(Duration),
    ) -> Result<TokenResponse, DeviceLoginError> {
        let deadline = authorization.received + authorization.expires_in;
        let mut interval = authorization.interval;
        let credentials = FetchCredentials::new().device_code(&authorization.device_code);
        let cap = self.request.response_size_cap();
        loop {
            if Instant::now() >= deadline {
                return Err(DeviceLoginError::Expired);
            }
            wait(interval);
            if Instant::now() >= deadline {
                return Err(DeviceLoginError::Expired);
            }
            let http = self
                .request
                .build_with(&FetchRequest::first(), &credentials)
                .map_err(DeviceLoginError::Authority)?;
            let answer = self
                .transport
                .send(&http, cap)
                .and_then(|response| self.request.parse(&response, SystemClock.now()));
            let error = match answer {
                Ok(tokens) => return Ok(tokens),
                Err(e) => e,
            };
            match error.error_code() {
                Some("authorization_pending") => {}
                Some("slow_down") => {
                    interval = (interval + DEVICE_SLOW_DOWN_STEP).min(MAX_INTERVAL);
                    tracing::debug!(?interval, "the authority asked to slow down");
                }
                Some("access_denied") => {
                    return Err(DeviceLoginError::AccessDenied {
                        description: description(&error),
                    })
                }
                Some("expired_token") => return Err(DeviceLoginError::Expired),
                _ if error.kind() == FetchErrorKind::Transient => {
                    interval = (interval * 2).min(MAX_INTERVAL);
                    tracing::debug!(error = %error, ?interval, "device login poll failed; backing off");
                }
                _ if error.kind() == FetchErrorKind::RateLimited => {
                    interval = interval
                        .max(error.retry_after().unwrap_or_default())
                        .min(MAX_INTERVAL);
                }
                _ => return Err(DeviceLoginError::Authority(error)),
            }
        }
    }
}

/// The authority's description of a refusal (the message after the code,
/// already redacted by the parser).
fn description(error: &FetchError) -> Option<String> {
    error
        .message()
        .split_once(": ")
        .map(|(_, d)| d.to_owned())
        .filter(|d| !d.is_empty())
}

/// Reads the device authorization answer (RFC 8628 3.2).
fn read_authorization(
    response: &HttpResponse,
    received: Instant,
) -> Result<DeviceAuthorization, DeviceLoginError> {
    use serde_json::Value;
    let invalid = DeviceLoginError::InvalidAnswer;
    let body: serde_json::Map<String, Value> =
        serde_json::from_slice(response.body()).map_err(|_| invalid("it is not a JSON object"))?;
    let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::trim);
    let seconds = |name: &str| match body.get(name) {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    let device_code = text("device_code")
        .filter(|c| !c.is_empty())
        .ok_or(invalid("no device_code"))?;
    let user_code = text("user_code")
        .filter(|c| !c.is_empty() && c.len() <= 64 && !c.chars().any(char::is_control))
        .ok_or(invalid("no user_code, or one that cannot be shown"))?;
    // Google's endpoint says `verification_url`.
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .filter(|u| showable_url(u))
        .ok_or(invalid("no http(s) verification_uri"))?;
    let complete = match text("verification_uri_complete") {
        Some(u) if showable_url(u) => Some(u.to_owned()),
        Some(_) => return Err(invalid("verification_uri_complete is not an http(s) URL")),
        None => None,
    };
    let expires_in = seconds("expires_in")
        .filter(|s| *s > 0)
        .ok_or(invalid("no positive expires_in"))?
        .min(MAX_EXPIRES_IN);
    let interval = match seconds("interval") {
        // An interval of 0 would poll as fast as the network allows.
        Some(s) => Duration::from_secs(s.max(1)).min(MAX_INTERVAL),
        None => DEFAULT_DEVICE_POLL_INTERVAL,
    };
    Ok(DeviceAuthorization {
        device_code: Assertion::new(device_code.to_owned()),
        user_code: user_code.to_owned(),
        verification_uri: verification_uri.to_owned(),
        verification_uri_complete: complete,
        expires_in: Duration::from_secs(expires_in),
        interval,
        received,
    })
}

/// An http(s) URL that is safe to print on a terminal: no whitespace or
/// control characters (an escape sequence would rewrite the screen).
fn showable_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Builds a [`DeviceLogin`].
#[must_use]
pub struct DeviceLoginBuilder {
    request: TokenRequest,
    device_url: String,
    transport: Option<Arc<dyn HttpTransport>>,
}

impl fmt::Debug for DeviceLoginBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceLoginBuilder")
            .field("request", &self.request)
            .field("device_url", &self.device_url)
            .finish_non_exhaustive()
    }
}

impl DeviceLoginBuilder {
    fn map(mut self, f: impl FnOnce(TokenRequest) -> TokenRequest) -> Self {
        self.request = f(self.request);
        self
    }

    /// A confidential client's secret, sent with `client_secret_basic`
    /// unless [`client_auth`](Self::client_auth) says `Post`.
    pub fn client_secret(self, secret: impl Into<ClientSecret>) -> Self {
        let secret = secret.into();
        self.map(|r| {
            let auth = match r.auth_method() {
                ClientAuth::None => ClientAuth::Basic,
                other => other,
            };
            r.client_secret(Some(secret)).client_auth(auth)
        })
    }

    /// How the client authenticates: [`ClientAuth::None`] (a public
    /// client, the default), `Basic` or `Post` with the secret.
    pub fn client_auth(self, auth: ClientAuth) -> Self {
        self.map(|r| r.client_auth(auth))
    }

    /// The scope to ask for (`offline_access` for a refresh token, with
    /// OpenID Connect authorities).
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.map(|r| r.scope(scope))
    }

    /// The `audience` parameter.
    pub fn audience(self, audience: impl Into<String>) -> Self {
        self.map(|r| r.audience(audience))
    }

    /// A `resource` indicator (RFC 8707); may be given several times.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.map(|r| r.resource(resource))
    }

    /// Another parameter of the device authorization request.
    pub fn param(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.map(|r| r.param(name, value))
    }

    /// Sends through this HTTP client instead of the default one (ureq's,
    /// with the `ureq-transport` feature).
    pub fn transport(mut self, transport: impl HttpTransport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Checks both URLs and the client authentication, and builds.
    pub fn build(self) -> Result<DeviceLogin, UrlError> {
        check_token_url(&self.device_url)?;
        check_token_url(self.request.url())?;
        Ok(DeviceLogin {
            request: self.request,
            device_url: self.device_url,
            transport: self.transport.unwrap_or_else(default_http_transport),
        })
    }
}

/// What [`DeviceLogin::start`] sends, as text.
#[cfg(test)]
fn start_body(login: &DeviceLogin) -> String {
    let http = login
        .request
        .build_device_authorization(&login.device_url, &FetchCredentials::new())
        .unwrap();
    String::from_utf8(http.body().to_vec()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Result<DeviceAuthorization, DeviceLoginError> {
        read_authorization(
            &HttpResponse::new(200, vec![], body.as_bytes().to_vec()),
            Instant::now(),
        )
    }

    #[test]
    fn the_answer_is_read_as_rfc_8628_says() {
        let a = answer(
            r#"{"device_code":"GmRh-secret","user_code":"WDJB-MJHT","verification_uri":"https://example.com/device",
               "verification_uri_complete":"https://example.com/device?user_code=WDJB-MJHT","expires_in":"1800","interval":7}"#,
        )
        .unwrap();
        assert_eq!(a.user_code(), "WDJB-MJHT");
        assert_eq!(a.verification_uri(), "https://example.com/device");
        assert_eq!(
            a.verification_uri_complete(),
            Some("https://example.com/device?user_code=WDJB-MJHT")
        );
        assert_eq!(a.expires_in(), Duration::from_secs(1800));
        assert_eq!(a.interval(), Duration::from_secs(7));
        assert!(!format!("{a:?}").contains("GmRh-secret"));
        // No interval: 5 s; Google's verification_url is accepted.
        let a = answer(
            r#"{"device_code":"d","user_code":"U","verification_url":"https://www.google.com/device","expires_in":600}"#,
        )
        .unwrap();
        assert_eq!(a.interval(), DEFAULT_DEVICE_POLL_INTERVAL);
        // Interval 0 would poll flat out: at least a second.
        let a = answer(
            r#"{"device_code":"d","user_code":"U","verification_uri":"http://127.0.0.1:9/device","expires_in":600,"interval":0}"#,
        )
        .unwrap();
        assert_eq!(a.interval(), Duration::from_secs(1));
    }

    #[test]
    fn an_unusable_answer_is_a_typed_error() {
        for bad in [
            "not json",
            r#"{"user_code":"U","verification_uri":"https://e/d","expires_in":600}"#,
            r#"{"device_code":"d","verification_uri":"https://e/d","expires_in":600}"#,
            r#"{"device_code":"d","user_code":"U\u001b[2J","verification_uri":"https://e/d","expires_in":600}"#,
            r#"{"device_code":"d","user_code":"U","verification_uri":"javascript:alert(1)","expires_in":600}"#,
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://e/d\u001b]","expires_in":600}"#,
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://e/d"}"#,
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://e/d","expires_in":0}"#,
        ] {
            let e = answer(bad).unwrap_err();
            assert!(
                matches!(e, DeviceLoginError::InvalidAnswer(_)),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_start_request_carries_the_scope_and_a_confidential_client_authenticates() {
        let login = DeviceLogin::builder(
            "http://127.0.0.1:9/device",
            "http://127.0.0.1:9/token",
            "cli",
        )
        .scope("openid offline_access")
        .build()
        .unwrap();
        assert_eq!(
            start_body(&login),
            "scope=openid+offline_access&client_id=cli"
        );
        let login = DeviceLogin::builder(
            "http://127.0.0.1:9/device",
            "http://127.0.0.1:9/token",
            "tv",
        )
        .client_secret("s3cret")
        .client_auth(ClientAuth::Post)
        .build()
        .unwrap();
        assert_eq!(start_body(&login), "client_id=tv&client_secret=s3cret");
        assert!(!format!("{login:?}").contains("s3cret"));
        assert!(
            DeviceLogin::builder("http://10.0.0.1/device", "https://a/token", "c")
                .build()
                .is_err()
        );
    }
}
