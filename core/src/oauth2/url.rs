//! Which endpoint URLs may be used: https, or http to this machine.
//!
//! The same rule holds for token endpoints given by hand and for those a
//! discovery document names (see [`super::discovery`]).

use std::fmt;
// `core::net`: address parsing only, no sockets.
use core::net::{Ipv4Addr, Ipv6Addr};

/// Why a token endpoint URL was refused.
///
/// Its `Display` names the scheme and host only: a URL can carry
/// credentials in its user-info part, which is never shown.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// Not an absolute `http://` or `https://` URL with a host.
    Invalid {
        /// What is wrong.
        reason: &'static str,
    },
    /// `http://` to a host that is not a loopback address: the client
    /// secret and the tokens would cross the network in clear text.
    Insecure {
        /// The host that was named.
        host: String,
    },
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Invalid { reason } => write!(f, "invalid token endpoint URL: {reason}"),
            UrlError::Insecure { host } => write!(
                f,
                "refusing plain http to {host}: token endpoints must use https unless the host \
                 is a loopback address (127.0.0.0/8, ::1, localhost)"
            ),
        }
    }
}

impl std::error::Error for UrlError {}

/// Accepts `https://` URLs, and `http://` URLs whose host is loopback.
///
/// The URL is parsed as an [`http::Uri`], the type HTTP clients (ureq,
/// hyper) connect with, so the host checked here is the host a client
/// reaches; a transport can check the very value it sends with
/// [`parse_token_url`] or [`check_token_uri`].
///
/// ```
/// use freshtoken_core::oauth2::{check_token_url, UrlError};
///
/// assert!(check_token_url("https://auth.example.com/oauth2/token").is_ok());
/// assert!(check_token_url("http://127.0.0.1:8080/token").is_ok());
/// assert!(check_token_url("http://[::1]:8080/token").is_ok());
/// assert!(check_token_url("http://localhost/token").is_ok());
/// assert!(matches!(check_token_url("http://auth.example.com/token"), Err(UrlError::Insecure { .. })));
/// assert!(matches!(check_token_url("ftp://x/y"), Err(UrlError::Invalid { .. })));
/// ```
pub fn check_token_url(url: &str) -> Result<(), UrlError> {
    parse_token_url(url).map(drop)
}

/// Parses `url` and checks it as [`check_token_url`] does, returning the
/// [`http::Uri`] to connect with: what a transport sends is what was
/// checked.
///
/// ```
/// use freshtoken_core::oauth2::parse_token_url;
///
/// let uri = parse_token_url("https://auth.example.com/oauth2/token").unwrap();
/// assert_eq!(uri.host(), Some("auth.example.com"));
/// assert!(parse_token_url("http://auth.example.com/token").is_err());
/// ```
pub fn parse_token_url(url: &str) -> Result<http::Uri, UrlError> {
    let uri = parse(url)?;
    check_token_uri(&uri)?;
    Ok(uri)
}

/// The check of [`check_token_url`] on an already parsed URI.
///
/// ```
/// use freshtoken_core::oauth2::{check_token_uri, UrlError};
///
/// let uri: http::Uri = "http://10.0.0.1/token".parse().unwrap();
/// assert!(matches!(check_token_uri(&uri), Err(UrlError::Insecure { .. })));
/// ```
pub fn check_token_uri(uri: &http::Uri) -> Result<(), UrlError> {
    let scheme = uri.scheme_str().ok_or(UrlError::Invalid {
        reason: "it has no scheme",
    })?;
    let host = host_of(uri)?;
    if scheme.eq_ignore_ascii_case("https") {
        return Ok(());
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(UrlError::Invalid {
            reason: "the scheme must be https (or http to a loopback address)",
        });
    }
    if is_loopback(host) {
        Ok(())
    } else {
        Err(UrlError::Insecure {
            host: host.to_owned(),
        })
    }
}

/// Whether the URL's host is a loopback address (127.0.0.0/8, ::1,
/// `localhost`); transports send such requests without a proxy.
///
/// ```
/// use freshtoken_core::oauth2::has_loopback_host;
/// assert!(has_loopback_host("http://127.0.0.1:9/t"));
/// assert!(!has_loopback_host("https://auth.example.com/t"));
/// ```
pub fn has_loopback_host(url: &str) -> bool {
    parse(url).is_ok_and(|uri| uri_has_loopback_host(&uri))
}

/// [`has_loopback_host`] on an already parsed URI.
///
/// ```
/// use freshtoken_core::oauth2::uri_has_loopback_host;
/// assert!(uri_has_loopback_host(&"http://[::1]:9/t".parse().unwrap()));
/// ```
pub fn uri_has_loopback_host(uri: &http::Uri) -> bool {
    host_of(uri).is_ok_and(is_loopback)
}

fn parse(url: &str) -> Result<http::Uri, UrlError> {
    // http::Uri's own errors are not shown: they could quote the URL.
    let uri: http::Uri = url.parse().map_err(|_| UrlError::Invalid {
        reason: "it is not a valid absolute URL",
    })?;
    if uri.scheme().is_none() {
        return Err(UrlError::Invalid {
            reason: "it has no scheme",
        });
    }
    Ok(uri)
}

/// The host, without the brackets of an IPv6 literal (user-info is never
/// part of it).
fn host_of(uri: &http::Uri) -> Result<&str, UrlError> {
    let host = uri.host().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or(UrlError::Invalid {
            reason: "unterminated IPv6 address",
        })?,
        None => host,
    };
    if host.is_empty() {
        return Err(UrlError::Invalid {
            reason: "it has no host",
        });
    }
    Ok(host)
}

fn is_loopback(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rules() {
        for ok in [
            "https://a.example/t",
            "HTTPS://a.example",
            "http://127.0.0.1/t",
            "http://127.9.8.7:1/t",
            "http://[::1]/t",
            "http://[::ffff:127.0.0.1]:80/t",
            "http://LOCALHOST.:99/t",
            "http://user:pw@127.0.0.1/t",
        ] {
            assert_eq!(check_token_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/t",
            "http://localhost.example.com/t",
            "http://127.0.0.1.nip.io/t",
            "http://[::2]/t",
            "http://127.0.0.1@evil.example/t",
        ] {
            assert!(
                matches!(check_token_url(bad), Err(UrlError::Insecure { .. })),
                "{bad}"
            );
        }
        for bad in [
            "",
            "127.0.0.1",
            "http://",
            "http://[::1/t",
            "file:///etc/passwd",
            "https://a.example/t x",
            "https://a.example\r\n/t",
        ] {
            assert!(
                matches!(check_token_url(bad), Err(UrlError::Invalid { .. })),
                "{bad}"
            );
        }
        let e = check_token_url("http://user:hunter2@10.0.0.1/t").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }
}
