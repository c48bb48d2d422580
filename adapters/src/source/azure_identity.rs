//! Tokens from Azure managed identities: the instance metadata service
//! (virtual machines, scale sets, AKS nodes) and the App Service /
//! Functions identity endpoint.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use freshtoken_core::oauth2::{form, HttpRequest, HttpResponse};
use freshtoken_core::TokenResponse;
use freshtoken_core::{ClientSecret, FetchError, FetchErrorKind, FetchRequest, Timestamp};

use super::metadata_http::{
    exchange, expires_on_as_expires_in, CloudIdentityError, HostRule, MetadataTransport, Refusal,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT,
};
use super::TokenSource;
use crate::oauth2::HttpTransport;

/// The instance metadata service's token endpoint.
pub const AZURE_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// The IMDS `api-version` sent by default.
pub const AZURE_IMDS_API_VERSION: &str = "2018-02-01";

/// The App Service / Functions `api-version` this source speaks.
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";

const IMDS_HOSTS: HostRule = HostRule::Exact {
    hosts: &["169.254.169.254"],
    described: "169.254.169.254 (port 80)",
};

/// Which managed identity to ask for, when the resource has several.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Identity {
    /// The system-assigned identity (or the only user-assigned one).
    Default,
    /// A user-assigned identity by its client (application) id.
    ClientId(String),
    /// A user-assigned identity by its object (principal) id.
    ObjectId(String),
    /// A user-assigned identity by its Azure resource id.
    ResourceId(String),
}

impl Identity {
    fn set(current: &mut Identity, next: Identity) -> Result<(), CloudIdentityError> {
        if *current != Identity::Default {
            return Err(CloudIdentityError::InvalidParameter {
                what: "managed identity",
                reason: "name it by one of client id, object id or resource id",
            });
        }
        *current = next;
        Ok(())
    }
}

/// Access tokens for a managed identity of the Azure virtual machine, scale
/// set or AKS node this runs on, from the instance metadata service (IMDS).
///
/// The protocol, as Azure documents it: `GET
/// http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`
/// with the header `Metadata: true` (requests without it are refused with
/// 400 `bad_request_102`), and for a user-assigned identity one of
/// `client_id`, `object_id` or `msi_res_id`. The answer holds
/// `access_token`, `expires_in` (seconds left, as a string), `expires_on`
/// (seconds since the epoch, as a string), `resource` and `token_type`;
/// `expires_in` is used, `expires_on` when it is missing.
///
/// Failures, as Azure's error-handling guidance classifies them: 404 (IMDS
/// is updating), 408, 429 (the per-VM throttle) and 5xx are retried with
/// backoff, at least a second apart; 410 (IMDS is updating, back within 70
/// s) is retried every 10 s; 400 (no such identity on the VM, an unknown
/// `resource`, a missing header) and the other 4xx are permanent: retried
/// only at the long interval, in case the identity is assigned meanwhile. A
/// `Retry-After` is respected.
///
/// ```
/// use freshtoken::source::AzureManagedIdentity;
///
/// let source = AzureManagedIdentity::builder("https://vault.azure.net")
///     .client_id("00000000-0000-0000-0000-00000000c1d0")?
///     .build()?;
/// assert_eq!(
///     source.url(),
///     "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01\
///      &resource=https%3A%2F%2Fvault.azure.net&client_id=00000000-0000-0000-0000-00000000c1d0"
/// );
/// # Ok::<_, freshtoken::source::CloudIdentityError>(())
/// ```
pub struct AzureManagedIdentity {
    url: String,
    transport: Arc<dyn HttpTransport>,
}

