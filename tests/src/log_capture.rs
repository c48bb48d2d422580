//! A tracing subscriber that writes every field of every span and event
//! into one string, for tests that prove no secret is ever logged.
//!
//! ```
//! use freshtoken_tests::log_capture::Capture;
//! use std::sync::{Arc, Mutex};
//!
//! let log = Arc::new(Mutex::new(String::new()));
//! tracing::subscriber::with_default(Capture(log.clone()), || {
//!     tracing::warn!(answer = 42, "said");
//! });
//! assert!(log.lock().unwrap().contains("answer=42"));
//! ```

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Appends each span (`span`, its name and fields), each later record of
/// span fields (`record` and the fields) and each event (its level, target
/// and fields) to the string, one per line.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<String>>);

impl Capture {
    fn out(&self) -> std::sync::MutexGuard<'_, String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut out = self.out();
        let _ = write!(out, "\nspan {}", span.metadata().name());
        span.record(&mut Fields(&mut out));
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut out = self.out();
        out.push_str("\nrecord");
        values.record(&mut Fields(&mut out));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut out = self.out();
        let meta = event.metadata();
        let _ = write!(out, "\n{} {}", meta.level(), meta.target());
        event.record(&mut Fields(&mut out));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
