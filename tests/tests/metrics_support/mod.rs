//! A recording exporter for the metrics tests: a real `metrics::Recorder`,
//! installed as the process's global recorder (the drivers record from
//! their own threads), that keeps every counter, gauge and histogram by
//! name and labels, and reads them without resetting anything. Tests in
//! one binary run at once, so each uses its own refresher name and reads
//! only the series with that `refresher` label.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// How long a wait may take before the test is declared hung.
pub const HUNG: Duration = Duration::from_secs(20);

type Labels = BTreeMap<String, String>;

#[derive(Default)]
struct Values {
    counters: HashMap<(String, Labels), Arc<AtomicU64>>,
    gauges: HashMap<(String, Labels), Arc<GaugeCell>>,
    histograms: HashMap<(String, Labels), Arc<Samples>>,
    descriptions: HashMap<String, (Option<Unit>, String)>,
}

#[derive(Default)]
struct GaugeCell(AtomicU64);

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some((f64::from_bits(b) + value).to_bits())
            });
    }
    fn decrement(&self, value: f64) {
        self.increment(-value)
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value)
    }
}

struct CounterCell(Arc<AtomicU64>);

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

/// The recording exporter.
#[derive(Clone, Default)]
pub struct Recording(Arc<Mutex<Values>>);

fn split(key: &Key) -> (String, Labels) {
    let labels = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    (key.name().to_owned(), labels)
}

impl Recorder for Recording {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description)
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = self
            .0
            .lock()
            .unwrap()
            .counters
            .entry(split(key))
            .or_default()
            .clone();
        Counter::from_arc(Arc::new(CounterCell(cell)))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = self
            .0
            .lock()
            .unwrap()
            .gauges
            .entry(split(key))
            .or_default()
            .clone();
        Gauge::from_arc(cell)
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let cell = self
            .0
            .lock()
            .unwrap()
            .histograms
            .entry(split(key))
            .or_default()
            .clone();
        Histogram::from_arc(cell)
    }
}

impl Recording {
    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0
            .lock()
            .unwrap()
            .descriptions
            .insert(key.as_str().to_owned(), (unit, description.to_string()));
    }

    /// The process's recorder, installed on first use.
    pub fn global() -> Recording {
        static GLOBAL: OnceLock<Recording> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let recording = Recording::default();
                metrics::set_global_recorder(recording.clone()).expect("the first recorder");
                recording
            })
            .clone()
    }

    /// A view of the series of one refresher.
    pub fn refresher(&self, name: &str) -> View {
        View {
            recording: self.clone(),
            refresher: name.to_owned(),
        }
    }

    /// The sum of the counters named `name` whose labels include `want`,
    /// whatever their refresher (for the metrics that have none).
    pub fn counter_without_refresher(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        let values = self.0.lock().unwrap();
        values
            .counters
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    /// The unit and help text of a metric, if it was described.
    pub fn description(&self, name: &str) -> Option<(Option<Unit>, String)> {
        self.0.lock().unwrap().descriptions.get(name).cloned()
    }
}

/// The series of one refresher.
#[derive(Clone)]
pub struct View {
    recording: Recording,
    refresher: String,
}

impl View {
    fn matches(&self, labels: &Labels, want: &[(&str, &str)]) -> bool {
        labels.get("refresher").map(String::as_str) == Some(self.refresher.as_str())
            && want
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    }

