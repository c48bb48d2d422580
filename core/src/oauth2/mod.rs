//! The OAuth2 token endpoint protocol, pure: build the request, parse the
//! answer, classify the failure.
//!
//! No I/O and no clock: a [`TokenRequest`] turns a
//! [`FetchRequest`](crate::FetchRequest) into an [`HttpRequest`] (method,
//! URL, headers, body bytes) that any HTTP client can send, and turns the
//! [`HttpResponse`] it got back into a [`TokenResponse`](crate::TokenResponse)
//! or a [`FetchError`](crate::FetchError) whose kind tells the machine how
//! to retry. The `freshtoken` crate's `oauth2` module adds the transport.
//!
//! What is covered: the client credentials grant (RFC 6749 4.4) with
//! `scope`, `audience`, RFC 8707 `resource` indicators and any extra
//! parameters; the refresh-token grant (RFC 6749 6) with rotation (a new
//! refresh token in the answer is handed to the machine, which stores it
//! before publishing); client authentication `client_secret_basic`,
//! `client_secret_post` and `none`; form or JSON bodies; answers per RFC
//! 6749 5.1/5.2, `Retry-After` and `Date`.
//!
//! Beyond client secrets: `private_key_jwt` and `client_secret_jwt` client
//! assertions (RFC 7523 2.2; the JOSE header, claims and compact form in
//! [`assertion`], the signature in the `freshtoken` crate), mTLS client
//! authentication (RFC 8705), the JWT-bearer grant (RFC 7523 2.1) and token
//! exchange (RFC 8693), with the per-fetch credentials in
//! [`FetchCredentials`]; authorization server metadata (RFC 8414, OpenID
//! Connect Discovery) in [`discovery`].
//!
//! ```
//! use freshtoken_core::oauth2::{HttpResponse, TokenRequest};
//! use freshtoken_core::{ClientSecret, FetchRequest, Timestamp};
//!
//! let request = TokenRequest::client_credentials("https://auth.example/token", "id", ClientSecret::new("s"));
//! let http = request.build(&FetchRequest::first()).unwrap();
//! // ... send `http` with any client, then:
//! let answer = HttpResponse::new(200, vec![], br#"{"access_token":"at","expires_in":300}"#.to_vec());
//! let token = request.parse(&answer, Timestamp::from_secs(1_000)).unwrap();
//! assert_eq!(token.expires_in, Some(300));
//! ```

pub mod assertion;
pub mod discovery;
pub mod form;
mod redact;
mod request;
mod response;
mod url;

pub use redact::{redacted_excerpt, redacted_url};
pub use request::{
    BodyFormat, ClientAuth, FetchCredentials, GrantKind, HttpRequest, TokenRequest,
    CLIENT_ASSERTION_TYPE_JWT_BEARER, DEFAULT_MAX_RESPONSE_BYTES,
};
pub use response::{classify, parse_http_date, parse_response, parse_retry_after, HttpResponse};
pub use url::{
    check_token_uri, check_token_url, has_loopback_host, parse_token_url, uri_has_loopback_host,
    UrlError,
};
