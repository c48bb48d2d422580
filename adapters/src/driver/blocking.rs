//! The blocking driver: one named thread owns the machine and waits on the
//! command channel with a deadline, so an invalidation or a shutdown ends
//! its wait at once. Source calls run on one long-lived worker thread, fed
//! by a channel, and cache calls on another (so a hung cache never stops
//! fetches, nor a hung authority cache reads).
//!
//! A call that hangs costs its worker, never the driver: the machine
//! gives up on the request at its deadline, and the worker's answer, if it
//! ever comes, is still fed to the machine (which recognises it as late).
//! The next job then finds the worker busy: the hung worker is set aside
//! (it exits once its call returns) and a new one takes over. While a
//! worker that was set aside is still stuck, no second one is: a job that
//! finds the worker busy then fails at once, and the machine backs off as
//! for any failure. So a hang costs at most one extra thread (per kind of
//! call), not one per attempt.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use freshtoken_core::Input;

use super::refresher::{fetch_blocking, Job, JobKind, Next, Refresher};
use super::{Command, Control};
use crate::cache::TokenCache;
use crate::source::TokenSource;
use crate::sync::lock;

pub(crate) fn spawn<S: TokenSource>(
    refresher: Refresher,
    source: Arc<S>,
    cache: Arc<dyn TokenCache>,
    name: String,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(move || {
        let _span = tracing::info_span!("freshtoken").entered();
        run(refresher, source, cache)
    })
}

/// Where workers leave their answers for the driver thread.
type Inbox = Arc<Mutex<VecDeque<Input>>>;

/// A call to make on the worker.
type Work = Box<dyn FnOnce() -> Option<Input> + Send>;

/// A call and whether the machine waits for its answer.
struct Sent {
    work: Work,
    answered: bool,
}

fn run<S: TokenSource>(mut refresher: Refresher, source: Arc<S>, cache: Arc<dyn TokenCache>) {
    refresher.start();
    let inbox: Inbox = Arc::default();
    let name = thread::current().name().unwrap_or("freshtoken").to_owned();
    let control = refresher.publisher().control();
    let mut fetches = Workers::new(inbox.clone(), control.clone(), format!("{name}-io"));
    let mut caches = Workers::new(inbox.clone(), control, format!("{name}-cache"));
    loop {
        match refresher.next() {
            Next::Stop => return,
            Next::Job(job @ Job::Fetch(_)) => fetches.start(job, &source, &cache),
            Next::Job(job) => caches.start(job, &source, &cache),
            Next::Sleep(sleep) => {
                let command = refresher
                    .publisher()
                    .recv_until(Instant::now().checked_add(sleep));
                let answers: Vec<Input> = lock(&inbox).drain(..).collect();
                for input in answers {
                    refresher.feed(input);
                }
                match command {
                    Some(Command::Wake) | None => refresher.tick(),
                    Some(command) => refresher.command(command),
                }
            }
        }
    }
}

/// The worker thread and, while one is stuck, the one set aside.
struct Workers {
    current: Option<Worker>,
    /// Whether the worker set aside is still in its call.
    stuck: Option<Arc<AtomicBool>>,
    inbox: Inbox,
    control: Control,
    /// The workers' thread name.
    name: String,
}

struct Worker {
    jobs: Sender<Sent>,
    /// Jobs sent whose answer the machine waits for, not yet finished.
    pending: Arc<AtomicUsize>,
    /// Cleared when the thread exits.
    alive: Arc<AtomicBool>,
}

impl Workers {
    fn new(inbox: Inbox, control: Control, name: String) -> Self {
        Workers {
            current: None,
            stuck: None,
            inbox,
            control,
            name,
        }
    }

    /// Runs `job` on the worker; its answer lands in the inbox and wakes
    /// the driver.
    fn start<S: TokenSource>(&mut self, job: Job, source: &Arc<S>, cache: &Arc<dyn TokenCache>) {
        let kind = job.kind();
        let work: Work = match job {
            Job::Fetch(request) => {
                let source = source.clone();
                Box::new(move || fetch_blocking(&*source, &request))
            }
            Job::Cache(job) => {
                let cache = cache.clone();
                Box::new(move || job.run(&*cache))
            }
        };
        if let Err(why) = self.send(kind, work) {
            if let Some(answer) = kind.failed(why) {
                lock(&self.inbox).push_back(answer);
                self.control.send(Command::Wake);
            }
        }
    }

    fn send(&mut self, kind: JobKind, work: Work) -> Result<(), &'static str> {
        // A job that expects an answer, while the worker is still in
        // another call, means the machine gave up on that call at its
        // deadline: the worker is stuck. (A release, which the machine
        // awaits only when stopping, may queue behind it: it is sent after
        // a store or a fetch is answered, or beside a lease granted late.)
        let answered = !matches!(kind, JobKind::Release(_));
        let busy = self
            .current
            .as_ref()
            .is_some_and(|w| w.pending.load(Ordering::SeqCst) > 0);
        if busy && answered {
            if self
                .stuck
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst))
            {
                return Err("not started: a source or cache call is still hung");
            }
            // Set it aside: dropping its sender ends its thread after the
            // call it is in.
            self.stuck = self.current.take().map(|w| w.alive);
        }
        if self.current.is_none() {
            self.current = Some(
                self.worker()
                    .map_err(|_| "could not start a worker thread")?,
            );
        }
        let Some(worker) = self.current.as_ref() else {
            return Err("no worker thread");
        };
        if answered {
            worker.pending.fetch_add(1, Ordering::SeqCst);
        }
        if worker.jobs.send(Sent { work, answered }).is_err() {
            // The thread is gone (it cannot panic: calls contain their
            // panics); start afresh at the next job.
            self.current = None;
            return Err("the worker thread has exited");
        }
        Ok(())
    }

    fn worker(&self) -> io::Result<Worker> {
        let (jobs, queue) = mpsc::channel::<Sent>();
        let pending = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let (inbox, control) = (self.inbox.clone(), self.control.clone());
        let (left, running) = (pending.clone(), alive.clone());
        thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                for Sent { work, answered } in queue {
                    let answer = work();
                    if answered {
                        left.fetch_sub(1, Ordering::SeqCst);
                    }
                    if let Some(answer) = answer {
                        lock(&inbox).push_back(answer);
                        control.send(Command::Wake);
                    }
                }
                running.store(false, Ordering::SeqCst);
            })?;
        Ok(Worker {
            jobs,
            pending,
            alive,
        })
    }
}
