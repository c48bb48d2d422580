//! The agent's configuration: a TOML file, every setting also an
//! environment variable, secrets only from files or the environment.
//!
//! ```toml
//! [agent]
//! socket = "/run/freshtoken/agent.sock"   # the local HTTP endpoint (mode 0600)
//! listen = "127.0.0.1:9464"               # optional loopback TCP: /healthz and /metrics
//!
//! [tokens.api]
//! grant = "client_credentials"            # or "refresh_token"
//! token_url = "https://login.example.com/oauth2/token"
//! client_id = "orders-service"
//! client_secret_file = "/etc/freshtoken/api.secret"   # mode 0600; or client_secret_env
//! scope = "orders.read"
//!
//! [tokens.api.file]                       # a token file, rewritten atomically
//! path = "/run/freshtoken/api.token"
//! format = "header"                       # raw (default), header, json; or template = "..."
//!
//! [tokens.api.cache]                      # shared with `freshtoken token` and other agents
//! file = "/var/lib/freshtoken/api.json"   # or redis_url / redis_url_env
//! ```
//!
//! Relative paths are relative to the configuration file's directory.
//!
//! **Cloud identity grants.** A token can come from the identity endpoint
//! of the cloud the agent runs on instead of a `token_url`, with no client
//! and no secret to configure (the library's
//! [`GcpMetadata`](freshtoken::source::GcpMetadata),
//! [`AzureManagedIdentity`](freshtoken::source::AzureManagedIdentity) and
//! [`AppServiceIdentity`](freshtoken::source::AppServiceIdentity)):
//!
//! ```toml
//! [tokens.storage]
//! grant = "gce_metadata"                  # GCE, GKE, Cloud Run
//! service_account = "reports@my-project.iam.gserviceaccount.com"  # default: "default"
//! scope = "https://www.googleapis.com/auth/devstorage.read_only"  # optional
//! # metadata_host = "..."                 # default: GCE_METADATA_HOST, else 169.254.169.254
//!
//! [tokens.vault]
//! grant = "azure_imds"                    # Azure VMs, scale sets, AKS nodes
//! resource = "https://vault.azure.net"
//! identity_client_id = "..."              # or identity_object_id / identity_resource_id
//!
//! [tokens.graph]
//! grant = "azure_app_service"             # App Service, Functions, Container Apps
//! resource = "https://graph.microsoft.com"
//! # identity_endpoint / identity_header_env: default IDENTITY_ENDPOINT and
//! # the secret in IDENTITY_HEADER, as the platform sets them
//! ```
//!
//! A key the grant does not take (a `token_url` on a metadata-server token,
//! `service_account` on an Azure one) is an error, as is plain http to
//! another host than the one the protocol documents (or loopback).
//!
//! **Environment.** Each key has a variable: `FRESHTOKEN_AGENT_SOCKET`,
//! `FRESHTOKEN_TOKENS_<NAME>_<KEY>` with the name and key upper-cased, `-`
//! and `.` as `_` (`FRESHTOKEN_TOKENS_API_FILE_PATH`). A variable wins over
//! the file. `FRESHTOKEN_TOKEN_NAMES=api,billing` declares tokens that the
//! file does not have. A `FRESHTOKEN_AGENT_*` or `FRESHTOKEN_TOKENS_*`
//! variable that names no setting is an error, like an unknown key.
//!
//! **Secrets** (the client secret, an initial refresh token, a Redis URL
//! with a password) are never read from the configuration file or the
//! command line: `client_secret_file` / `client_secret_env` name where they
//! are, and `FRESHTOKEN_TOKENS_<NAME>_CLIENT_SECRET` may hold the secret
//! itself. A secret file readable by group or others is refused (`chmod
//! 600` it). A client assertion file (`client_assertion_file`, e.g. a
//! Kubernetes projected token, 0644 by design) is exempt.
//!
//! **Refused as unsafe**: a configuration file that group or others can
//! write to, or that another user (not root) owns (it decides where the
//! secrets are sent); `grant = "refresh_token"` without a `cache` (the
//! rotated refresh token would live only in memory); a bare number as a
//! `mode` (`mode = 640`: octal or decimal?), which is a string of octal
//! digits, `"0640"`, in the file as in the environment.
//!
//! Every problem is one [`ConfigError`] naming the key; the binary prints it
//! on one line and exits with code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The prefix of every environment variable the agent reads.
pub const ENV_PREFIX: &str = "FRESHTOKEN_";

/// A configuration problem: the key (or environment variable) and what is
/// wrong with it. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key (`tokens.api.client_secret_file`) or the variable.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The type a key's value must have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    /// A string of octal digits (`"0640"`, `"640"` or `"0o640"`), in the
    /// file and in the environment alike; a bare number is refused, since
    /// `mode = 640` could mean octal or decimal.
    Mode,
}

const AGENT_KEYS: &[(&str, Kind)] = &[
    ("socket", Kind::Str),
    ("listen", Kind::Str),
    ("tcp_serves_tokens", Kind::Bool),
    ("heartbeat_secs", Kind::Int),
];

/// Every key of a `[tokens.NAME]` table; nested ones as `table.key`.
const TOKEN_KEYS: &[(&str, Kind)] = &[
    ("grant", Kind::Str),
    ("token_url", Kind::Str),
    ("client_id", Kind::Str),
    ("client_secret_file", Kind::Str),
    ("client_secret_env", Kind::Str),
    ("client_assertion_file", Kind::Str),
    ("client_auth", Kind::Str),
    ("refresh_token_file", Kind::Str),
    ("refresh_token_env", Kind::Str),
    ("device_authorization_url", Kind::Str),
    ("scope", Kind::Str),
    ("audience", Kind::Str),
    ("resource", Kind::Str),
    ("metadata_host", Kind::Str),
    ("service_account", Kind::Str),
    ("identity_client_id", Kind::Str),
    ("identity_object_id", Kind::Str),
    ("identity_resource_id", Kind::Str),
    ("identity_endpoint", Kind::Str),
    ("identity_header_env", Kind::Str),
    ("env_var", Kind::Str),
    ("fetch_timeout_secs", Kind::Int),
    ("file.path", Kind::Str),
    ("file.mode", Kind::Mode),
    ("file.uid", Kind::Int),
    ("file.gid", Kind::Int),
    ("file.format", Kind::Str),
    ("file.template", Kind::Str),
    ("cache.file", Kind::Str),
    ("cache.redis_url", Kind::Str),
    ("cache.redis_url_env", Kind::Str),
    ("cache.redis_key", Kind::Str),
];

/// Every configuration key with its type and variable, for `agent --help`.
pub fn keys_help() -> String {
    let mut text = String::from(
        "Configuration keys (TOML; each also an environment variable, which wins):\n\n[agent]\n",
    );
    let kind = |k: Kind| match k {
        Kind::Str => "string",
        Kind::Int => "number",
        Kind::Bool => "true/false",
        Kind::Mode => "octal string, e.g. \"0640\"",
    };
    for (key, k) in AGENT_KEYS {
        text.push_str(&format!(
            "  {key:<24} {:<28} {}\n",
            kind(*k),
            env_name(&["agent", key])
        ));
    }
    text.push_str("\n[tokens.NAME]  (FRESHTOKEN_TOKEN_NAMES=a,b declares tokens without a file)\n");
    for (key, k) in TOKEN_KEYS {
        text.push_str(&format!(
            "  {key:<24} {:<28} {}\n",
            kind(*k),
            env_name(&["tokens", "NAME", key])
        ));
    }
    text.push_str(&format!(
        "\nSecrets only from the environment: {}, {}.\n",
        env_name(&["tokens", "NAME", "client_secret"]),
        env_name(&["tokens", "NAME", "refresh_token"])
    ));
    text
}