impl fmt::Debug for AzureManagedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureManagedIdentity")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AzureManagedIdentity {
    /// A builder for tokens for `resource` (the target's App ID URI, e.g.
    /// `https://management.azure.com/`), from the system-assigned identity.
    pub fn builder(resource: impl Into<String>) -> AzureManagedIdentityBuilder {
        AzureManagedIdentityBuilder {
            common: Common::new(resource.into()),
            endpoint: AZURE_IMDS_ENDPOINT.to_owned(),
            api_version: AZURE_IMDS_API_VERSION.to_owned(),
        }
    }

    /// The URL this source asks.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl TokenSource for AzureManagedIdentity {
    fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        let request = HttpRequest::get(self.url.clone())
            .with_header("Metadata", "true")
            .with_timeout(Some(fetch.timeout));
        exchange(
            &*self.transport,
            &request,
            imds_refusal,
            lifetime_from_expires_on,
        )
    }
}

/// `expires_in` when the answer has it, else what `expires_on` leaves.
fn lifetime_from_expires_on(
    response: &HttpResponse,
    mut answer: TokenResponse,
    now: Timestamp,
) -> Result<TokenResponse, FetchError> {
    if answer.expires_in.is_none() {
        answer.expires_in = expires_on_as_expires_in(response.body(), now);
    }
    Ok(answer)
}

fn imds_refusal(status: u16) -> Refusal {
    let second = Some(Duration::from_secs(1));
    match status {
        404 => Refusal {
            kind: FetchErrorKind::Transient,
            retry_after: second,
            meaning: Some("IMDS is updating"),
        },
        410 => Refusal {
            kind: FetchErrorKind::Transient,
            retry_after: Some(Duration::from_secs(10)),
            meaning: Some("IMDS is updating (back within 70 s)"),
        },
        429 => Refusal {
            kind: FetchErrorKind::RateLimited,
            retry_after: second,
            meaning: Some("IMDS throttles this VM"),
        },
        408 | 500..=599 => Refusal {
            kind: FetchErrorKind::Transient,
            retry_after: second,
            meaning: None,
        },
        400 => Refusal {
            kind: FetchErrorKind::Permanent,
            retry_after: None,
            meaning: Some(
                "IMDS refused the request (no such identity on this VM, an unknown resource, \
                 or a missing Metadata header)",
            ),
        },
        _ => Refusal {
            kind: FetchErrorKind::Permanent,
            retry_after: None,
            meaning: None,
        },
    }
}

/// The settings both Azure builders share.
struct Common {
    resource: String,
    identity: Identity,
    connect_timeout: Duration,
    timeout: Duration,
    transport: Option<Arc<dyn HttpTransport>>,
}

impl Common {
    fn new(resource: String) -> Self {
        Common {
            resource,
            identity: Identity::Default,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            transport: None,
        }
    }

    fn check_resource(&self) -> Result<(), CloudIdentityError> {
        if self.resource.trim().is_empty() {
            return Err(CloudIdentityError::InvalidParameter {
                what: "resource",
                reason: "it is empty",
            });
        }
        Ok(())
    }

    fn transport(&mut self, rule: HostRule) -> Arc<dyn HttpTransport> {
        match self.transport.take() {
            Some(t) => t,
            None => Arc::new(MetadataTransport::new(
                rule,
                self.connect_timeout,
                self.timeout,
            )),
        }
    }
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("resource", &self.resource)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The builder methods both Azure builders have.
macro_rules! common_setters {
    () => {
        /// Asks for the user-assigned identity with this client
        /// (application) id. An identity can be named once.
        pub fn client_id(mut self, id: impl Into<String>) -> Result<Self, CloudIdentityError> {
            Identity::set(&mut self.common.identity, Identity::ClientId(id.into()))?;
            Ok(self)
        }

        /// Asks for the user-assigned identity with this object
        /// (principal) id.
        pub fn object_id(mut self, id: impl Into<String>) -> Result<Self, CloudIdentityError> {
            Identity::set(&mut self.common.identity, Identity::ObjectId(id.into()))?;
            Ok(self)
        }

        /// Asks for the user-assigned identity with this Azure resource id
        /// (`/subscriptions/.../userAssignedIdentities/name`).
        pub fn resource_id(mut self, id: impl Into<String>) -> Result<Self, CloudIdentityError> {
            Identity::set(&mut self.common.identity, Identity::ResourceId(id.into()))?;
            Ok(self)
        }

        /// The built-in transport's connect timeout (default 2 s).
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.common.connect_timeout = timeout;
            self
        }

        /// The built-in transport's overall timeout (default 20 s).
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.common.timeout = timeout;
            self
        }

