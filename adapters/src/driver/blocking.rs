//! The blocking driver: one named thread owns the machine and waits on the
//! command channel with a deadline, so an invalidation or a shutdown ends
//! its wait at once. Each job runs on a short-lived worker thread, so a
//! source that hangs costs that thread, never the driver: the machine gives
//! up on the request at its deadline, and the worker's answer, if it ever
//! comes, is still fed to the machine (which recognises it as late).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use freshtoken_core::handle::{Command, Control};
use freshtoken_core::Input;

use super::engine::{fetch_blocking, Engine, Job, Next};
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

/// Where workers leave their answers for the driver thread.
type Inbox = Arc<Mutex<VecDeque<Input>>>;

fn run<S: TokenSource>(mut engine: Engine, source: Arc<S>) {
    engine.start();
    let inbox: Inbox = Arc::default();
    loop {
        match engine.next() {
            Next::Stop => return,
            Next::Job(job) => start(job, &source, &engine, &inbox),
            Next::Sleep(sleep) => {
                let command = engine.publisher().recv_deadline(Instant::now() + sleep);
                let answers: Vec<Input> = lock(&inbox).drain(..).collect();
                for input in answers {
                    engine.feed(input);
                }
                match command {
                    Some(Command::Wake) | None => engine.tick(),
                    Some(command) => engine.command(command),
                }
            }
        }
    }
}

/// Runs `job` on a worker thread that leaves its answer in `inbox` and
/// wakes the driver.
fn start<S: TokenSource>(job: Job, source: &Arc<S>, engine: &Engine, inbox: &Inbox) {
    let kind = job.kind();
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
    let control: Control = engine.publisher().control();
    let worker_inbox = inbox.clone();
    let worker = thread::Builder::new()
        .name("freshtoken-io".into())
        .spawn(move || {
            if let Some(answer) = work() {
                lock(&worker_inbox).push_back(answer);
                control.send(Command::Wake);
            }
        });
    if worker.is_err() {
        if let Some(answer) = kind.failed("could not start a worker thread") {
            lock(inbox).push_back(answer);
            engine.publisher().control().send(Command::Wake);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind it; a panic cannot leave it half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