/// Secrets that only the environment may hold (never the file).
const ENV_ONLY: &[&str] = &["client_secret", "refresh_token"];

/// The whole configuration, as read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[agent]`.
    #[serde(default)]
    pub agent: AgentConfig,
    /// `[tokens.NAME]`, by name.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
}

/// `[agent]`: where the agent serves.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The Unix socket of the local HTTP endpoint (default
    /// `$XDG_RUNTIME_DIR/freshtoken/agent.sock`, else
    /// `/tmp/freshtoken-<uid>/agent.sock`).
    pub socket: Option<PathBuf>,
    /// A loopback TCP address for `/healthz` and `/metrics` (Prometheus):
    /// `127.0.0.1:PORT`, `[::1]:PORT` or `localhost:PORT`. It answers only
    /// requests whose `Host` is a loopback address or `localhost` with its
    /// port.
    pub listen: Option<String>,
    /// Whether the TCP listener also serves `/v1/token/*`, to requests with
    /// the header `Metadata-Flavor: freshtoken` and no `Origin` (default
    /// false: any local user can reach a TCP port, only this user the
    /// socket).
    pub tcp_serves_tokens: Option<bool>,
    /// The drivers' heartbeat, seconds (default 30).
    pub heartbeat_secs: Option<u64>,
}

/// The grant a token is obtained with: an OAuth2 grant at `token_url`,
/// or the identity endpoint of the cloud the agent runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// OAuth2 client credentials.
    ClientCredentials,
    /// A refresh token, rotated as the authority says.
    RefreshToken,
    /// The GCE / GKE metadata server
    /// ([`GcpMetadata`](freshtoken::source::GcpMetadata)).
    GceMetadata,
    /// An Azure managed identity from the instance metadata service
    /// ([`AzureManagedIdentity`](freshtoken::source::AzureManagedIdentity)).
    AzureImds,
    /// An App Service / Functions managed identity
    /// ([`AppServiceIdentity`](freshtoken::source::AppServiceIdentity)).
    AzureAppService,
}

impl Grant {
    /// Every grant, as `grant = "..."` names it.
    pub const ALL: [Grant; 5] = [
        Grant::ClientCredentials,
        Grant::RefreshToken,
        Grant::GceMetadata,
        Grant::AzureImds,
        Grant::AzureAppService,
    ];

    /// The grant's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::RefreshToken => "refresh_token",
            Grant::GceMetadata => "gce_metadata",
            Grant::AzureImds => "azure_imds",
            Grant::AzureAppService => "azure_app_service",
        }
    }

    /// Whether the token comes from a cloud's identity endpoint rather
    /// than an OAuth2 token endpoint.
    pub fn is_cloud(self) -> bool {
        matches!(
            self,
            Grant::GceMetadata | Grant::AzureImds | Grant::AzureAppService
        )
    }

    /// The keys of `[tokens.NAME]` that only some grants take, and whether
    /// this one does.
    fn takes(self, key: &str) -> bool {
        let oauth = matches!(self, Grant::ClientCredentials | Grant::RefreshToken);
        let azure = matches!(self, Grant::AzureImds | Grant::AzureAppService);
        match key {
            "token_url"
            | "client_id"
            | "client_secret"
            | "client_secret_file"
            | "client_secret_env"
            | "client_assertion_file"
            | "client_auth"
            | "refresh_token"
            | "refresh_token_file"
            | "refresh_token_env"
            | "device_authorization_url"
            | "audience" => oauth,
            "scope" => oauth || self == Grant::GceMetadata,
            "resource" => oauth || azure,
            "metadata_host" | "service_account" => self == Grant::GceMetadata,
            "identity_client_id"
            | "identity_object_id"
            | "identity_resource_id"
            | "identity_endpoint" => azure,
            "identity_header_env" => self == Grant::AzureAppService,
            _ => true,
        }
    }
}

/// `[tokens.NAME]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// `client_credentials` (default) or `refresh_token`.
    pub grant: Option<String>,
    /// The token endpoint (https, or http on loopback).
    pub token_url: Option<String>,
    /// The client id.
    pub client_id: Option<String>,
    /// A file holding the client secret (mode 0600 or stricter).
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// A client assertion file (private_key_jwt by a platform, e.g. a
    /// projected token), re-read as it changes; no mode check.
    pub client_assertion_file: Option<PathBuf>,
    /// `basic` (default) or `post`.
    pub client_auth: Option<String>,
    /// The first refresh token, for `refresh_token` (mode 0600 or stricter).
    pub refresh_token_file: Option<PathBuf>,
    /// An environment variable holding the first refresh token.
    pub refresh_token_env: Option<String>,
    /// The device authorization endpoint (RFC 8628), for `freshtoken
    /// login` (https, or http on loopback).
    pub device_authorization_url: Option<String>,
    /// The scope to ask for.
    pub scope: Option<String>,
    /// The audience parameter.
    pub audience: Option<String>,
    /// The resource parameter (RFC 8707); for the Azure grants, the
    /// resource (App ID URI) the token is for.
    pub resource: Option<String>,
    /// `gce_metadata`: the metadata server's `host[:port]` (default:
    /// `GCE_METADATA_HOST`, else 169.254.169.254).
    pub metadata_host: Option<String>,
    /// `gce_metadata`: the service account's email (default `default`).
    pub service_account: Option<String>,
    /// The Azure grants: a user-assigned identity by its client id.
    pub identity_client_id: Option<String>,
    /// The Azure grants: a user-assigned identity by its object
    /// (principal) id.
    pub identity_object_id: Option<String>,
    /// The Azure grants: a user-assigned identity by its Azure resource id.
    pub identity_resource_id: Option<String>,
    /// The Azure grants: the identity endpoint (`azure_imds`: IMDS's own
    /// by default; `azure_app_service`: `IDENTITY_ENDPOINT` by default).
    pub identity_endpoint: Option<String>,
    /// `azure_app_service`: the variable holding the `X-IDENTITY-HEADER`
    /// secret (default `IDENTITY_HEADER`).
    pub identity_header_env: Option<String>,
    /// The variable `freshtoken exec` puts the token in (default `ACCESS_TOKEN`).
    pub env_var: Option<String>,
    /// How long a token request may take, seconds (default 30).
    pub fetch_timeout_secs: Option<u64>,
    /// `[tokens.NAME.file]`: the token file.
    pub file: Option<FileSink>,
    /// `[tokens.NAME.cache]`: the shared cache.
    pub cache: Option<CacheConfig>,
}