        /// Sends through another HTTP client (the plain-http rule is then
        /// that client's to apply; the URL is still checked when building).
        pub fn transport(mut self, transport: impl HttpTransport) -> Self {
            self.common.transport = Some(Arc::new(transport));
            self
        }
    };
}

/// Builds an [`AzureManagedIdentity`].
#[must_use]
#[derive(Debug)]
pub struct AzureManagedIdentityBuilder {
    common: Common,
    endpoint: String,
    api_version: String,
}

impl AzureManagedIdentityBuilder {
    common_setters!();

    /// The token endpoint, instead of IMDS's own (a loopback address for
    /// an emulator or a test).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = url.into();
        self
    }

    /// The `api-version` (default `2018-02-01`).
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Checks the endpoint and builds the source.
    pub fn build(mut self) -> Result<AzureManagedIdentity, CloudIdentityError> {
        self.common.check_resource()?;
        IMDS_HOSTS.check(&self.endpoint)?;
        if self.endpoint.contains(['?', '#']) {
            return Err(CloudIdentityError::Invalid {
                reason: "the endpoint must not carry a query",
            });
        }
        let mut pairs = vec![
            ("api-version", self.api_version.as_str()),
            ("resource", self.common.resource.as_str()),
        ];
        match &self.common.identity {
            Identity::Default => {}
            Identity::ClientId(id) => pairs.push(("client_id", id)),
            Identity::ObjectId(id) => pairs.push(("object_id", id)),
            Identity::ResourceId(id) => pairs.push(("msi_res_id", id)),
        }
        let url = format!("{}?{}", self.endpoint, form::encode_pairs(pairs));
        let transport = self.common.transport(IMDS_HOSTS);
        Ok(AzureManagedIdentity { url, transport })
    }
}

/// Access tokens for a managed identity of the App Service app, Functions
/// app or Container App this runs in, from the endpoint the platform
/// names in `IDENTITY_ENDPOINT`.
///
/// The protocol (`api-version=2019-08-01`), as Azure documents it: `GET
/// {IDENTITY_ENDPOINT}?resource=...&api-version=2019-08-01` with the header
/// `X-IDENTITY-HEADER: {IDENTITY_HEADER}` (a secret the platform rotates;
/// requests without it are refused), and for a user-assigned identity one
/// of `client_id`, `principal_id` or `mi_res_id`. The answer holds
/// `access_token`, `expires_on` (seconds since the epoch), `resource`,
/// `token_type` and `client_id`; the lifetime is what `expires_on` leaves
/// when the answer arrives (an `expires_in`, if one is sent, wins).
///
/// Failures: 429 is a rate limit, 408 and 5xx are transient, other 4xx are
/// permanent (retried at the long interval). A `Retry-After` is respected.
/// Plain http goes only to a loopback or link-local (169.254.0.0/16)
/// address; the identity header never appears in `Debug` or errors.
///
/// ```
/// use freshtoken::source::AppServiceIdentity;
///
/// // In App Service: AppServiceIdentity::from_env("https://vault.azure.net")?.build()?
/// let source = AppServiceIdentity::builder(
///     "http://127.0.0.1:41741/msi/token",
///     "the-identity-header",
///     "https://vault.azure.net",
/// )
/// .build()?;
/// assert!(!format!("{source:?}").contains("the-identity-header"));
/// # Ok::<_, freshtoken::source::CloudIdentityError>(())
/// ```
pub struct AppServiceIdentity {
    url: String,
    header: ClientSecret,
    transport: Arc<dyn HttpTransport>,
}

