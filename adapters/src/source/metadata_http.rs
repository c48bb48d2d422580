//! What the cloud identity sources share: the plain-http rule for their
//! endpoints, the transport that talks to them and the answer handling.
//!
//! # Plain http, and to where
//!
//! The OAuth2 sources send only over https (or plain http to loopback, for
//! local test authorities): [`check_token_url`](crate::oauth2::check_token_url)
//! is their rule and [`UreqTransport`](crate::oauth2::UreqTransport) applies
//! it again before each request. The identity endpoints of the clouds are
//! plain http by design: they live on a link-local address (169.254.169.254)
//! that no router forwards, so the request never leaves the host and its
//! hypervisor. A cloud source is therefore allowed plain http to exactly the
//! host its protocol documents, and to loopback (where tests and emulators
//! run), and nowhere else:
//!
//! | source | plain http allowed to |
//! | --- | --- |
//! | [`GcpMetadata`](super::GcpMetadata) | `169.254.169.254` and `metadata.google.internal` (port 80), loopback |
//! | [`AzureManagedIdentity`](super::AzureManagedIdentity) | `169.254.169.254` (port 80), loopback |
//! | [`AppServiceIdentity`](super::AppServiceIdentity) | a link-local IPv4 address (169.254.0.0/16, any port), loopback |
//!
//! (App Service and Functions set `IDENTITY_ENDPOINT` to a local endpoint of
//! their own choosing, on loopback or a link-local address.) Any other host
//! over plain http is refused when the source is built, and the built-in
//! transport checks the URL it connects to again. https is accepted for any
//! host. The built-in transport never goes through a proxy (the metadata
//! services refuse proxied requests, and `HTTP_PROXY` must not see the
//! token), follows no redirects and reads at most 64 KiB.

use std::io::Read;
use std::net::Ipv4Addr;
use std::time::Duration;

use freshtoken_core::oauth2::{
    parse_response, uri_has_loopback_host, GrantKind, HttpRequest, HttpResponse,
};
use freshtoken_core::{Clock, FetchError, FetchErrorKind, Timestamp, TokenResponse};

use crate::clock::SystemClock;
use crate::oauth2::HttpTransport;

/// The largest answer read from an identity endpoint.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The default connect timeout of the built-in transport: the endpoints
/// are on this host's link, so a connection that takes longer than this
/// is not coming (not running on that cloud).
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default overall timeout of the built-in transport (the endpoint may
/// have to ask the cloud's token service first).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a cloud identity source could not be built.
///
/// Its `Display` never shows a secret (the App Service identity header) nor
/// a URL's user-info or query.
///
/// ```
/// use freshtoken::source::{AzureManagedIdentity, CloudIdentityError};
///
/// let err = AzureManagedIdentity::builder("https://vault.azure.net")
///     .endpoint("http://10.0.0.7/metadata/identity/oauth2/token")
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, CloudIdentityError::Insecure { .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloudIdentityError {
    /// Not an absolute `http://` or `https://` URL with a host.
    #[error("invalid identity endpoint URL: {reason}")]
    Invalid {
        /// What is wrong.
        reason: &'static str,
    },
    /// Plain http to a host that the protocol does not document.
    #[error(
        "refusing plain http to {host}: this source sends tokens over plain http only to \
         {allowed} or a loopback address"
    )]
    Insecure {
        /// The host that was named.
        host: String,
        /// The hosts the protocol documents.
        allowed: &'static str,
    },
    /// An environment variable the platform sets is missing.
    #[error("{name} is not set (it is set by the platform where this identity is available)")]
    MissingEnvironment {
        /// The variable.
        name: &'static str,
    },
    /// A parameter cannot be used.
    #[error("invalid {what}: {reason}")]
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Where a source may send plain http (besides loopback, always allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostRule {
    /// These host names or addresses, on port 80.
    Exact {
        hosts: &'static [&'static str],
        /// The hosts as the error message names them.
        described: &'static str,
    },
    /// Any IPv4 link-local address (169.254.0.0/16), any port.
    LinkLocal,
}

impl HostRule {
    fn described(self) -> &'static str {
        match self {
            HostRule::Exact { described, .. } => described,
            HostRule::LinkLocal => "a link-local address (169.254.0.0/16)",
        }
    }

    /// Parses `url` and checks it: https to any host, plain http to the
    /// rule's hosts or loopback.
    pub(crate) fn check(self, url: &str) -> Result<ureq::http::Uri, CloudIdentityError> {
        let uri: ureq::http::Uri = url.parse().map_err(|_| CloudIdentityError::Invalid {
            reason: "it is not a valid absolute URL",
        })?;
        let scheme = uri.scheme_str().ok_or(CloudIdentityError::Invalid {
            reason: "it has no scheme",
        })?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or(CloudIdentityError::Invalid {
                reason: "it has no host",
            })?;
        if scheme.eq_ignore_ascii_case("https") {
            return Ok(uri);
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(CloudIdentityError::Invalid {
                reason: "the scheme must be http or https",
            });
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(CloudIdentityError::Invalid {
                reason: "it must not carry credentials",
            });
        }
        if uri_has_loopback_host(&uri) {
            return Ok(uri);
        }
        let allowed = match self {
            HostRule::Exact { hosts, .. } => {
                hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
                    && uri.port_u16().is_none_or(|p| p == 80)
            }
            HostRule::LinkLocal => host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_link_local()),
        };
        if allowed {
            Ok(uri)
        } else {
            Err(CloudIdentityError::Insecure {
                host: host.to_owned(),
                allowed: self.described(),
            })
        }
    }
}

