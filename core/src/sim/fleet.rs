//! The simulator's event loop: instances, their clocks and cache layers,
//! the shared cache, and the bookkeeping of refresh tokens in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::authority::{Authority, Loss};
use super::prefetch::prefetch;
use super::queue::EventQueue;
use super::{CacheMode, Observer, Report, Scenario};
use crate::error::{CacheError, CacheErrorKind};
use crate::machine::{
    Action, Input, LeaseOutcome, MachineConfig, Output, RefreshMachine, RefreshState, RequestId,
};
use crate::time::{MonoTime, Now, Timestamp};
use crate::token::Token;

/// An instance's incarnation (how many times it was stopped before).
type Life = u32;

/// `life`'s bit in [`Instance::killed_lives`].
fn life_bit(life: Life) -> u64 {
    1 << (life % 64)
}

/// How long a hung cache operation takes to answer.
const HANG: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum EventKind {
    /// The machine's own timeout: live if it is the instance's
    /// [`Timer::queued`] (see [`Timer`]).
    Timer {
        seq: u64,
    },
    /// A wake-up after a clock step: live while the machine has set no
    /// timeout since (`generation`).
    Wake {
        generation: u64,
    },
    /// An answer for incarnation `life`; `deadline` is when the machine
    /// gives up on a fetch (its send plus the request's own timeout;
    /// `Timestamp::MAX` for other answers).
    Deliver {
        life: Life,
        /// Boxed: an answer is large (a token response), and most events
        /// are not answers; inline, it made every queued event ~200 bytes.
        input: Box<Input>,
        deadline: Timestamp,
    },
    /// A load that the memory layer did not answer (`perform` asked it).
    ReadCache {
        life: Life,
        id: RequestId,
    },
    TryLease {
        life: Life,
        id: RequestId,
        /// The lease's time to live, in nanoseconds (up to 584 years).
        ttl_ns: u64,
    },
    WriteCache {
        life: Life,
        id: RequestId,
        token: Arc<Token>,
    },
    /// A failover lost this acknowledged write: the record goes back.
    RevertWrite {
        written: Arc<Token>,
        previous: Option<Arc<Token>>,
    },
    /// The instance's clock step number `step` (see `Fleet::clock_steps`).
    ClockStep {
        step: u32,
    },
    Stop {
        kill: bool,
    },
    Restart,
}

/// A queued event: whose, and what (its time is the queue's key).
#[derive(Debug)]
struct Event {
    instance: u32,
    kind: EventKind,
}

/// An instance's timeout: the one its machine set last (`live`, due at
/// a millisecond, with the sequence number it was given when set), and the
/// earliest entry of the instance in the queue (`queued`), which, at its
/// time, either is the live one or puts the live one in the queue. `NONE`
/// parts are `(u64::MAX, u64::MAX)`. With them, a count of the timeouts the
/// machine set and of its stops (`generation`): a clock-step wake-up is
/// live while it is unchanged. Every input sets a timeout, so both are
/// written together, in one of the processor's cache lines.
#[derive(Clone, Copy, Debug)]
struct Timer {
    live: (u64, u64),
    queued: (u64, u64),
    generation: u64,
}

impl Timer {
    const NONE: Timer = Timer {
        live: (u64::MAX, u64::MAX),
        queued: (u64::MAX, u64::MAX),
        generation: 0,
    };
}

/// One simulated instance. Its parts every event reads come first, on
/// one of the processor's cache lines (the type is aligned to one), and
/// its machine's own hot parts right after them (see the layout note on
/// [`RefreshMachine`]): at 100,000 instances the fleet is far larger than
/// the caches, and an event waits for each line of its instance it reads
/// that the prefetch two events ahead (in [`Fleet::run`]) has not brought.
#[repr(C, align(64))]
struct Instance {
    /// This instance's wall clock minus the true time.
    offset_ms: i64,
    /// The memory layer of its cache stack, when stacks are simulated.
    memory: Option<Arc<Token>>,
    /// True expiry of the published token (the epoch before the first).
    covered_until: Timestamp,
    /// Up to when availability has been accounted for.
    accounted_until: Timestamp,
    /// When this incarnation started.
    up_since: Timestamp,
    /// Which incarnation this is; answers to earlier ones are dropped.
    life: Life,
    alive: bool,
    /// Whether its last store of a token failed (for telling a drain that
    /// the cache defeated from one the machine cut short).
    last_store_failed: bool,
    /// Which of its lives ended in a kill, by life modulo 64 (a life's
    /// answers land within the latency tail, long before 64 more lives).
    /// Not only the last stop's: a killed life's answer may come after a
    /// graceful stop of the next one.
    killed_lives: u64,
    machine: RefreshMachine,
    lived: Duration,
    unavailable: Duration,
}