impl fmt::Debug for AppServiceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppServiceIdentity")
            .field("url", &self.url)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl AppServiceIdentity {
    /// A builder from `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`, which App
    /// Service, Functions and Container Apps set when a managed identity
    /// is enabled.
    pub fn from_env(
        resource: impl Into<String>,
    ) -> Result<AppServiceIdentityBuilder, CloudIdentityError> {
        let var = |name: &'static str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or(CloudIdentityError::MissingEnvironment { name })
        };
        let endpoint = var("IDENTITY_ENDPOINT")?;
        let header = var("IDENTITY_HEADER")?;
        Ok(Self::builder(endpoint, header, resource))
    }

    /// A builder for this endpoint and identity header.
    pub fn builder(
        endpoint: impl Into<String>,
        identity_header: impl Into<String>,
        resource: impl Into<String>,
    ) -> AppServiceIdentityBuilder {
        AppServiceIdentityBuilder {
            common: Common::new(resource.into()),
            endpoint: endpoint.into(),
            header: ClientSecret::new(identity_header.into()),
        }
    }

    /// The URL this source asks.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl TokenSource for AppServiceIdentity {
    fn fetch(&self, fetch: &FetchRequest) -> Result<TokenResponse, FetchError> {
        let request = HttpRequest::get(self.url.clone())
            .with_header("X-IDENTITY-HEADER", self.header.expose_secret())
            .with_timeout(Some(fetch.timeout));
        exchange(
            &*self.transport,
            &request,
            app_service_refusal,
            lifetime_from_expires_on,
        )
    }
}

fn app_service_refusal(status: u16) -> Refusal {
    let kind = match status {
        429 => FetchErrorKind::RateLimited,
        408 | 500..=599 => FetchErrorKind::Transient,
        _ => FetchErrorKind::Permanent,
    };
    let meaning = match status {
        400 => Some("the identity endpoint refused the request (an unknown resource or identity)"),
        401 | 403 => Some("the identity endpoint refused the X-IDENTITY-HEADER"),
        _ => None,
    };
    Refusal {
        kind,
        retry_after: None,
        meaning,
    }
}

/// Builds an [`AppServiceIdentity`].
#[must_use]
pub struct AppServiceIdentityBuilder {
    common: Common,
    endpoint: String,
    header: ClientSecret,
}

impl fmt::Debug for AppServiceIdentityBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppServiceIdentityBuilder")
            .field("common", &self.common)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AppServiceIdentityBuilder {
    common_setters!();

    /// Checks the endpoint and builds the source.
    pub fn build(mut self) -> Result<AppServiceIdentity, CloudIdentityError> {
        self.common.check_resource()?;
        HostRule::LinkLocal.check(&self.endpoint)?;
        if self.endpoint.contains('#') {
            return Err(CloudIdentityError::Invalid {
                reason: "the endpoint must not carry a fragment",
            });
        }
        if self.header.expose_secret().trim().is_empty() {
            return Err(CloudIdentityError::InvalidParameter {
                what: "identity header",
                reason: "it is empty",
            });
        }
        let mut pairs = vec![
            ("resource", self.common.resource.as_str()),
            ("api-version", APP_SERVICE_API_VERSION),
        ];
        match &self.common.identity {
            Identity::Default => {}
            Identity::ClientId(id) => pairs.push(("client_id", id)),
            Identity::ObjectId(id) => pairs.push(("principal_id", id)),
            Identity::ResourceId(id) => pairs.push(("mi_res_id", id)),
        }
        let separator = if self.endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{separator}{}", self.endpoint, form::encode_pairs(pairs));
        let transport = self.common.transport(HostRule::LinkLocal);
        Ok(AppServiceIdentity {
            url,
            header: self.header,
            transport,
        })
    }
}