    /// The sum of the counters named `name` whose labels include `want`.
    pub fn counter(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        let values = self.recording.0.lock().unwrap();
        values
            .counters
            .iter()
            .filter(|((n, l), _)| n == name && self.matches(l, want))
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    /// The gauge named `name` with labels including `want`, if set.
    pub fn gauge(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let values = self.recording.0.lock().unwrap();
        let mut found = values
            .gauges
            .iter()
            .filter(|((n, l), _)| n == name && self.matches(l, want));
        let (_, g) = found.next()?;
        assert!(found.next().is_none(), "{name} {want:?} is ambiguous");
        Some(f64::from_bits(g.0.load(Ordering::SeqCst)))
    }

    /// Every sample of the histograms named `name` with labels including `want`.
    pub fn samples(&self, name: &str, want: &[(&str, &str)]) -> Vec<f64> {
        let values = self.recording.0.lock().unwrap();
        values
            .histograms
            .iter()
            .filter(|((n, l), _)| n == name && self.matches(l, want))
            .flat_map(|(_, h)| h.0.lock().unwrap().clone())
            .collect()
    }

    /// Every label set recorded for this refresher (for the bounded-labels
    /// check), as `name{k=v,...}` strings.
    pub fn series(&self) -> Vec<String> {
        let values = self.recording.0.lock().unwrap();
        let keys = values
            .counters
            .keys()
            .chain(values.gauges.keys())
            .chain(values.histograms.keys());
        let mut out: Vec<String> = keys
            .filter(|(_, l)| self.matches(l, &[]))
            .map(|(n, l)| {
                let labels: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{n}{{{}}}", labels.join(","))
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until `cond` holds, calling `step` between checks (to move a
    /// manual clock and wake the driver); panics after [`HUNG`].
    pub fn until(&self, what: &str, mut step: impl FnMut(), cond: impl Fn(&View) -> bool) {
        let give_up = Instant::now() + HUNG;
        while !cond(self) {
            assert!(
                Instant::now() < give_up,
                "timed out waiting for {what}; series: {:#?}",
                self.series_with_values()
            );
            step();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The series with their current values, for failure messages.
    pub fn series_with_values(&self) -> Vec<String> {
        let values = self.recording.0.lock().unwrap();
        let mut out = Vec::new();
        for ((n, l), c) in &values.counters {
            if self.matches(l, &[]) {
                out.push(format!("{n}{l:?} = {}", c.load(Ordering::SeqCst)));
            }
        }
        for ((n, l), g) in &values.gauges {
            if self.matches(l, &[]) {
                out.push(format!(
                    "{n}{l:?} = {}",
                    f64::from_bits(g.0.load(Ordering::SeqCst))
                ));
            }
        }
        for ((n, l), h) in &values.histograms {
            if self.matches(l, &[]) {
                out.push(format!("{n}{l:?} = {:?}", h.0.lock().unwrap()));
            }
        }
        out.sort();
        out
    }
}

/// Every label value a driver may record, besides the refresher's name:
/// the metrics' labels are bounded (no token ids, no URLs).
pub const ALLOWED_LABEL_VALUES: &[&str] = &[
    "success",
    "error",
    "none",
    "transient",
    "rate_limited",
    "permanent",
    "grant_revoked",
    "timeout",
    "dead_on_arrival",
    "memory",
    "file",
    "redis",
    "postgres",
    "custom",
    "0",
    "1",
    "2",
    "3",
    "load",
    "store",
    "write_back",
    "lease",
    "release",
    "hit",
    "miss",
    "ok",
    "granted",
    "busy",
    "unsupported",
    "accepted",
    "collapsed",
    "ignored",
    "starting",
    "healthy",
    "retrying",
    "failed",
    "stopped",
];

/// Asserts that every label value of `view`'s series is from the fixed set
/// (or the refresher's name) and every name is a documented metric.
pub fn assert_bounded(view: &View) {
    let values = view.recording.0.lock().unwrap();
    let keys = values
        .counters
        .keys()
        .chain(values.gauges.keys())
        .chain(values.histograms.keys());
    for (name, labels) in keys.filter(|(_, l)| view.matches(l, &[])) {
        assert!(
            freshtoken::metrics::names::ALL.contains(&name.as_str()),
            "undocumented metric {name}"
        );
        for (k, v) in labels {
            if k == "refresher" {
                continue;
            }
            assert!(
                ALLOWED_LABEL_VALUES.contains(&v.as_str()),
                "{name}: label {k}={v} is not from the fixed set"
            );
        }
    }
}