pub(super) struct Fleet<'a> {
    scenario: &'a Scenario,
    /// Every machine's configuration, shared (see [`Fleet::machine_config`]).
    machine_config: Arc<MachineConfig>,
    end: Timestamp,
    queue: EventQueue<Event>,
    /// Per instance, its machine's timeout (see [`Timer`]). Apart from the
    /// instances, so that skipping a superseded entry touches a few bytes.
    timers: Vec<Timer>,
    rng: fastrand::Rng,
    instances: Vec<Instance>,
    authority: Authority,
    cached: Option<Arc<Token>>,
    lease: Option<((usize, Life), Timestamp)>,
    /// Refresh tokens in answers still travelling, by value: how many
    /// answers carry each, and the deadline of the first of them.
    in_flight: HashMap<String, (u32, Timestamp)>,
    /// Refresh tokens whose acknowledged write the cache lost.
    lost_writes: std::collections::HashSet<String>,
    /// Refresh tokens that reached their instance past the fetch's deadline
    /// and after its lease had gone, not stored yet: until they are, a peer
    /// may hold the lease and present their spent predecessor, which no
    /// client can prevent (the inherent loss (b), as an answer still
    /// travelling).
    overdue_unstored: std::collections::HashSet<String>,
    /// Every instance's clock steps, `Scenario::clock_steps` of them each in
    /// a row, by (time, sequence number): the time (ms), the sequence number
    /// taken when they were drawn, and the new offset. Only the next one of
    /// each instance is queued (with that sequence number, so the order of
    /// events is the same), which keeps the queue small.
    clock_steps: Vec<(u64, u64, i64)>,
    /// The scenario's fault windows in true time, whole milliseconds
    /// `[from, to)` (see [`fault_windows`]).
    fault_windows: Vec<(u64, u64)>,
    /// The busiest second so far, of authority requests and of cache calls.
    request_peak: Peak,
    cache_peak: Peak,
    report: Report,
}

/// Counts per whole second of true time, in time order, keeping the most.
#[derive(Default)]
struct Peak {
    second: u64,
    count: u64,
    most: u64,
}

impl Peak {
    /// Counts one in `second` (never before the last); returns the most in
    /// any second so far.
    fn count(&mut self, second: u64) -> u64 {
        if second != self.second {
            self.second = second;
            self.count = 0;
        }
        self.count += 1;
        self.most = self.most.max(self.count);
        self.most
    }
}

impl<'a> Fleet<'a> {
    pub(super) fn new(scenario: &'a Scenario) -> Self {
        let mut rng = fastrand::Rng::with_seed(scenario.seed);
        let start = scenario.start;
        let spread = crate::time::duration_millis(scenario.start_spread);
        let mut authority = Authority::new(
            start,
            scenario.lifetime,
            scenario.latency,
            scenario.faults.clone(),
            scenario.seed,
        )
        .with_tail(scenario.latency_tail)
        .with_advertised(scenario.advertised);
        if let Some(interval) = scenario.refresh_tokens {
            authority = authority.with_family(interval);
        }
        let machine_config = Self::machine_config(scenario, &authority);
        let mut fleet = Fleet {
            scenario,
            machine_config,
            end: start + scenario.duration,
            queue: EventQueue::new(start.as_millis(), (start + scenario.duration).as_millis()),
            timers: vec![Timer::NONE; scenario.instances],
            rng: fastrand::Rng::with_seed(scenario.seed ^ 0x5151),
            instances: Vec::with_capacity(scenario.instances),
            authority,
            cached: None,
            lease: None,
            in_flight: HashMap::new(),
            overdue_unstored: std::collections::HashSet::new(),
            lost_writes: std::collections::HashSet::new(),
            clock_steps: Vec::with_capacity(scenario.instances * scenario.clock_steps as usize),
            fault_windows: fault_windows(scenario),
            request_peak: Peak::default(),
            cache_peak: Peak::default(),
            report: Report {
                instances: scenario.instances,
                duration: scenario.duration,
                authority_requests: 0,
                failed_requests: 0,
                refresh_period: scenario.refresh_period(),
                requests_per_period: 0.0,
                availability: 0.0,
                longest_gap: Duration::ZERO,
                cache_reads: 0,
                cache_writes: 0,
                leases_granted: 0,
                leases_busy: 0,
                events: 0,
                refresh_token_reuses: 0,
                inherent_reuses: [0; 3],
                grace_reuses: 0,
                inherent_losses: 0,
                grant_revoked: false,
                alive_at_end: 0,
                valid_at_end: 0,
                failed_at_end: 0,
                shutdowns: 0,
                kills: 0,
                restarts: 0,
                late_answers: 0,
                cache_operations: 0,
                peak_requests_per_second: 0,
                peak_cache_operations_per_second: 0,
                requests_during_faults: vec![0; scenario.faults.len()],
                cache_operations_during_faults: vec![0; scenario.faults.len()],
            },
        };
        let skew = crate::time::duration_millis(scenario.skew) as i64;
        for i in 0..scenario.instances {
            let started_at = start + Duration::from_millis(rng.u64(0..=spread));
            let offset_ms = if skew > 0 { rng.i64(-skew..=skew) } else { 0 };
            let machine = fleet.new_machine(i, 0, &mut rng);
            fleet.instances.push(Instance {
                machine,
                life: 0,
                alive: true,
                offset_ms,
                memory: None,
                last_store_failed: false,
                killed_lives: 0,
                covered_until: Timestamp::EPOCH,
                accounted_until: started_at,
                up_since: started_at,
                lived: Duration::ZERO,
                unavailable: Duration::ZERO,
            });
            fleet.push(started_at, i, fleet_start(0));
            let first = fleet.clock_steps.len();
            for _ in 0..scenario.clock_steps {
                let at = start + fleet.random_within(scenario.duration);
                let delta_ms = if skew > 0 { rng.i64(-skew..=skew) } else { 0 };
                let seq = fleet.queue.next_seq();
                fleet.clock_steps.push((at.as_millis(), seq, delta_ms));
            }
            fleet.clock_steps[first..].sort_unstable();
            fleet.queue_clock_step(i, 0);
            fleet.schedule_stop(i, started_at);
        }
        fleet
    }

