//! The blocking driver: one named thread owns the machine and waits on the
//! command channel with a deadline, so an invalidation or a shutdown ends
//! its wait at once. Each job runs on a short-lived worker thread, so a
//! source that hangs past the fetch timeout costs that thread, never the
//! driver.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use freshtoken_core::handle::{Command, Control};
use freshtoken_core::Input;

use super::engine::{fetch_blocking, Engine, Job, JobKind, Next};
use crate::cache::TokenCache;
use crate::source::TokenSource;

pub(crate) fn spawn<S: TokenSource>(
    engine: Engine,
    source: Arc<S>,
    name: String,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        let _span = tracing::info_span!("freshtoken").entered();
        run(engine, source)
    })
}

fn run<S: TokenSource>(mut engine: Engine, source: Arc<S>) {
    engine.start();
    let mut in_flight: Option<Flight> = None;
    loop {
        match engine.next() {
            Next::Stop => return,
            Next::Job(job) => {
                let kind = job.kind();
                let flight = Flight::start(job, &source, &engine);
                if kind.expects_answer() {
                    in_flight = Some(flight);
                } else if let Some(input) = flight.wait() {
                    engine.feed(input);
                }
            }
            Next::Sleep(sleep) => {
                let mut wake_at = Instant::now() + sleep;
                if let Some(flight) = &in_flight {
                    wake_at = wake_at.min(flight.deadline);
                }
                let command = engine.publisher().recv_deadline(wake_at);
                if let Some(flight) = in_flight.take() {
                    match flight.poll() {
                        Ok(Some(input)) => engine.feed(input),
                        Ok(None) => {}
                        Err(flight) => in_flight = Some(flight),
                    }
                }
                match command {
                    Some(Command::Wake) | None => engine.tick(),
                    Some(command) => engine.command(command),
                }
            }
        }
    }
}

/// A job running on a worker thread.
struct Flight {
    kind: JobKind,
    timeout: Duration,
    deadline: Instant,
    done: Arc<Done>,
}

/// Where a worker leaves its answer.
#[derive(Default)]
struct Done {
    answer: Mutex<Option<Option<Input>>>,
    ready: Condvar,
}

impl Flight {
    fn start<S: TokenSource>(job: Job, source: &Arc<S>, engine: &Engine) -> Flight {
        let kind = job.kind();
        let done = Arc::new(Done::default());
        let work: Box<dyn FnOnce() -> Option<Input> + Send> = match job {
            Job::Fetch(request) => {
                let source = source.clone();
                Box::new(move || fetch_blocking(&*source, &request))
            }
            Job::Cache(job) => {
                let cache: Arc<dyn TokenCache> = engine.cache();
                Box::new(move || job.run(&*cache))
            }
        };
        let worker = {
            let done = done.clone();
            let control: Control = engine.publisher().control();
            thread::Builder::new()
                .name("freshtoken-io".into())
                .spawn(move || {
                    let answer = work();
                    *lock(&done.answer) = Some(answer);
                    done.ready.notify_all();
                    control.send(Command::Wake);
                })
        };
        if worker.is_err() {
            *lock(&done.answer) = Some(kind.failed("could not start a worker thread"));
        }
        Flight {
            kind,
            timeout: engine.job_timeout(),
            deadline: Instant::now() + engine.job_timeout(),
            done,
        }
    }

    /// The answer if the job finished or timed out, else the flight back.
    fn poll(self) -> Result<Option<Input>, Flight> {
        if let Some(answer) = lock(&self.done.answer).take() {
            return Ok(answer);
        }
        if Instant::now() >= self.deadline {
            return Ok(self.timed_out());
        }
        Err(self)
    }

    /// Blocks until the job finishes or times out.
    fn wait(self) -> Option<Input> {
        let mut answer = lock(&self.done.answer);
        loop {
            if let Some(answer) = answer.take() {
                return answer;
            }
            let now = Instant::now();
            if now >= self.deadline {
                drop(answer);
                return self.timed_out();
            }
            answer = self
                .done
                .ready
                .wait_timeout(answer, self.deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn timed_out(&self) -> Option<Input> {
        self.kind
            .failed(&format!("timed out after {:?}", self.timeout))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind it; a panic cannot leave it half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