/// `[tokens.NAME.file]`: where and how the token is written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// The file.
    pub path: Option<PathBuf>,
    /// Its mode (default 0600), written as a string of octal digits
    /// (`mode = "0640"`) in the file and the environment alike.
    pub mode: Option<u32>,
    /// Its owner's uid (default: the agent's).
    pub uid: Option<u32>,
    /// Its group's gid (default: the agent's).
    pub gid: Option<u32>,
    /// `raw` (default: the token alone), `header` (`Authorization: Bearer
    /// <token>`) or `json` (`{"access_token","token_type","expires_at"}`).
    pub format: Option<String>,
    /// A template instead of a format: `{token}`, `{token_type}` and
    /// `{expires_at}` (Unix seconds) are replaced.
    pub template: Option<String>,
}

/// `[tokens.NAME.cache]`: the cache shared with other instances.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// A file cache (with a cross-process lease).
    pub file: Option<PathBuf>,
    /// A Redis URL without a password.
    pub redis_url: Option<String>,
    /// An environment variable holding the Redis URL (may have a password).
    pub redis_url_env: Option<String>,
    /// The Redis key (default: see [`Resolved::redis_key`]).
    pub redis_key: Option<String>,
}

/// A secret string; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One token's configuration with its secrets read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The name.
    pub name: String,
    /// The settings as configured.
    pub config: TokenConfig,
    /// The grant.
    pub grant: Grant,
    /// The token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret, if any.
    pub client_secret: Option<Secret>,
    /// The first refresh token, if any.
    pub refresh_token: Option<Secret>,
    /// The Redis URL, if any (may hold a password).
    pub redis_url: Option<Secret>,
    /// The cloud grants: the metadata host or identity endpoint, as
    /// configured or from the platform's variable (`GCE_METADATA_HOST`,
    /// `IDENTITY_ENDPOINT`); `None`: the source's default.
    pub cloud_endpoint: Option<String>,
    /// `azure_app_service`: the identity header.
    pub identity_header: Option<Secret>,
}

impl Resolved {
    /// The Redis key of this token's shared cache: `cache.redis_key` as
    /// configured, else `freshtoken:<name>:<cache name>`, where the cache
    /// name is [`TokenKey::cache_name`](freshtoken::manager::TokenKey::cache_name)
    /// of the token URL, client id, scope, audience and resource (never
    /// the secret). So agents that share a Redis and a token name but not a
    /// client, an authority or a scope never read each other's token, and a
    /// changed scope starts from a new entry. (Before, the default was
    /// `freshtoken:<name>`: set `redis_key` to that to keep an entry, such
    /// as a rotated refresh token, across the upgrade.)
    pub fn redis_key(&self) -> String {
        if let Some(key) = self.config.cache.as_ref().and_then(|c| c.redis_key.clone()) {
            return key;
        }
        format!("freshtoken:{}:{}", self.name, self.token_key().cache_name())
    }

    /// What this token is for: the token URL, client id, scope, audience
    /// and resource (never the secret). Its
    /// [`config_id`](freshtoken::TokenKey::config_id) ends the default
    /// Redis key, and every record the token's cache writes carries it, so
    /// a record another configuration wrote under a shared `redis_key` or
    /// `file` is never served.
    pub fn token_key(&self) -> freshtoken::TokenKey {
        let c = &self.config;
        let mut key = freshtoken::TokenKey::new(self.client_id.as_str())
            .with_token_url(self.token_url.as_str());
        if let Some(scope) = &c.scope {
            key = key.with_scope(scope);
        }
        if let Some(audience) = &c.audience {
            key = key.with_audience(audience.as_str());
        }
        if let Some(resource) = &c.resource {
            key = key.with_resource(resource.as_str());
        }
        key
    }

    /// The variable `exec` uses.
    pub fn env_var(&self) -> &str {
        self.config.env_var.as_deref().unwrap_or("ACCESS_TOKEN")
    }
}

/// A loaded configuration: the settings and every token resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The settings.
    pub config: Config,
    /// The tokens, by name.
    pub tokens: BTreeMap<String, Resolved>,
}

impl Loaded {
    /// The socket path: configured or the default.
    pub fn socket(&self) -> PathBuf {
        self.config
            .agent
            .socket
            .clone()
            .unwrap_or_else(default_socket)
    }
}

/// The default socket: `$XDG_RUNTIME_DIR/freshtoken/agent.sock`, else
/// `/tmp/freshtoken-<uid>/agent.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("freshtoken/agent.sock"),
        _ => PathBuf::from(format!(
            "/tmp/freshtoken-{}/agent.sock",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// The environment as `(name, value)` pairs, for [`load`].
pub type Env = Vec<(String, String)>;

/// The process environment (variables that are not UTF-8 are skipped).
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// The keys whose value is a secret or a connection string, as the suffix
/// of their `FRESHTOKEN_TOKENS_<NAME>_<KEY>` variable.
const SECRET_SUFFIXES: &[&str] = &["_CLIENT_SECRET", "_REFRESH_TOKEN", "_CACHE_REDIS_URL"];

/// The keys that name the variable holding a secret or a connection
/// string, as the suffix of their `FRESHTOKEN_TOKENS_<NAME>_<KEY>` variable.
const SECRET_ENV_SUFFIXES: &[&str] = &[
    "_CLIENT_SECRET_ENV",
    "_REFRESH_TOKEN_ENV",
    "_CACHE_REDIS_URL_ENV",
    "_IDENTITY_HEADER_ENV",
];

/// Every variable of `env` that holds a secret or a connection string for
/// the agent, which `freshtoken exec` removes from the child's environment:
/// the variables named by `client_secret_env`, `refresh_token_env`,
/// `cache.redis_url_env` and `identity_header_env` (`IDENTITY_HEADER` by
/// default for `grant = "azure_app_service"`) (in `loaded`, and in any
/// `FRESHTOKEN_TOKENS_<NAME>_<KEY>_ENV` variable of `env`), and every
/// `FRESHTOKEN_TOKENS_<NAME>_CLIENT_SECRET`, `_REFRESH_TOKEN` and
/// `_CACHE_REDIS_URL`.
///
/// ```
/// use freshtoken_agent::config::secret_variables;
///
/// let env = vec![
///     ("FRESHTOKEN_TOKENS_API_CLIENT_SECRET".to_owned(), "s3cret".to_owned()),
///     ("FRESHTOKEN_TOKENS_API_REFRESH_TOKEN_ENV".to_owned(), "MY_RT".to_owned()),
///     ("MY_RT".to_owned(), "rt".to_owned()),
///     ("FRESHTOKEN_CONFIG".to_owned(), "/etc/freshtoken.toml".to_owned()),
///     ("HOME".to_owned(), "/root".to_owned()),
/// ];
/// let mut secrets = secret_variables(&env, None);
/// secrets.sort();
/// assert_eq!(
///     secrets,
///     ["FRESHTOKEN_TOKENS_API_CLIENT_SECRET", "MY_RT"]
/// );
/// ```
pub fn secret_variables(env: &Env, loaded: Option<&Loaded>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    };
    let tokens_prefix = env_name(&["tokens_"]);
    for (var, value) in env {
        if !var.starts_with(&tokens_prefix) {
            continue;
        }
        if SECRET_SUFFIXES.iter().any(|s| var.ends_with(s)) {
            add(var);
        }
        if SECRET_ENV_SUFFIXES.iter().any(|s| var.ends_with(s)) {
            add(value);
        }
    }
    for token in loaded.iter().flat_map(|l| l.tokens.values()) {
        let c = &token.config;
        let cache = c.cache.as_ref().and_then(|c| c.redis_url_env.as_deref());
        let identity_header =
            (token.grant == Grant::AzureAppService).then(|| identity_header_var(c));
        for var in [
            c.client_secret_env.as_deref(),
            c.refresh_token_env.as_deref(),
            cache,
            identity_header,
        ]
        .into_iter()
        .flatten()
        {
            add(var);
        }
    }
    names
}

/// Reads the file at `path` (if any), applies `env`, checks every key and
/// reads the secrets.
pub fn load(path: Option<&Path>, env: &Env) -> Result<Loaded, ConfigError> {
    load_with(path, env, None)
}

/// [`load`] for `freshtoken login NAME`: token `login` may lack its
/// refresh token (its `refresh_token_file` may not exist yet), since the
/// login is what writes it.
pub fn load_for_login(path: Option<&Path>, env: &Env, login: &str) -> Result<Loaded, ConfigError> {
    load_with(path, env, Some(login))
}

fn load_with(path: Option<&Path>, env: &Env, login: Option<&str>) -> Result<Loaded, ConfigError> {
    let mut table = match path {
        Some(path) => {
            check_config_file(path)?;
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
            })?;
            parse_toml(path, &text)?
        }
        None => toml::Table::new(),
    };
    check_file_keys(&mut table)?;
    let secrets_from_env = apply_env(&mut table, env)?;
    // Every key and type was checked above; serde's message could quote a
    // value (a secret pasted in the wrong place), so it is not shown.
    let mut config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|_: toml::de::Error| ConfigError::new("config", "a value does not fit its key"))?;
    if let Some(base) = path.and_then(Path::parent) {
        relative_to(&mut config, base);
    }
    let mut tokens = BTreeMap::new();
    for (name, token) in &config.tokens {
        let logging_in = login == Some(name.as_str());
        let resolved = resolve(name, token, &secrets_from_env, env, logging_in)?;
        tokens.insert(name.clone(), resolved);
    }
    Ok(Loaded { config, tokens })
}

