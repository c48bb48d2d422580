//! `/metrics`: Prometheus text rendered by `metrics-exporter-prometheus`
//! from the `metrics` facade, so the library's own metrics (its `metrics`
//! feature) and the agent's appear together.
//!
//! The library's series (its `metrics` feature: `freshtoken_fetches_total`,
//! `freshtoken_token_expires_in_seconds`, `freshtoken_refresh_state`, ...,
//! documented in `freshtoken::metrics`) carry the token's name as their
//! `refresher` label; their gauges move at every heartbeat of the driver
//! (`agent.heartbeat_secs`, default 30).
//!
//! The agent's own series, updated at every scrape, each with a `# HELP`
//! line (labels: the token's configured name only). Alert on
//! `freshtoken_agent_token_expires_in_seconds` (or `_valid`): it is
//! computed at scrape time, where the library's
//! `freshtoken_token_expires_in_seconds` moves at the driver's heartbeat
//! and may lag by up to `agent.heartbeat_secs`:
//!
//! | name | type | meaning |
//! | --- | --- | --- |
//! | `freshtoken_agent_token_valid` | gauge | 1 while the token is valid, else 0 |
//! | `freshtoken_agent_token_expires_in_seconds` | gauge | seconds until the served token expires (negative once expired) |
//! | `freshtoken_agent_token_expires_at_timestamp_seconds` | gauge | when it expires, Unix seconds |
//! | `freshtoken_agent_token_file_writes_total` | counter | token file rewrites |
//! | `freshtoken_agent_token_file_errors_total` | counter | failed token file writes |

use std::sync::OnceLock;

use crate::http::Reply;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the global `metrics` recorder (once
/// per process; later calls do nothing). Returns whether /metrics works.
pub fn install() -> bool {
    if HANDLE.get().is_some() {
        return true;
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            describe();
            HANDLE.set(handle).is_ok()
        }
        Err(_) => false,
    }
}

/// The agent's series, each with its `# HELP` line.
pub const SERIES: &[(&str, &str)] = &[
    (
        "freshtoken_agent_token_valid",
        "1 while the agent holds a valid token of this name, else 0",
    ),
    (
        "freshtoken_agent_token_expires_in_seconds",
        "Seconds until the served token expires, at scrape time (negative once expired)",
    ),
    (
        "freshtoken_agent_token_expires_at_timestamp_seconds",
        "When the served token expires, Unix seconds",
    ),
    (
        "freshtoken_agent_token_file_writes_total",
        "Token file rewrites",
    ),
    (
        "freshtoken_agent_token_file_errors_total",
        "Failed token file writes",
    ),
];

/// Gives every agent series its `# HELP` text.
fn describe() {
    for (name, help) in SERIES {
        if name.ends_with("_total") {
            metrics::describe_counter!(*name, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
}

/// The gauges of one token, set before each render; `expires` is its
/// expiry and the milliseconds left by whichever clock says sooner.
pub fn record_token(
    name: &str,
    valid: bool,
    expires: Option<(freshtoken::Timestamp, i64)>,
    writes: u64,
    errors: u64,
) {
    let label = [("token", name.to_owned())];
    metrics::gauge!("freshtoken_agent_token_valid", &label).set(if valid { 1.0 } else { 0.0 });
    if let Some((at, left_ms)) = expires {
        let left = left_ms as f64 / 1000.0;
        metrics::gauge!("freshtoken_agent_token_expires_in_seconds", &label).set(left);
        metrics::gauge!(
            "freshtoken_agent_token_expires_at_timestamp_seconds",
            &label
        )
        .set(at.as_millis() as f64 / 1000.0);
    }
    metrics::counter!("freshtoken_agent_token_file_writes_total", &label).absolute(writes);
    metrics::counter!("freshtoken_agent_token_file_errors_total", &label).absolute(errors);
}

/// The rendered metrics, or 503 when the recorder is not installed.
pub fn response(text: Option<String>) -> Reply {
    match text {
        Some(text) => Reply::text(200, "text/plain; version=0.0.4", text),
        None => Reply::text(503, "text/plain", "metrics are not available\n".to_owned()),
    }
}

/// Renders every metric.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}