/// The built-in transport of the cloud sources: ureq, plain http allowed
/// by the source's [`HostRule`] only, never a proxy, no redirects, short
/// timeouts. (The OAuth2 [`UreqTransport`](crate::oauth2::UreqTransport)
/// refuses plain http beyond loopback, as it must for token endpoints.)
pub(crate) struct MetadataTransport {
    agent: ureq::Agent,
    rule: HostRule,
}

impl MetadataTransport {
    pub(crate) fn new(rule: HostRule, connect_timeout: Duration, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(connect_timeout))
            .timeout_global(Some(timeout))
            .user_agent(concat!("freshtoken/", env!("CARGO_PKG_VERSION")))
            .proxy(None)
            .build();
        MetadataTransport {
            agent: config.new_agent(),
            rule,
        }
    }
}

impl HttpTransport for MetadataTransport {
    fn send(&self, request: &HttpRequest, max_body: usize) -> Result<HttpResponse, FetchError> {
        // The URI checked is the URI connected to.
        let uri = self
            .rule
            .check(request.url())
            .map_err(|e| FetchError::permanent(e.to_string()))?;
        if request.method() != "GET" {
            return Err(FetchError::permanent(
                "the identity endpoint transport sends GET requests only",
            ));
        }
        let mut builder = self.agent.get(uri).header("Connection", "close");
        if let Some(waited) = request.timeout() {
            // Give up a little before the machine stops waiting.
            let below = waited
                .saturating_sub((waited / 20).max(Duration::from_millis(200)))
                .max(Duration::from_millis(100));
            builder = builder.config().timeout_global(Some(below)).build();
        }
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        let response = builder.call().map_err(transport_error)?;
        let (parts, body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut bytes = Vec::new();
        let limit = u64::try_from(max_body)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        body.into_reader()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                FetchError::transient(format!(
                    "reading the identity endpoint's answer failed: {e}"
                ))
                .with_status(parts.status.as_u16())
            })?;
        Ok(HttpResponse::new(parts.status.as_u16(), headers, bytes))
    }
}

/// A ureq failure as a fetch error; none of them quotes the request's
/// headers (the App Service identity header is a secret).
fn transport_error(e: ureq::Error) -> FetchError {
    use ureq::Error as E;
    match e {
        E::Timeout(t) => FetchError::transient(format!("the identity endpoint timed out ({t})")),
        E::HostNotFound => FetchError::transient(
            "the identity endpoint's host was not found (not running on this cloud?)",
        ),
        E::ConnectionFailed => FetchError::transient(
            "could not connect to the identity endpoint (not running on this cloud?)",
        ),
        E::Io(io) => FetchError::transient(format!(
            "network error talking to the identity endpoint: {}",
            io.kind()
        )),
        E::Protocol(err) => FetchError::transient(format!("HTTP protocol error: {err}")),
        other => {
            tracing::debug!(error = %other, "identity endpoint request failed in the HTTP client");
            FetchError::transient("the HTTP client failed to send the identity request")
        }
    }
}

/// What one protocol says about an answer that is not a success.
pub(crate) struct Refusal {
    /// The kind the protocol gives the status.
    pub(crate) kind: FetchErrorKind,
    /// The shortest wait before asking again that the protocol asks for
    /// (a `Retry-After` from the answer is kept when it is longer).
    pub(crate) retry_after: Option<Duration>,
    /// What the status means under this protocol, for the message.
    pub(crate) meaning: Option<&'static str>,
}