/// Refuses a configuration file that the group or others can write to, or
/// that belongs to another user (root excepted): it decides the token URL
/// and which secret file is sent there, so whoever can change it can have
/// the secret sent to them.
fn check_config_file(path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let key = path.display().to_string();
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError::new(&key, format!("cannot read: {e}")))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(ConfigError::new(
                key,
                format!(
                    "is writable by group or others (mode {mode:04o}); it decides where secrets \
                     are sent: chmod 644 (or 600) it"
                ),
            ));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(ConfigError::new(
                key,
                format!(
                    "belongs to uid {}, not to this user (uid {me}) or root; it decides where \
                     secrets are sent",
                    meta.uid()
                ),
            ));
        }
    }
    Ok(())
}

/// Makes every relative path in `config` relative to `base` (the
/// configuration file's directory), so a configuration means the same
/// whatever the working directory.
fn relative_to(config: &mut Config, base: &Path) {
    let fix = |p: &mut Option<PathBuf>| {
        if let Some(path) = p {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    };
    fix(&mut config.agent.socket);
    for token in config.tokens.values_mut() {
        fix(&mut token.client_secret_file);
        fix(&mut token.client_assertion_file);
        fix(&mut token.refresh_token_file);
        if let Some(file) = &mut token.file {
            fix(&mut file.path);
        }
        if let Some(cache) = &mut token.cache {
            fix(&mut cache.file);
        }
    }
}

fn parse_toml(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{column}")
            })
            .unwrap_or_default();
        // The message only: toml's Display quotes the line, which could be
        // a secret someone pasted in.
        ConfigError::new(
            format!("{}{at}", path.display()),
            format!("not valid TOML: {}", e.message().trim()),
        )
    })
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::Int => "a whole number",
        Kind::Bool => "true or false",
        Kind::Mode => "a file mode of octal digits such as \"0640\"",
    }
}

/// Checks `value` against `kind`, normalising a mode string to an integer.
fn check_value(key: &str, kind: Kind, value: &mut toml::Value) -> Result<(), ConfigError> {
    let ok = match (kind, &*value) {
        (Kind::Str, toml::Value::String(_)) | (Kind::Bool, toml::Value::Boolean(_)) => true,
        (Kind::Int, toml::Value::Integer(i)) => *i >= 0 && *i <= u32::MAX as i64,
        (Kind::Mode, toml::Value::Integer(_)) => {
            return Err(ConfigError::new(
                key,
                "write the mode as a string of octal digits, such as \"0640\" (a bare number \
                 could be read as octal or decimal)",
            ))
        }
        (Kind::Mode, toml::Value::String(s)) => {
            match u32::from_str_radix(s.trim().strip_prefix("0o").unwrap_or(s.trim()), 8) {
                Ok(mode) if mode <= 0o7777 => {
                    *value = toml::Value::Integer(mode.into());
                    true
                }
                _ => false,
            }
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("must be {}", kind_name(kind)),
        ))
    }
}

/// Every key in the file is known and of the right type.
fn check_file_keys(table: &mut toml::Table) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        match (key.as_str(), value) {
            ("agent", toml::Value::Table(agent)) => {
                for (k, v) in agent.iter_mut() {
                    let path = format!("agent.{k}");
                    match AGENT_KEYS.iter().find(|(name, _)| name == k) {
                        Some((_, kind)) => check_value(&path, *kind, v)?,
                        None => return Err(unknown(&path, AGENT_KEYS, "")),
                    }
                }
            }
            ("tokens", toml::Value::Table(tokens)) => {
                for (name, token) in tokens.iter_mut() {
                    check_name(name)?;
                    let toml::Value::Table(token) = token else {
                        return Err(ConfigError::new(
                            format!("tokens.{name}"),
                            "must be a table",
                        ));
                    };
                    check_token_keys(name, token)?;
                }
            }
            ("agent" | "tokens", _) => return Err(ConfigError::new(key, "must be a table")),
            _ => {
                return Err(ConfigError::new(
                    key,
                    "unknown key (expected [agent] or [tokens.NAME])",
                ))
            }
        }
    }
    Ok(())
}

fn check_token_keys(name: &str, token: &mut toml::Table) -> Result<(), ConfigError> {
    for (k, v) in token.iter_mut() {
        let path = format!("tokens.{name}.{k}");
        if ENV_ONLY.contains(&k.as_str()) {
            return Err(ConfigError::new(
                path,
                format!(
                    "secrets are not read from the configuration file: use {k}_file or {k}_env \
                     (or the variable {})",
                    env_name(&["tokens", name, k])
                ),
            ));
        }
        match v {
            toml::Value::Table(inner) if k == "file" || k == "cache" => {
                for (ik, iv) in inner.iter_mut() {
                    let dotted = format!("{k}.{ik}");
                    match TOKEN_KEYS.iter().find(|(n, _)| *n == dotted) {
                        Some((_, kind)) => check_value(&format!("{path}.{ik}"), *kind, iv)?,
                        None => return Err(unknown(&format!("{path}.{ik}"), TOKEN_KEYS, k)),
                    }
                }
            }
            _ if k == "file" || k == "cache" => {
                return Err(ConfigError::new(path, "must be a table"));
            }
            _ => match TOKEN_KEYS.iter().find(|(n, _)| n == k) {
                Some((_, kind)) => check_value(&path, *kind, v)?,
                None => return Err(unknown(&path, TOKEN_KEYS, "")),
            },
        }
    }
    Ok(())
}