    /// Every machine's configuration: the scenario's, with the cache mode
    /// and the authority's first refresh token; one copy for the fleet.
    fn machine_config(scenario: &Scenario, authority: &Authority) -> Arc<MachineConfig> {
        let mut config = scenario.config.clone();
        config.cache = scenario.cache != CacheMode::None;
        if let Some(rt) = authority.first_refresh_token() {
            config.refresh_token = Some(rt);
        }
        Arc::new(config)
    }

    fn new_machine(&self, i: usize, life: Life, rng: &mut fastrand::Rng) -> RefreshMachine {
        let seed = rng.u64(..) ^ (i as u64) ^ u64::from(life).rotate_left(17);
        RefreshMachine::with_shared_config(self.machine_config.clone(), seed)
    }

    fn random_within(&mut self, d: Duration) -> Duration {
        Duration::from_millis(self.rng.u64(0..=crate::time::duration_millis(d).max(1)))
    }

    fn schedule_stop(&mut self, i: usize, from: Timestamp) {
        let churn = self.scenario.churn;
        if !churn.is_active() {
            return;
        }
        // Exponential uptime with the given mean.
        let mean = churn.mean_uptime.as_secs_f64();
        let uptime = -mean * (1.0 - self.rng.f64()).ln();
        let at = from + Duration::from_secs_f64(uptime.min(1e9));
        let kill = self.rng.f64() < churn.kill_fraction;
        self.push(at, i, EventKind::Stop { kill });
    }

    /// Queues instance `i`'s clock step number `step`, if it has one.
    fn queue_clock_step(&mut self, i: usize, step: u32) {
        let steps = self.scenario.clock_steps;
        if step < steps {
            let (at, seq, _) = self.clock_steps[i * steps as usize + step as usize];
            let instance = u32::try_from(i).expect("at most u32::MAX instances");
            let kind = EventKind::ClockStep { step };
            self.queue.push_seq(at, seq, Event { instance, kind });
        }
    }

    fn push(&mut self, at: Timestamp, instance: usize, kind: EventKind) {
        let instance = u32::try_from(instance).expect("at most u32::MAX instances");
        self.queue.push(at.as_millis(), Event { instance, kind });
    }

    /// Both clocks of instance `i` at true time `t`.
    fn now_of(&self, i: usize, t: Timestamp) -> Now {
        let wall = t.offset_millis(self.instances[i].offset_ms);
        Now::new(wall, MonoTime::from_millis(t.as_millis()))
    }