/// Sends `request` and reads the answer: a success through the OAuth2
/// parser (size cap, required `access_token`, numeric strings, redaction,
/// the `Date` header), then `accept`; a failure with its message from the
/// parser and its kind from `refuse`.
pub(crate) fn exchange(
    transport: &dyn HttpTransport,
    request: &HttpRequest,
    refuse: impl Fn(u16) -> Refusal,
    accept: impl FnOnce(&HttpResponse, TokenResponse, Timestamp) -> Result<TokenResponse, FetchError>,
) -> Result<TokenResponse, FetchError> {
    let response = transport.send(request, MAX_ANSWER_BYTES)?;
    let now = SystemClock.now();
    let status = response.status();
    let parsed = parse_response(
        GrantKind::ClientCredentials,
        &response,
        now,
        MAX_ANSWER_BYTES,
    );
    if (200..300).contains(&status) {
        return accept(&response, parsed?, now);
    }
    let refusal = refuse(status);
    let error = match parsed {
        Err(e) => e,
        // A token in an error answer is not taken.
        Ok(_) => FetchError::permanent("the identity endpoint answered an error with a token")
            .with_status(status),
    };
    let mut message = error.message().to_owned();
    if let Some(meaning) = refusal.meaning {
        message = format!("{meaning}; {message}");
    }
    let retry_after = match (error.retry_after(), refusal.retry_after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Err(FetchError::new(refusal.kind, message)
        .with_status(status)
        .with_retry_after(retry_after)
        .with_error_code(error.error_code().map(str::to_owned)))
}

/// Reads `expires_on` (seconds since the epoch, as a number or a numeric
/// string, as Azure sends it) from a JSON answer, as the seconds left at
/// `now`. `None` when it is absent or unreadable.
pub(crate) fn expires_on_as_expires_in(body: &[u8], now: Timestamp) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct ExpiresOn {
        expires_on: Option<serde_json::Value>,
    }
    let parsed: ExpiresOn = serde_json::from_slice(body).ok()?;
    let secs = match parsed.expires_on? {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    Some(secs.saturating_sub(now_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCE: HostRule = HostRule::Exact {
        hosts: &["169.254.169.254", "metadata.google.internal"],
        described: "the metadata server",
    };

    #[test]
    fn plain_http_only_to_the_documented_host_or_loopback() {
        for ok in [
            "http://169.254.169.254/computeMetadata/v1/x",
            "http://169.254.169.254:80/x",
            "http://METADATA.google.internal/x",
            "http://127.0.0.1:8080/x",
            "http://[::1]:9/x",
            "http://localhost:9/x",
            "https://metadata.example.com/x",
        ] {
            assert!(GCE.check(ok).is_ok(), "{ok}");
        }
        for insecure in [
            "http://169.254.169.254:8080/x",
            "http://169.254.169.253/x",
            "http://metadata.google.internal.example.com/x",
            "http://10.0.0.1/x",
        ] {
            assert!(
                matches!(
                    GCE.check(insecure),
                    Err(CloudIdentityError::Insecure { .. })
                ),
                "{insecure}"
            );
        }
        for invalid in [
            "ftp://169.254.169.254/x",
            "169.254.169.254/x",
            "http://user:pw@127.0.0.1/x",
        ] {
            let err = GCE.check(invalid).unwrap_err();
            assert!(
                matches!(err, CloudIdentityError::Invalid { .. }),
                "{invalid}"
            );
            assert!(!err.to_string().contains("pw"));
        }
        let link = HostRule::LinkLocal;
        assert!(link.check("http://169.254.129.3:8081/msi/token").is_ok());
        assert!(link.check("http://127.0.0.1:41741/MSI/token/").is_ok());
        assert!(matches!(
            link.check("http://172.17.0.1:8081/msi/token"),
            Err(CloudIdentityError::Insecure { .. })
        ));
    }

    #[test]
    fn expires_on_is_read_as_the_seconds_left() {
        let now = Timestamp::from_secs(1_700_000_000);
        let read = |body: &str| expires_on_as_expires_in(body.as_bytes(), now);
        assert_eq!(read(r#"{"expires_on":"1700003600"}"#), Some(3600));
        assert_eq!(read(r#"{"expires_on":1700000090}"#), Some(90));
        // Already past: negative, which the lifetime policy treats as
        // degenerate rather than as a long life.
        assert_eq!(read(r#"{"expires_on":"1699999990"}"#), Some(-10));
        assert_eq!(read(r#"{"expires_on":"06/20/2019 02:57:58 +00:00"}"#), None);
        assert_eq!(read(r#"{"access_token":"x"}"#), None);
        assert_eq!(read("not json"), None);
    }
}