/// "unknown key (expected one of ...)" for the keys under `table`.
fn unknown(path: &str, keys: &[(&str, Kind)], table: &str) -> ConfigError {
    let names: Vec<&str> = keys
        .iter()
        .filter_map(|(n, _)| {
            if table.is_empty() {
                Some(n.split('.').next().unwrap_or(n))
            } else {
                n.strip_prefix(table)?.strip_prefix('.')
            }
        })
        .fold(Vec::new(), |mut v, n| {
            if !v.contains(&n) {
                v.push(n);
            }
            v
        });
    ConfigError::new(
        path,
        format!("unknown key (expected one of: {})", names.join(", ")),
    )
}

fn check_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError::new(
            format!("tokens.{name}"),
            "a token name is letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

/// `FRESHTOKEN_` and the parts upper-cased, `-` and `.` as `_`.
pub fn env_name(parts: &[&str]) -> String {
    let mut name = ENV_PREFIX.to_owned();
    let joined = parts.join("_");
    name.extend(joined.chars().map(|c| match c {
        '-' | '.' => '_',
        c => c.to_ascii_uppercase(),
    }));
    name
}

/// Overlays the environment on `table`; returns the secrets found there,
/// keyed by `(token, key)`.
fn apply_env(
    table: &mut toml::Table,
    env: &Env,
) -> Result<BTreeMap<(String, String), Secret>, ConfigError> {
    let get = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut used: Vec<String> = Vec::new();
    let mut secrets = BTreeMap::new();

    let mut names: Vec<String> = table
        .get("tokens")
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let list = env_name(&["token_names"]);
    if let Some(extra) = get(&list) {
        used.push(list.clone());
        for name in extra.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            check_name(name).map_err(|e| ConfigError::new(list.clone(), e.message))?;
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    // Two names that map to one variable name would share settings.
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if env_name(&["tokens", a]) == env_name(&["tokens", b]) {
                return Err(ConfigError::new(
                    format!("tokens.{b}"),
                    format!("its environment variables would be those of tokens.{a}"),
                ));
            }
        }
    }

    for (key, kind) in AGENT_KEYS {
        let var = env_name(&["agent", key]);
        if let Some(value) = get(&var) {
            used.push(var.clone());
            let mut value = env_value(&var, *kind, value)?;
            check_value(&var, *kind, &mut value)?;
            let agent = table
                .entry("agent")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(agent) = agent.as_table_mut() {
                agent.insert((*key).to_owned(), value);
            }
        }
    }

    for name in &names {
        for (key, kind) in TOKEN_KEYS {
            let var = env_name(&["tokens", name, key]);
            let Some(value) = get(&var) else { continue };
            used.push(var.clone());
            let mut value = env_value(&var, *kind, value)?;
            check_value(&var, *kind, &mut value)?;
            let token = token_table(table, name);
            match key.split_once('.') {
                Some((inner, k)) => {
                    let inner = token
                        .entry(inner)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let Some(inner) = inner.as_table_mut() {
                        inner.insert(k.to_owned(), value);
                    }
                }
                None => {
                    token.insert((*key).to_owned(), value);
                }
            }
        }
        for key in ENV_ONLY {
            let var = env_name(&["tokens", name, key]);
            if let Some(value) = get(&var) {
                used.push(var.clone());
                secrets.insert((name.clone(), (*key).to_owned()), Secret(value.clone()));
                token_table(table, name);
            }
        }
        // A token declared only by FRESHTOKEN_TOKEN_NAMES still exists.
        token_table(table, name);
    }

    for (var, _) in env {
        let ours =
            var.starts_with(&env_name(&["agent_"])) || var.starts_with(&env_name(&["tokens_"]));
        if ours && !used.contains(var) {
            return Err(ConfigError::new(
                var.clone(),
                "names no setting (unknown key, or a token that is not configured: \
                 add it to FRESHTOKEN_TOKEN_NAMES)",
            ));
        }
    }
    Ok(secrets)
}

fn token_table<'a>(table: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    let tokens = table
        .entry("tokens")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !tokens.is_table() {
        *tokens = toml::Value::Table(toml::Table::new());
    }
    let Some(tokens) = tokens.as_table_mut() else {
        unreachable!("just made a table")
    };
    let token = tokens
        .entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !token.is_table() {
        *token = toml::Value::Table(toml::Table::new());
    }
    match token.as_table_mut() {
        Some(t) => t,
        None => unreachable!("just made a table"),
    }
}

fn env_value(var: &str, kind: Kind, value: &str) -> Result<toml::Value, ConfigError> {
    Ok(match kind {
        Kind::Str | Kind::Mode => toml::Value::String(value.to_owned()),
        Kind::Int => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| ConfigError::new(var, "must be a whole number"))?,
        ),
        Kind::Bool => toml::Value::Boolean(match value.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(ConfigError::new(var, "must be true or false")),
        }),
    })
}

/// Reads a secret file, refusing one that group or others may read.
fn read_secret_file(key: &str, path: &Path, check_mode: bool) -> Result<Secret, ConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(ConfigError::new(
            key,
            format!("{shown} is not a regular file"),
        ));
    }
    #[cfg(unix)]
    if check_mode {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::new(
                key,
                format!("{shown} is readable by group or others (mode {mode:04o}): chmod 600 it"),
            ));
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {shown}: {e}")))?;
    let value = text.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        return Err(ConfigError::new(key, format!("{shown} is empty")));
    }
    Ok(Secret(value))
}

/// A secret from `<key>_file`, `<key>_env` or the `FRESHTOKEN_..._<KEY>`
/// variable: at most one of them.
fn secret(
    name: &str,
    key: &str,
    file: Option<&Path>,
    env_var: Option<&str>,
    from_env: &BTreeMap<(String, String), Secret>,
    env: &Env,
) -> Result<Option<Secret>, ConfigError> {
    let direct = from_env.get(&(name.to_owned(), key.to_owned()));
    let given = usize::from(file.is_some())
        + usize::from(env_var.is_some())
        + usize::from(direct.is_some());
    if given > 1 {
        return Err(ConfigError::new(
            format!("tokens.{name}.{key}_file"),
            format!(
                "give only one of {key}_file, {key}_env and {}",
                env_name(&["tokens", name, key])
            ),
        ));
    }
    if let Some(path) = file {
        return read_secret_file(&format!("tokens.{name}.{key}_file"), path, true).map(Some);
    }
    if let Some(var) = env_var {
        let value = env.iter().rev().find(|(k, _)| k == var).map(|(_, v)| v);
        return match value {
            Some(v) if !v.is_empty() => Ok(Some(Secret(v.clone()))),
            _ => Err(ConfigError::new(
                format!("tokens.{name}.{key}_env"),
                format!("the environment variable {var} is not set"),
            )),
        };
    }
    Ok(direct.cloned())
}