    pub(super) fn run(mut self, observer: &mut impl Observer) -> Report {
        while let Some((at, event)) = self.queue.pop() {
            self.report.events += 1;
            let (now, i) = (Timestamp::from_millis(at), event.instance as usize);
            // Memory the next events read, asked for now so that it arrives
            // while this event is handled (see `prefetch`): the instance of
            // the event after next, and the parts of the next one's machine
            // kept out of line (found through its instance's lines, which
            // were asked for one event ago).
            let [next, after] = self.queue.peek();
            if let Some(next) = next {
                self.instances[next.instance as usize]
                    .machine
                    .prefetch_out_of_line();
            }
            if let Some(after) = after {
                let j = after.instance as usize;
                prefetch(&self.instances[j]);
                prefetch(&self.timers[j]);
            }
            let input = match event.kind {
                EventKind::Timer { seq } => {
                    if !self.timer_due(i, at, seq) {
                        continue;
                    }
                    Input::Tick
                }
                EventKind::Wake { generation } => {
                    if generation != self.timers[i].generation || !self.instances[i].alive {
                        continue;
                    }
                    Input::Tick
                }
                EventKind::Deliver {
                    life,
                    input,
                    deadline,
                } => {
                    let deadline = (deadline != Timestamp::MAX).then_some(deadline);
                    if !self.deliverable(i, life, &input, deadline, now) {
                        continue;
                    }
                    *input
                }
                EventKind::ReadCache { life, id } => {
                    self.report.cache_reads += 1;
                    self.count_cache_operation(now);
                    let result = self.read_shared(i);
                    self.answer_cache(i, life, now, Input::CacheLoaded(id, result), observer);
                    continue;
                }
                EventKind::TryLease { life, id, ttl_ns } => {
                    let ttl = Duration::from_nanos(ttl_ns);
                    self.count_cache_operation(now);
                    let result = if self.fails(self.scenario.cache_faults.load_failure) {
                        Err(CacheError::new(CacheErrorKind::Unavailable, "down"))
                    } else {
                        Ok(self.try_lease((i, life), now, ttl))
                    };
                    self.answer_cache(i, life, now, Input::Lease(id, result), observer);
                    continue;
                }
                EventKind::WriteCache { life, id, token } => {
                    self.count_cache_operation(now);
                    let result = self.write_shared(i, now, token);
                    self.answer_cache(i, life, now, Input::Stored(id, result), observer);
                    continue;
                }
                EventKind::RevertWrite { written, previous } => {
                    if self
                        .cached
                        .as_ref()
                        .is_some_and(|c| Arc::ptr_eq(c, &written))
                    {
                        self.cached = previous;
                        if let Some(rt) = written.refresh_token() {
                            let rt = rt.expose_secret();
                            // Peers now read the older record, whatever the
                            // writer still knows: the inherent loss (c).
                            if self.authority.live_refresh_token() == Some(rt) {
                                self.report.inherent_losses += 1;
                                self.authority.lose_current(Loss::CacheLost);
                            }
                            self.lost_writes.insert(rt.to_owned());
                        }
                    }
                    continue;
                }
                EventKind::ClockStep { step } => {
                    let steps = self.scenario.clock_steps as usize;
                    let delta_ms = self.clock_steps[i * steps + step as usize].2;
                    self.queue_clock_step(i, step + 1);
                    self.instances[i].offset_ms = delta_ms;
                    // The driver notices within a heartbeat.
                    let heartbeat = self.scenario.heartbeat;
                    let at = now + self.random_within(heartbeat);
                    let generation = self.timers[i].generation;
                    self.push(at, i, EventKind::Wake { generation });
                    continue;
                }
                EventKind::Stop { kill } => {
                    if !self.instances[i].alive {
                        continue;
                    }
                    if kill {
                        self.kill(i, now);
                        continue;
                    }
                    self.report.shutdowns += 1;
                    Input::Shutdown
                }
                EventKind::Restart => {
                    self.restart(i, now);
                    Input::Start
                }
            };
            self.feed(i, input, now, observer);
        }
        self.finish()
    }

    /// Sets instance `i`'s timeout to `due` (none: it has none), replacing
    /// the one before. The timeout takes its place in the order of events
    /// now (its sequence number), but it is queued only when no earlier
    /// entry of the instance is, or that entry is near enough to be taken
    /// out ([`EventQueue::remove`]): a machine resets its timeout on every
    /// input, mostly to the same or a later time, and each of those would
    /// otherwise wait in the queue, superseded, until its time.
    fn set_timer(&mut self, i: usize, due: Option<Timestamp>) {
        let seq = self.queue.next_seq();
        let timer = &mut self.timers[i];
        let Some(due) = due else {
            timer.live = Timer::NONE.live;
            return;
        };
        let due = due.as_millis();
        timer.live = (due, seq);
        let queued = timer.queued;
        let removed = self.queue.remove(queued.0, queued.1);
        if queued.0 <= due && !removed {
            // The queued entry comes first and will put this one in place.
            return;
        }
        // The queued entry, when near (in the queue's millisecond ring), was
        // taken out: earlier than this one (a cache call's or a fetch's
        // deadline, most often, now answered), it would have come up only to
        // queue this one; later, it would have come up superseded.
        self.timers[i].queued = (due, seq);
        self.push_timer(i, due, seq);
    }

