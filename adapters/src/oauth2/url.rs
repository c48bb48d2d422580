//! Which token endpoint URLs may be used: the rule lives in the pure core
//! (discovery documents are checked with it too); re-exported here.

pub use freshtoken_core::oauth2::{check_token_url, UrlError};