fn resolve(
    name: &str,
    token: &TokenConfig,
    from_env: &BTreeMap<(String, String), Secret>,
    env: &Env,
    logging_in: bool,
) -> Result<Resolved, ConfigError> {
    let key = |k: &str| format!("tokens.{name}.{k}");
    let grant = match token.grant.as_deref() {
        None => Grant::ClientCredentials,
        Some(given) => Grant::ALL
            .into_iter()
            .find(|g| g.name() == given)
            .ok_or_else(|| {
                let names: Vec<String> = Grant::ALL
                    .iter()
                    .map(|g| format!("\"{}\"", g.name()))
                    .collect();
                ConfigError::new(key("grant"), format!("must be one of {}", names.join(", ")))
            })?,
    };
    check_grant_keys(name, token, grant, from_env)?;
    let (token_url, client_id, client_secret, refresh_token) = if grant.is_cloud() {
        // Filled in below from the source, once it is built.
        (String::new(), String::new(), None, None)
    } else {
        resolve_oauth(name, token, grant, from_env, env, logging_in)?
    };
    let (cloud_endpoint, identity_header) = cloud_settings(name, token, grant, env)?;
    let redis_url = check_outputs(name, token, env)?;
    let mut resolved = Resolved {
        name: name.to_owned(),
        config: token.clone(),
        grant,
        token_url,
        client_id,
        client_secret,
        refresh_token,
        redis_url,
        cloud_endpoint,
        identity_header,
    };
    if grant.is_cloud() {
        // Builds the source once, so that a bad value fails here, and
        // names the token by what it asks for (the cache's key).
        let (_, url) = crate::tokens::cloud_source(&resolved)?;
        resolved.token_url = url;
        resolved.client_id = grant.name().to_owned();
    }
    Ok(resolved)
}

/// Refuses the keys that `grant` does not take, rather than ignoring them
/// (a `token_url` on a metadata-server token is a mistake worth hearing
/// about).
fn check_grant_keys(
    name: &str,
    token: &TokenConfig,
    grant: Grant,
    from_env: &BTreeMap<(String, String), Secret>,
) -> Result<(), ConfigError> {
    let given = [
        ("token_url", token.token_url.is_some()),
        ("client_id", token.client_id.is_some()),
        ("client_secret_file", token.client_secret_file.is_some()),
        ("client_secret_env", token.client_secret_env.is_some()),
        (
            "client_assertion_file",
            token.client_assertion_file.is_some(),
        ),
        ("client_auth", token.client_auth.is_some()),
        ("refresh_token_file", token.refresh_token_file.is_some()),
        ("refresh_token_env", token.refresh_token_env.is_some()),
        (
            "device_authorization_url",
            token.device_authorization_url.is_some(),
        ),
        ("audience", token.audience.is_some()),
        ("scope", token.scope.is_some()),
        ("resource", token.resource.is_some()),
        ("metadata_host", token.metadata_host.is_some()),
        ("service_account", token.service_account.is_some()),
        ("identity_client_id", token.identity_client_id.is_some()),
        ("identity_object_id", token.identity_object_id.is_some()),
        ("identity_resource_id", token.identity_resource_id.is_some()),
        ("identity_endpoint", token.identity_endpoint.is_some()),
        ("identity_header_env", token.identity_header_env.is_some()),
    ];
    let secrets = ENV_ONLY.iter().map(|k| {
        (
            *k,
            from_env.contains_key(&(name.to_owned(), (*k).to_owned())),
        )
    });
    for (k, present) in given.into_iter().chain(secrets) {
        if present && !grant.takes(k) {
            let shown = if ENV_ONLY.contains(&k) {
                env_name(&["tokens", name, k])
            } else {
                format!("tokens.{name}.{k}")
            };
            return Err(ConfigError::new(
                shown,
                format!("does not apply to grant = \"{}\"", grant.name()),
            ));
        }
    }
    let identities = [
        token.identity_client_id.is_some(),
        token.identity_object_id.is_some(),
        token.identity_resource_id.is_some(),
    ];
    if identities.into_iter().filter(|given| *given).count() > 1 {
        return Err(ConfigError::new(
            format!("tokens.{name}.identity_client_id"),
            "name the managed identity by one of identity_client_id, identity_object_id and \
             identity_resource_id",
        ));
    }
    Ok(())
}

/// The variable holding an App Service token's identity header.
fn identity_header_var(token: &TokenConfig) -> &str {
    token
        .identity_header_env
        .as_deref()
        .unwrap_or("IDENTITY_HEADER")
}

/// A cloud grant's endpoint and secret: `metadata_host` or
/// `GCE_METADATA_HOST`; `identity_endpoint`, or for App Service
/// `IDENTITY_ENDPOINT`, and the identity header from its variable.
fn cloud_settings(
    name: &str,
    token: &TokenConfig,
    grant: Grant,
    env: &Env,
) -> Result<(Option<String>, Option<Secret>), ConfigError> {
    let key = |k: &str| format!("tokens.{name}.{k}");
    let var = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.trim().is_empty())
    };
    let platform = "App Service, Functions and Container Apps set it where a managed identity is \
                    enabled";
    Ok(match grant {
        Grant::GceMetadata => (
            token
                .metadata_host
                .clone()
                .or_else(|| var(freshtoken::source::GCE_METADATA_HOST_ENV)),
            None,
        ),
        Grant::AzureImds | Grant::AzureAppService if token.resource.is_none() => {
            return Err(ConfigError::new(
                key("resource"),
                "missing: the resource (App ID URI) the token is for",
            ))
        }
        Grant::AzureImds => (token.identity_endpoint.clone(), None),
        Grant::AzureAppService => {
            let endpoint = match token.identity_endpoint.clone() {
                Some(url) => url,
                None => var("IDENTITY_ENDPOINT").ok_or_else(|| {
                    ConfigError::new(
                        key("identity_endpoint"),
                        format!("missing, and IDENTITY_ENDPOINT is not set ({platform})"),
                    )
                })?,
            };
            let header_var = identity_header_var(token);
            let header = var(header_var).ok_or_else(|| {
                ConfigError::new(
                    key("identity_header_env"),
                    format!(
                        "the environment variable {header_var} is not set (IDENTITY_HEADER: \
                         {platform})"
                    ),
                )
            })?;
            (Some(endpoint), Some(Secret(header)))
        }
        Grant::ClientCredentials | Grant::RefreshToken => (None, None),
    })
}

