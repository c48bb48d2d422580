//! Tokens from the Google Compute Engine / GKE metadata server.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::oauth2::{form, HttpRequest};
use freshtoken_core::{FetchError, FetchErrorKind, FetchRequest, TokenResponse};

use super::metadata_http::{
    exchange, CloudIdentityError, HostRule, MetadataTransport, Refusal, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
};
use super::TokenSource;
use crate::oauth2::HttpTransport;

/// The metadata server's address when `GCE_METADATA_HOST` is not set (the
/// address, rather than `metadata.google.internal`, needs no DNS).
pub const GCE_METADATA_DEFAULT_HOST: &str = "169.254.169.254";

/// The environment variable that overrides the metadata server's
/// `host[:port]`, as Google's client libraries read it.
pub const GCE_METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";

const GCE_HOSTS: HostRule = HostRule::Exact {
    hosts: &["169.254.169.254", "metadata.google.internal"],
    described: "169.254.169.254 or metadata.google.internal (port 80)",
};

/// Access tokens for a service account of the Compute Engine instance, GKE
/// pod (workload identity), Cloud Run service or Cloud Functions function
/// this runs on, from its metadata server.
///
/// The protocol, as Google documents it: `GET
/// http://{host}/computeMetadata/v1/instance/service-accounts/{account}/token`
/// with the header `Metadata-Flavor: Google` (the server refuses requests
/// without it, and requests that carry `X-Forwarded-For`, with 403), an
/// optional `scopes` query parameter (comma-separated) and `{account}`
/// `default` or the service account's email. The answer is
/// `{"access_token", "expires_in", "token_type"}`; `expires_in` is what is
/// left of the token's life, which is less than an hour when the server
/// hands out a token it cached. The answer must carry `Metadata-Flavor:
/// Google` too: an answer without it came from something else at that
/// address and is refused.
///
/// Failures: 429 is a rate limit (the server limits each VM), 408 and 5xx
/// are transient (a GKE metadata server that is still starting answers
/// 5xx), 404 (no such service account on this instance) and other 4xx are
/// permanent, retried at the long interval in case the account is added.
/// A `Retry-After` is respected. When the server keeps handing back the
/// token it already gave, it is asked again only as that token's remaining
/// life allows (see the [module docs](super#cloud-identity-endpoints)).
///
/// The host is `GCE_METADATA_HOST` when set (`host[:port]`, as Google's
/// libraries read it), else 169.254.169.254; plain http goes only to
/// 169.254.169.254, `metadata.google.internal` or a loopback address.
///
/// ```
/// use freshtoken::source::GcpMetadata;
///
/// let source = GcpMetadata::builder()
///     .service_account("reports@my-project.iam.gserviceaccount.com")
///     .scopes(["https://www.googleapis.com/auth/devstorage.read_only"])
///     .build()?;
/// assert!(source.url().ends_with(
///     "/service-accounts/reports@my-project.iam.gserviceaccount.com/token\
///      ?scopes=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdevstorage.read_only"
/// ));
/// # Ok::<_, freshtoken::source::CloudIdentityError>(())
/// ```
pub struct GcpMetadata {
    url: String,
    transport: Arc<dyn HttpTransport>,
}

impl fmt::Debug for GcpMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpMetadata")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl GcpMetadata {
    /// A builder for the `default` service account, no scopes (the
    /// instance's own), the host from `GCE_METADATA_HOST` or
    /// 169.254.169.254.
    pub fn builder() -> GcpMetadataBuilder {
        GcpMetadataBuilder {
            host: None,
            account: "default".to_owned(),
            scopes: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            transport: None,
        }
    }

    /// The URL this source asks.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl TokenSource for GcpMetadata {
    fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        let request = HttpRequest::get(self.url.clone())
            .with_header("Metadata-Flavor", "Google")
            .with_timeout(Some(fetch.timeout));
        exchange(
            &*self.transport,
            &request,
            refusal,
            |response, answer, _| {
                if response
                    .header("metadata-flavor")
                    .is_some_and(|v| v.trim() == "Google")
                {
                    Ok(answer)
                } else {
                    Err(FetchError::permanent(
                        "the answer lacks `Metadata-Flavor: Google`: something other than the \
                     metadata server answered",
                    )
                    .with_status(response.status()))
                }
            },
        )
    }
}

fn refusal(status: u16) -> Refusal {
    let (kind, meaning) = match status {
        429 => (
            FetchErrorKind::RateLimited,
            Some("the metadata server is rate limiting this instance"),
        ),
        408 | 500..=599 => (FetchErrorKind::Transient, None),
        404 => (
            FetchErrorKind::Permanent,
            Some("no such service account on this instance (or none attached)"),
        ),
        403 => (
            FetchErrorKind::Permanent,
            Some("the metadata server refused the request (a missing Metadata-Flavor header, or a proxy in the way)"),
        ),
        _ => (FetchErrorKind::Permanent, None),
    };
    Refusal {
        kind,
        retry_after: None,
        meaning,
    }
}

/// Builds a [`GcpMetadata`].
#[must_use]
pub struct GcpMetadataBuilder {
    host: Option<String>,
    account: String,
    scopes: Vec<String>,
    connect_timeout: Duration,
    timeout: Duration,
    transport: Option<Arc<dyn HttpTransport>>,
}

impl fmt::Debug for GcpMetadataBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpMetadataBuilder")
            .field("host", &self.host)
            .field("account", &self.account)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl GcpMetadataBuilder {
    /// Asks for this service account (its email, or `default`).
    pub fn service_account(mut self, account: impl Into<String>) -> Self {
        self.account = account.into();
        self
    }

    /// Asks for these OAuth2 scopes (only for accounts whose instance
    /// allows them; by default the instance's own scopes apply).
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The metadata server's `host[:port]`, instead of `GCE_METADATA_HOST`
    /// or 169.254.169.254 (a loopback address for an emulator or a test).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The built-in transport's connect timeout (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The built-in transport's overall timeout (default 20 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends through another HTTP client (the plain-http rule is then that
    /// client's to apply; the URL is still checked when building).
    pub fn transport(mut self, transport: impl HttpTransport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Checks the host and the account and builds the source.
    pub fn build(self) -> Result<GcpMetadata, CloudIdentityError> {
        let host = match self.host {
            Some(h) => h,
            None => std::env::var(GCE_METADATA_HOST_ENV)
                .ok()
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| GCE_METADATA_DEFAULT_HOST.to_owned()),
        };
        let host = host.trim();
        if host.is_empty()
            || host.contains(['/', '?', '#', '@'])
            || host.contains(char::is_whitespace)
        {
            return Err(CloudIdentityError::InvalidParameter {
                what: "metadata host",
                reason: "expected host[:port]",
            });
        }
        let account = self.account.trim();
        let valid = !account.is_empty()
            && account
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b));
        if !valid {
            return Err(CloudIdentityError::InvalidParameter {
                what: "service account",
                reason: "expected `default` or an email address",
            });
        }
        let mut url =
            format!("http://{host}/computeMetadata/v1/instance/service-accounts/{account}/token");
        if !self.scopes.is_empty() {
            let scopes = self.scopes.join(",");
            url.push('?');
            url.push_str(&form::encode_pairs([("scopes", scopes.as_str())]));
        }
        GCE_HOSTS.check(&url)?;
        let transport = match self.transport {
            Some(t) => t,
            None => Arc::new(MetadataTransport::new(
                GCE_HOSTS,
                self.connect_timeout,
                self.timeout,
            )),
        };
        Ok(GcpMetadata { url, transport })
    }
}