    /// Whether instance `i`'s queued timeout entry `seq`, popped at `at`,
    /// is its timeout; when the timeout moved later, queues it there with
    /// its own sequence number (the order it would have had if queued when
    /// it was set).
    fn timer_due(&mut self, i: usize, at: u64, seq: u64) -> bool {
        let timer = &mut self.timers[i];
        if timer.queued != (at, seq) {
            return false; // an entry the queued one replaced
        }
        timer.queued = Timer::NONE.queued;
        let live = timer.live;
        if live == (at, seq) {
            return true;
        }
        if live != Timer::NONE.live {
            debug_assert!(live.0 >= at);
            timer.queued = live;
            self.push_timer(i, live.0, live.1);
        }
        false
    }

    fn push_timer(&mut self, i: usize, at: u64, seq: u64) {
        let instance = u32::try_from(i).expect("at most u32::MAX instances");
        let kind = EventKind::Timer { seq };
        self.queue.push_seq(at, seq, Event { instance, kind });
    }

    /// Whether an answer reaches the instance; when it does not, whether
    /// that lost the grant's newest refresh token, and why. (It reads the
    /// answer in place: an `Input` is large, and most are delivered.)
    fn deliverable(
        &mut self,
        i: usize,
        life: Life,
        input: &Input,
        deadline: Option<Timestamp>,
        now: Timestamp,
    ) -> bool {
        let rotated = match input {
            Input::Fetched(_, Ok(r)) => r
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            _ => None,
        };
        if let Some(rt) = &rotated {
            if let Some((n, _)) = self.in_flight.get_mut(rt) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.in_flight.remove(rt);
                }
            }
        }
        let inst = &self.instances[i];
        let dead = life != inst.life || !inst.alive;
        // Only fetches carry a deadline.
        let late = deadline.is_some_and(|d| now > d);
        if late && !dead {
            self.report.late_answers += 1;
            let holds_lease = self
                .lease
                .is_some_and(|(holder, until)| holder == (i, life) && now < until);
            if let (Some(rt), false) = (&rotated, holds_lease) {
                self.overdue_unstored.insert(rt.clone());
            }
        }
        if !dead {
            return true;
        }
        if rotated.is_some() {
            // A stopped machine waited for its fetch until the deadline; an
            // answer after that is the inherent loss (b). A killed one is (a).
            let killed = inst.killed_lives & life_bit(life) != 0;
            if killed {
                self.check_loss(Loss::Killed);
            } else if late {
                self.check_loss(Loss::LostAnswer);
            }
        }
        false
    }

    fn fails(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.f64() < p
    }

    /// Delivers a cache answer now, or after a hang. When nothing else is
    /// due now, the answer would be the next event: it is fed at once (if
    /// it reaches the instance) instead of queued. (Fed here rather than
    /// handed back: an `Input` is large, and each hand-off copies it.)
    fn answer_cache(
        &mut self,
        i: usize,
        life: Life,
        now: Timestamp,
        input: Input,
        observer: &mut impl Observer,
    ) {
        let at = if self.fails(self.scenario.cache_faults.hang) {
            now + HANG
        } else {
            if self.queue.is_idle_at(now.as_millis()) {
                if self.deliverable(i, life, &input, None, now) {
                    self.feed(i, input, now, observer);
                }
                return;
            }
            now
        };
        self.push(
            at,
            i,
            EventKind::Deliver {
                life,
                input: Box::new(input),
                deadline: Timestamp::MAX,
            },
        );
    }

    /// A load through the instance's stack: the memory layer answers when
    /// it satisfies the query, else the shared layer is read (a failure of
    /// the shared layer fails the load), the better of the two wins and is
    /// written back to memory. The same rule as `CacheStack`.
    fn read_shared(&mut self, i: usize) -> Result<Option<Arc<Token>>, CacheError> {
        if self.fails(self.scenario.cache_faults.load_failure) {
            return Err(CacheError::new(CacheErrorKind::Unavailable, "down"));
        }
        let shared = self.cached.clone();
        if !self.scenario.stacks {
            return Ok(shared);
        }
        let inst = &mut self.instances[i];
        let best = match (&inst.memory, shared) {
            (Some(m), Some(s)) if !s.supersedes(m) => Some(m.clone()),
            (_, Some(s)) => Some(s),
            (m, None) => m.clone(),
        };
        inst.memory = best.clone();
        Ok(best)
    }

    fn write_shared(
        &mut self,
        i: usize,
        now: Timestamp,
        token: Arc<Token>,
    ) -> Result<(), CacheError> {
        if self.scenario.stacks {
            self.instances[i].memory = Some(token.clone());
        }
        if self.fails(self.scenario.cache_faults.store_failure) {
            self.instances[i].last_store_failed = true;
            return Err(CacheError::new(CacheErrorKind::Unavailable, "down"));
        }
        self.instances[i].last_store_failed = false;
        self.report.cache_writes += 1;
        if let Some(rt) = token.refresh_token() {
            self.overdue_unstored.remove(rt.expose_secret());
        }
        // Last writer wins, as with a file rename or a Redis SET: a slow
        // writer can replace a newer token with an older one.
        let previous = self.cached.replace(token.clone());
        if self.fails(self.scenario.cache_faults.lost_write) {
            let at = now + Duration::from_millis(self.rng.u64(1..=500));
            self.push(
                at,
                i,
                EventKind::RevertWrite {
                    written: token,
                    previous,
                },
            );
        }
        Ok(())
    }

    fn try_lease(&mut self, holder: (usize, Life), now: Timestamp, ttl: Duration) -> LeaseOutcome {
        if self.scenario.cache != CacheMode::SharedWithLease {
            return LeaseOutcome::Unsupported;
        }
        match self.lease {
            Some((h, until)) if h != holder && now < until => {
                self.report.leases_busy += 1;
                LeaseOutcome::Busy
            }
            _ => {
                self.report.leases_granted += 1;
                self.lease = Some((holder, now + ttl));
                LeaseOutcome::Granted
            }
        }
    }

    fn feed(&mut self, i: usize, input: Input, now: Timestamp, observer: &mut impl Observer) {
        let local = self.now_of(i, now);
        observer.input(i, local.wall, &input);
        self.instances[i].machine.handle_input(input, local);
        loop {
            let output = self.instances[i].machine.poll_output();
            observer.output(i, local.wall, &output);
            match output {
                Output::Timeout(at) => {
                    self.timers[i].generation += 1;
                    let inst = &self.instances[i];
                    let due = (at != Timestamp::MAX && inst.alive)
                        .then(|| at.offset_millis(-inst.offset_ms).max(now));
                    self.set_timer(i, due);
                    break;
                }
                Output::Action(action) => self.perform(i, action, now, local),
            }
        }
        // The report reads the machine's counters, not its events: drained
        // here, a machine keeps none (undrained, each kept up to 64).
        while self.instances[i].machine.poll_event().is_some() {}
    }

    fn perform(&mut self, i: usize, action: Action, now: Timestamp, local: Now) {
        let cache_at = now + self.scenario.cache_latency;
        let life = self.instances[i].life;
        match action {
            Action::LoadCache { id, newer_than } => {
                let memory = self.instances[i].memory.clone();
                match memory {
                    Some(m) if self.scenario.stacks && m.satisfies(local.wall, newer_than) => {
                        let input = Input::CacheLoaded(id, Ok(Some(m)));
                        self.push(
                            now,
                            i,
                            EventKind::Deliver {
                                life,
                                input: Box::new(input),
                                deadline: Timestamp::MAX,
                            },
                        );
                    }
                    _ => self.push(cache_at, i, EventKind::ReadCache { life, id }),
                }
            }
            Action::AcquireLease { id, ttl, .. } => {
                let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
                self.push(cache_at, i, EventKind::TryLease { life, id, ttl_ns })
            }
            Action::Store { id, token, .. } => {
                self.push(cache_at, i, EventKind::WriteCache { life, id, token })
            }
            Action::ReleaseLease { id, .. } => {
                self.count_cache_operation(now);
                // Given back at once; the answer takes the cache's latency.
                if self.lease.is_some_and(|(holder, _)| holder == (i, life)) {
                    self.lease = None;
                }
                let input = Input::Released(id, Ok(()));
                self.push(
                    cache_at,
                    i,
                    EventKind::Deliver {
                        life,
                        input: Box::new(input),
                        deadline: Timestamp::MAX,
                    },
                );
            }
            Action::Fetch(request) => {
                self.report.authority_requests += 1;
                let second = now.as_millis() / 1000;
                self.report.peak_requests_per_second = self.request_peak.count(second);
                let counts = &mut self.report.requests_during_faults;
                count_during_faults(&self.fault_windows, now, counts);
                self.check_overdue(&request, now);
                let (result, latency) = self.authority.answer(now, &request);
                if result.is_err() {
                    self.report.failed_requests += 1;
                }
                let rotated = match &result {
                    Ok(r) => r
                        .refresh_token
                        .as_ref()
                        .map(|t| t.expose_secret().to_owned()),
                    Err(_) => None,
                };
                if self.fails(self.scenario.lost_answers) {
                    // The authority acted; the answer never arrives.
                    if rotated.is_some() {
                        self.check_loss(Loss::LostAnswer);
                    }
                    return;
                }
                let deadline = now + request.timeout;
                if let Some(rt) = rotated {
                    self.in_flight.entry(rt).or_insert((0, deadline)).0 += 1;
                }
                let input = Input::Fetched(request.id, result);
                self.push(
                    now + latency,
                    i,
                    EventKind::Deliver {
                        life,
                        input: Box::new(input),
                        deadline,
                    },
                );
            }
            Action::Publish(snapshot) => {
                self.account(i, now);
                if let Some(token) = &snapshot.token {
                    let expiry = self
                        .authority
                        .expiry_of(token.id())
                        .unwrap_or(Timestamp::EPOCH);
                    let inst = &mut self.instances[i];
                    inst.covered_until = inst.covered_until.max(expiry);
                }
            }
            Action::Stop => self.stopped(i, now, false),
        }
    }

    /// Records an inherent loss if the grant's newest refresh token is now
    /// known nowhere: no cache record, no running machine, no answer in flight.
    fn check_loss(&mut self, why: Loss) {
        let Some(current) = self.authority.live_refresh_token() else {
            return;
        };
        let known = |t: &Token| {
            t.refresh_token()
                .is_some_and(|rt| rt.expose_secret() == current)
        };
        let reachable = self.cached.as_deref().is_some_and(known)
            || self.in_flight.contains_key(current)
            || self.instances.iter().any(|inst| {
                inst.alive
                    && (inst
                        .machine
                        .refresh_token()
                        .is_some_and(|(rt, _)| rt.expose_secret() == current)
                        || inst.memory.as_deref().is_some_and(known))
            });
        if !reachable {
            self.report.inherent_losses += 1;
            self.authority.lose_current(why);
        }
    }

    /// A spent refresh token presented while the answer that carried its
    /// successor is still travelling past its deadline, or reached its
    /// instance past the deadline, after that instance's lease had gone,
    /// and is not stored yet: the presenting instance took the lease its
    /// holder gave up (after a timeout), the inherent loss (b).
    fn check_overdue(&mut self, request: &crate::machine::FetchRequest, now: Timestamp) {
        let Some(current) = self.authority.live_refresh_token() else {
            return;
        };
        let presented = request.refresh_token.as_ref().map(|t| t.expose_secret());
        if presented.is_none() || presented == Some(current) {
            return;
        }
        let travelling = self
            .in_flight
            .get(current)
            .is_some_and(|(_, deadline)| now >= *deadline);
        if travelling || self.overdue_unstored.contains(current) {
            self.report.inherent_losses += 1;
            self.authority.lose_current(Loss::LostAnswer);
        }
    }

    fn kill(&mut self, i: usize, now: Timestamp) {
        self.report.kills += 1;
        self.stopped(i, now, true);
        self.check_loss(Loss::Killed);
    }

    /// Instance `i` is down (it emitted `Stop`, or was killed).
    fn stopped(&mut self, i: usize, now: Timestamp, killed: bool) {
        self.account(i, now);
        let inst = &mut self.instances[i];
        if !inst.alive {
            return;
        }
        inst.lived += now.saturating_duration_since(inst.up_since);
        inst.alive = false;
        if killed {
            inst.killed_lives |= life_bit(inst.life);
        } else {
            inst.killed_lives &= !life_bit(inst.life);
        }
        inst.life = inst.life.wrapping_add(1);
        self.timers[i].generation += 1;
        self.timers[i].live = Timer::NONE.live;
        inst.memory = None;
        let inst = &self.instances[i];
        let knew = inst
            .machine
            .refresh_token()
            .map(|(rt, _)| rt.expose_secret());
        let lost_write = knew.is_some_and(|rt| self.lost_writes.contains(rt));
        if !killed
            && (inst.last_store_failed || lost_write)
            && knew == self.authority.live_refresh_token()
        {
            // A graceful stop of the only instance that knew the newest
            // refresh token, which the cache lost after acknowledging it,
            // or refused to take until the drain bound: the cache's loss.
            self.check_loss(Loss::CacheLost);
        }
        if self.scenario.churn.is_active() {
            let at = now + self.scenario.churn.downtime;
            self.push(at, i, EventKind::Restart);
        }
    }

    fn restart(&mut self, i: usize, now: Timestamp) {
        self.report.restarts += 1;
        let life = self.instances[i].life;
        let mut rng = fastrand::Rng::with_seed(self.rng.u64(..));
        let machine = self.new_machine(i, life, &mut rng);
        let inst = &mut self.instances[i];
        inst.machine = machine;
        inst.alive = true;
        inst.up_since = now;
        inst.accounted_until = now;
        inst.covered_until = Timestamp::EPOCH;
        inst.last_store_failed = false;
        self.schedule_stop(i, now);
    }

    /// Adds the time since the last accounting during which instance `i`
    /// had no truly valid token.
    fn account(&mut self, i: usize, now: Timestamp) {
        let inst = &mut self.instances[i];
        if !inst.alive {
            return;
        }
        let from = inst.accounted_until.max(inst.covered_until);
        if now > from {
            let gap = now.saturating_duration_since(from);
            inst.unavailable += gap;
            let whole = now.saturating_duration_since(inst.covered_until.max(inst.up_since));
            self.report.longest_gap = self.report.longest_gap.max(whole);
        }
        inst.accounted_until = inst.accounted_until.max(now);
    }

    /// A call that reached the shared cache.
    fn count_cache_operation(&mut self, now: Timestamp) {
        self.report.cache_operations += 1;
        let second = now.as_millis() / 1000;
        self.report.peak_cache_operations_per_second = self.cache_peak.count(second);
        let counts = &mut self.report.cache_operations_during_faults;
        count_during_faults(&self.fault_windows, now, counts);
    }

    fn finish(mut self) -> Report {
        let end = self.end;
        let mut lived = Duration::ZERO;
        let mut unavailable = Duration::ZERO;
        for i in 0..self.instances.len() {
            self.account(i, end);
            let inst = &self.instances[i];
            lived += inst.lived;
            if inst.alive {
                lived += end.saturating_duration_since(inst.up_since);
                self.report.alive_at_end += 1;
                if inst.covered_until > end {
                    self.report.valid_at_end += 1;
                }
                if matches!(inst.machine.state(), RefreshState::Failed { .. }) {
                    self.report.failed_at_end += 1;
                }
            }
            unavailable += inst.unavailable;
        }
        self.report.availability = if lived.is_zero() {
            1.0
        } else {
            1.0 - unavailable.as_secs_f64() / lived.as_secs_f64()
        };
        let periods = self.scenario.duration.as_secs_f64()
            / self.report.refresh_period.as_secs_f64().max(1e-3);
        self.report.requests_per_period = self.report.authority_requests as f64 / periods.max(1.0);
        let reuses = self.authority.reuses;
        self.report.refresh_token_reuses = reuses.defects;
        self.report.inherent_reuses = [reuses.killed, reuses.lost_answer, reuses.cache_lost];
        self.report.grace_reuses = reuses.grace;
        self.report.grant_revoked = self.authority.is_revoked();
        self.report
    }
}