/// An OAuth2 grant's endpoint, client and secrets.
fn resolve_oauth(
    name: &str,
    token: &TokenConfig,
    grant: Grant,
    from_env: &BTreeMap<(String, String), Secret>,
    env: &Env,
    logging_in: bool,
) -> Result<(String, String, Option<Secret>, Option<Secret>), ConfigError> {
    let key = |k: &str| format!("tokens.{name}.{k}");
    let token_url = token
        .token_url
        .clone()
        .ok_or_else(|| ConfigError::new(key("token_url"), "missing"))?;
    freshtoken::oauth2::check_token_url(&token_url)
        .map_err(|e| ConfigError::new(key("token_url"), e.to_string()))?;
    let client_id = token
        .client_id
        .clone()
        .ok_or_else(|| ConfigError::new(key("client_id"), "missing"))?;
    let client_secret = secret(
        name,
        "client_secret",
        token.client_secret_file.as_deref(),
        token.client_secret_env.as_deref(),
        from_env,
        env,
    )?;
    if let Some(path) = &token.client_assertion_file {
        // Exempt from the mode check: projected tokens are 0644 by design.
        std::fs::metadata(path).map_err(|e| {
            ConfigError::new(
                key("client_assertion_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        if client_secret.is_some() {
            return Err(ConfigError::new(
                key("client_assertion_file"),
                "give a client secret or an assertion file, not both",
            ));
        }
    }
    match token.client_auth.as_deref() {
        None | Some("basic") | Some("post") => {}
        Some(_) => {
            return Err(ConfigError::new(
                key("client_auth"),
                "must be \"basic\" or \"post\"",
            ))
        }
    }
    let missing_file = token
        .refresh_token_file
        .as_deref()
        .is_some_and(|p| std::fs::symlink_metadata(p).is_err());
    let refresh_token = if logging_in && missing_file {
        None
    } else {
        secret(
            name,
            "refresh_token",
            token.refresh_token_file.as_deref(),
            token.refresh_token_env.as_deref(),
            from_env,
            env,
        )?
    };
    if let Some(url) = &token.device_authorization_url {
        freshtoken::oauth2::check_token_url(url)
            .map_err(|e| ConfigError::new(key("device_authorization_url"), e.to_string()))?;
    }
    match grant {
        Grant::ClientCredentials => {
            if client_secret.is_none() && token.client_assertion_file.is_none() {
                return Err(ConfigError::new(
                    key("client_secret_file"),
                    "missing: client_credentials needs client_secret_file, client_secret_env \
                     or client_assertion_file",
                ));
            }
        }
        Grant::RefreshToken => {
            if refresh_token.is_none() && !logging_in {
                return Err(ConfigError::new(
                    key("refresh_token_file"),
                    "missing: refresh_token needs refresh_token_file or refresh_token_env",
                ));
            }
            // The authority rotates the refresh token: without a cache the
            // new one lives only in memory, and the next run presents the
            // spent one, which revokes the grant.
            if token.cache.is_none() {
                return Err(ConfigError::new(
                    key("cache"),
                    "missing: grant = \"refresh_token\" needs a cache (file, redis_url or \
                     redis_url_env) to keep the rotated refresh token across runs",
                ));
            }
        }
        Grant::GceMetadata | Grant::AzureImds | Grant::AzureAppService => {}
    }
    Ok((token_url, client_id, client_secret, refresh_token))
}

/// The token file's and the cache's settings; the Redis URL, if any.
fn check_outputs(
    name: &str,
    token: &TokenConfig,
    env: &Env,
) -> Result<Option<Secret>, ConfigError> {
    let key = |k: &str| format!("tokens.{name}.{k}");
    if let Some(file) = &token.file {
        if file.path.is_none() {
            return Err(ConfigError::new(key("file.path"), "missing"));
        }
        match file.format.as_deref() {
            None | Some("raw") | Some("header") | Some("json") => {}
            Some(_) => {
                return Err(ConfigError::new(
                    key("file.format"),
                    "must be \"raw\", \"header\" or \"json\"",
                ))
            }
        }
        if file.format.is_some() && file.template.is_some() {
            return Err(ConfigError::new(
                key("file.template"),
                "give a format or a template, not both",
            ));
        }
        if let Some(template) = &file.template {
            if !template.contains("{token}") {
                return Err(ConfigError::new(
                    key("file.template"),
                    "must contain {token}",
                ));
            }
        }
        if file.mode.is_some_and(|m| m > 0o7777) {
            return Err(ConfigError::new(
                key("file.mode"),
                "must be a file mode such as \"0600\"",
            ));
        }
    }
    let mut redis_url = None;
    if let Some(cache) = &token.cache {
        let backends = usize::from(cache.file.is_some())
            + usize::from(cache.redis_url.is_some() || cache.redis_url_env.is_some());
        if backends != 1 || (cache.redis_url.is_some() && cache.redis_url_env.is_some()) {
            return Err(ConfigError::new(
                key("cache"),
                "give one of file, redis_url and redis_url_env",
            ));
        }
        if let Some(url) = &cache.redis_url {
            if url_has_password(url) {
                return Err(ConfigError::new(
                    key("cache.redis_url"),
                    "holds a password: put the URL in an environment variable named by redis_url_env",
                ));
            }
            redis_url = Some(Secret(url.clone()));
        }
        if let Some(var) = &cache.redis_url_env {
            match env.iter().rev().find(|(k, _)| k == var) {
                Some((_, v)) if !v.is_empty() => redis_url = Some(Secret(v.clone())),
                _ => {
                    return Err(ConfigError::new(
                        key("cache.redis_url_env"),
                        format!("the environment variable {var} is not set"),
                    ))
                }
            }
        }
    }
    if token
        .env_var
        .as_deref()
        .is_some_and(|v| v.is_empty() || v.contains('=') || v.contains('\0'))
    {
        return Err(ConfigError::new(key("env_var"), "is not a variable name"));
    }
    Ok(redis_url)
}

fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// Checks what only the agent needs: every token file's directory can be
/// written (creating it, mode 0700, when missing).
pub fn check_sinks(loaded: &Loaded) -> Result<(), ConfigError> {
    for (name, token) in &loaded.tokens {
        let Some(path) = token.config.file.as_ref().and_then(|f| f.path.as_ref()) else {
            continue;
        };
        let key = format!("tokens.{name}.file.path");
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(&dir).map_err(|e| {
                ConfigError::new(
                    &key,
                    format!("cannot create the directory {}: {e}", dir.display()),
                )
            })?;
        }
        tempfile::Builder::new()
            .prefix(".freshtoken-check")
            .tempfile_in(&dir)
            .map_err(|e| {
                // The OS's reason without tempfile's path of the probe.
                let why = match e.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::from(e.kind()),
                };
                ConfigError::new(
                    &key,
                    format!("the directory {} is not writable: {why}", dir.display()),
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    #[cfg(unix)]
    fn login_loads_its_token_before_the_refresh_token_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let token = |name: &str| {
            format!(
                "[tokens.{name}]\ngrant = \"refresh_token\"\ntoken_url = \"http://127.0.0.1:1/token\"\n\
                 client_id = \"cli\"\nrefresh_token_file = \"{name}.refresh\"\n\
                 device_authorization_url = \"http://127.0.0.1:1/device\"\n\
                 [tokens.{name}.cache]\nfile = \"{name}.json\"\n"
            )
        };
        let cfg = write(
            dir.path(),
            "c.toml",
            &format!("{}{}", token("a"), token("b")),
        );
        // The agent and the other commands need the file.
        let err = load(Some(&cfg), &env(&[])).unwrap_err();
        assert!(err.key.ends_with("refresh_token_file"), "{err:?}");
        // Logging in to `a` does not need a's, but still b's.
        let err = load_for_login(Some(&cfg), &env(&[]), "a").unwrap_err();
        assert_eq!(err.key, "tokens.b.refresh_token_file");
        std::fs::write(dir.path().join("b.refresh"), "rt-b").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("b.refresh"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let loaded = load_for_login(Some(&cfg), &env(&[]), "a").unwrap();
        assert!(loaded.tokens["a"].refresh_token.is_none());
        assert_eq!(
            loaded.tokens["a"]
                .config
                .device_authorization_url
                .as_deref(),
            Some("http://127.0.0.1:1/device")
        );
        // Plain http beyond loopback is refused for the device endpoint too.
        let cfg = write(
            dir.path(),
            "d.toml",
            &token("a").replace("http://127.0.0.1:1/device", "http://auth.example/device"),
        );
        let err = load_for_login(Some(&cfg), &env(&[]), "a").unwrap_err();
        assert_eq!(err.key, "tokens.a.device_authorization_url");
    }

    #[test]
    fn env_overrides_and_declares() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(
            dir.path(),
            "c.toml",
            "[tokens.api]\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"a\"\n",
        );
        let loaded = load(
            Some(&cfg),
            &env(&[
                ("FRESHTOKEN_TOKENS_API_CLIENT_ID", "b"),
                ("FRESHTOKEN_TOKENS_API_CLIENT_SECRET", "s3cret"),
                ("FRESHTOKEN_TOKENS_API_FILE_PATH", "/tmp/x"),
                ("FRESHTOKEN_TOKENS_API_FILE_MODE", "0640"),
                ("FRESHTOKEN_TOKEN_NAMES", "other"),
                (
                    "FRESHTOKEN_TOKENS_OTHER_TOKEN_URL",
                    "http://127.0.0.1:1/token",
                ),
                ("FRESHTOKEN_TOKENS_OTHER_CLIENT_ID", "o"),
                ("FRESHTOKEN_TOKENS_OTHER_CLIENT_SECRET_ENV", "MY_SECRET"),
                ("MY_SECRET", "x"),
                ("FRESHTOKEN_AGENT_LISTEN", "127.0.0.1:0"),
            ]),
        )
        .unwrap();
        let api = &loaded.tokens["api"];
        assert_eq!(api.client_id, "b");
        assert_eq!(api.client_secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(api.config.file.as_ref().unwrap().mode, Some(0o640));
        assert_eq!(
            loaded.tokens["other"]
                .client_secret
                .as_ref()
                .unwrap()
                .expose(),
            "x"
        );
        assert_eq!(loaded.config.agent.listen.as_deref(), Some("127.0.0.1:0"));
        assert!(!format!("{loaded:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[tokens.api]\nclientid = \"x\"\n", "tokens.api.clientid"),
            (
                "[tokens.api]\nclient_secret = \"hunter2\"\n",
                "tokens.api.client_secret",
            ),
            ("[agent]\nsokcet = \"x\"\n", "agent.sokcet"),
            ("[tokens.api.file]\npth = \"x\"\n", "tokens.api.file.pth"),
            ("[tokens.api]\ntoken_url = 3\n", "tokens.api.token_url"),
            (
                "[tokens.api]\ntoken_url = \"http://127.0.0.1:1/t\"\n",
                "tokens.api.client_id",
            ),
        ];
        for (text, key) in cases {
            let cfg = write(dir.path(), "c.toml", text);
            let err = load(Some(&cfg), &Env::new()).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(!err.to_string().contains("hunter2"));
        }
        let err = load(None, &env(&[("FRESHTOKEN_AGENT_SOKCET", "x")])).unwrap_err();
        assert_eq!(err.key, "FRESHTOKEN_AGENT_SOKCET");
    }

    #[test]
    fn a_mode_is_octal_in_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let head = "[tokens.api]\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"a\"\n\
                    client_secret_env = \"S\"\n[tokens.api.file]\npath = \"/tmp/x\"\n";
        let mode = |file: &str, var: Option<&str>| {
            let cfg = write(dir.path(), "c.toml", &format!("{head}{file}"));
            let mut e = vec![("S".to_owned(), "x".to_owned())];
            if let Some(v) = var {
                e.push(("FRESHTOKEN_TOKENS_API_FILE_MODE".to_owned(), v.to_owned()));
            }
            load(Some(&cfg), &e).map(|l| l.tokens["api"].config.file.as_ref().unwrap().mode)
        };
        for text in ["0640", "640", "0o640"] {
            assert_eq!(mode(&format!("mode = \"{text}\"\n"), None), Ok(Some(0o640)));
            assert_eq!(mode("", Some(text)), Ok(Some(0o640)));
        }
        for bad in [
            "mode = 640\n",
            "mode = 0o640\n",
            "mode = \"0968\"\n",
            "mode = \"-1\"\n",
        ] {
            let err = mode(bad, None).unwrap_err();
            assert_eq!(err.key, "tokens.api.file.mode", "{bad}: {err}");
        }
        assert!(mode("", Some("99999")).is_err());
    }

    #[test]
    fn cloud_grants_resolve_from_the_platform_variables() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(
            dir.path(),
            "c.toml",
            "[tokens.app]\ngrant = \"azure_app_service\"\nresource = \"https://vault.azure.net\"\n\
             identity_object_id = \"0b1d\"\n\
             [tokens.gce]\ngrant = \"gce_metadata\"\nscope = \"a,b c\"\n",
        );
        let platform = env(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
            ("IDENTITY_HEADER", "hdr-TOPSECRET"),
            ("GCE_METADATA_HOST", "127.0.0.1:8089"),
        ]);
        let loaded = load(Some(&cfg), &platform).unwrap();
        let app = &loaded.tokens["app"];
        assert_eq!(app.grant, Grant::AzureAppService);
        assert_eq!(app.client_id, "azure_app_service");
        // The source's URL names the token (and its cache entry).
        assert_eq!(
            app.token_url,
            "http://127.0.0.1:41741/msi/token?resource=https%3A%2F%2Fvault.azure.net\
             &api-version=2019-08-01&principal_id=0b1d"
        );
        assert_eq!(
            loaded.tokens["gce"].token_url,
            "http://127.0.0.1:8089/computeMetadata/v1/instance/service-accounts/default/token\
             ?scopes=a%2Cb%2Cc"
        );
        assert!(!format!("{loaded:?}").contains("TOPSECRET"));
        // exec takes the identity header out of its child's environment,
        // from the variable named by identity_header_env when there is one.
        assert!(secret_variables(&platform, Some(&loaded)).contains(&"IDENTITY_HEADER".to_owned()));
        let mut renamed = platform.clone();
        renamed.push((
            "FRESHTOKEN_TOKENS_APP_IDENTITY_HEADER_ENV".into(),
            "MSI_SECRET".into(),
        ));
        renamed.push(("MSI_SECRET".into(), "other-TOPSECRET".into()));
        let loaded = load(Some(&cfg), &renamed).unwrap();
        assert_eq!(
            loaded.tokens["app"]
                .identity_header
                .as_ref()
                .map(Secret::expose),
            Some("other-TOPSECRET")
        );
        assert!(secret_variables(&renamed, Some(&loaded)).contains(&"MSI_SECRET".to_owned()));
        assert!(secret_variables(&renamed, None).contains(&"MSI_SECRET".to_owned()));
    }

    #[test]
    fn redis_passwords_stay_out_of_the_file() {
        assert!(url_has_password("redis://:pw@host/"));
        assert!(url_has_password("redis://user:pw@host/"));
        assert!(!url_has_password("redis://host:6379/0"));
    }
}
