//! [`Timeline`]: the ready-made [`Observer`] behind the fleet properties.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Observer;
use crate::machine::{Action, Output};
use crate::time::Timestamp;

/// Records when the fleet asked the authority, when it stored a token in
/// the shared cache, and what each instance published: the three things
/// the fleet's load, herd and recovery properties are stated in.
///
/// ```
/// use freshtoken_core::sim::{CacheMode, Scenario, Timeline};
/// use std::time::Duration;
///
/// // Eight instances started together share one token through the cache.
/// let s = Scenario::new(8)
///     .cache(CacheMode::SharedWithLease)
///     .start_spread(Duration::ZERO)
///     .duration(Duration::from_secs(10));
/// let mut t = Timeline::default();
/// s.run_observed(&mut t);
/// assert_eq!(t.fetches().len(), 1);
/// let stored = t.stores()[0];
/// for (_instance, first) in t.first_valid_after(s.start_time()) {
///     assert!(first.unwrap() <= stored + Duration::from_millis(50));
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    fetches: Vec<Timestamp>,
    stores: Vec<Timestamp>,
    /// Per instance: (time, whether the published token was valid then).
    published: BTreeMap<usize, Vec<(Timestamp, bool)>>,
}

impl Observer for Timeline {
    fn output(&mut self, instance: usize, now: Timestamp, output: &Output) {
        match output {
            Output::Action(Action::Fetch(_)) => self.fetches.push(now),
            Output::Action(Action::Store { .. }) => self.stores.push(now),
            Output::Action(Action::Publish(s)) => {
                let valid = s.token.as_ref().is_some_and(|t| t.is_valid_at(now));
                self.published
                    .entry(instance)
                    .or_default()
                    .push((now, valid));
            }
            _ => {}
        }
    }
}

impl Timeline {
    /// When each fetch was sent, in order.
    pub fn fetches(&self) -> &[Timestamp] {
        &self.fetches
    }

    /// When each store was sent, in order.
    pub fn stores(&self) -> &[Timestamp] {
        &self.stores
    }

    /// The fetches sent in `[from, to)`.
    pub fn fetches_within(&self, from: Timestamp, to: Timestamp) -> usize {
        self.fetches
            .iter()
            .filter(|at| **at >= from && **at < to)
            .count()
    }

    /// For every instance that published, by instance: its first
    /// publication at or after `t` of a token valid then (`None`: it had
    /// none valid again by the end).
    pub fn first_valid_after(&self, t: Timestamp) -> Vec<(usize, Option<Timestamp>)> {
        self.published
            .iter()
            .map(|(i, p)| {
                let first = p.iter().find(|(at, valid)| *at >= t && *valid);
                (*i, first.map(|(at, _)| *at))
            })
            .collect()
    }

    /// How long after `t` the last instance held a valid token again
    /// (`None`: one never did).
    pub fn all_fresh_after(&self, t: Timestamp) -> Option<Duration> {
        self.first_valid_after(t)
            .into_iter()
            .try_fold(Duration::ZERO, |worst, (_, at)| {
                at.map(|at| worst.max(at.saturating_duration_since(t)))
            })
    }
}