/// The event that starts an instance.
fn fleet_start(life: Life) -> EventKind {
    EventKind::Deliver {
        life,
        input: Box::new(Input::Start),
        deadline: Timestamp::MAX,
    }
}

/// The scenario's fault windows as whole milliseconds of true time
/// `[from, to)`: a millisecond `t` is in one exactly when the fault is
/// active `t - start` after the start ([`Fault::active_at`], whose bounds
/// may have parts of a millisecond, hence rounded up). Counting a call
/// during faults then compares integers (it runs for every cache call).
///
/// [`Fault::active_at`]: super::Fault::active_at
fn fault_windows(scenario: &Scenario) -> Vec<(u64, u64)> {
    let start = scenario.start.as_millis();
    let ms = |d: Duration| u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let windows = scenario.faults.iter().map(|fault| {
        let from = fault.start();
        let to = from.saturating_add(fault.length());
        (start.saturating_add(ms(from)), start.saturating_add(ms(to)))
    });
    windows.collect()
}

/// Counts one at `now` for each fault window (see [`fault_windows`]) on
/// then.
fn count_during_faults(windows: &[(u64, u64)], now: Timestamp, counts: &mut [u64]) {
    let now = now.as_millis();
    for (&(from, to), count) in windows.iter().zip(counts) {
        if from <= now && now < to {
            *count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Fault, FaultKind};

    /// A millisecond is in a fault's window exactly when the fault is
    /// active then, bounds with parts of a millisecond and an open end
    /// included.
    #[test]
    fn fault_windows_agree_with_active_at() {
        let us = Duration::from_micros;
        let faults = [
            (us(1_500), us(1_000)),
            (us(2_000), us(3_000)),
            (us(0), us(999)),
            (us(4_001), us(1)),
            (us(5_000), Duration::MAX),
        ];
        let mut scenario = Scenario::new(1);
        for (from, length) in faults {
            scenario = scenario.fault(Fault::new(FaultKind::Outage, from, length));
        }
        let windows = fault_windows(&scenario);
        let start = scenario.start.as_millis();
        for ms in 0..10 {
            let offset = Duration::from_millis(ms);
            let active: Vec<bool> = scenario
                .faults
                .iter()
                .map(|f| f.active_at(offset))
                .collect();
            let mut counts = vec![0; windows.len()];
            count_during_faults(&windows, Timestamp::from_millis(start + ms), &mut counts);
            let counted: Vec<bool> = counts.iter().map(|&c| c == 1).collect();
            assert_eq!(counted, active, "{ms} ms in");
        }
        // Not vacuous: the first window holds exactly one millisecond.
        assert_eq!(windows[0], (start + 2, start + 3));
    }
}
