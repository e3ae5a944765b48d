//! The job queue between the tokio thread and one token's worker threads.
//!
//! A bounded FIFO under a mutex, with one refinement over a plain channel: a worker that
//! has just finished a job, while none of its siblings has anything to do, keeps looking
//! for the next job for a short while ([`JobQueue::take`]'s `spin`) before it sleeps, and
//! a job queued meanwhile wakes nobody. That is the common case of a client sending one
//! request after another, and on a VM whose idle vCPUs halt, waking a sleeping thread costs
//! as much as the rest of the round trip (BENCHMARKS.md, round 3). A plain channel (the
//! crossbeam channel before) also woke a sleeping sibling for every job that the spinning
//! worker then took itself.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A bounded job queue served by several worker threads.
pub(super) struct JobQueue<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    depth: usize,
}

struct State<J> {
    jobs: VecDeque<J>,
    closed: bool,
    /// Workers looking for a job without sleeping (at most one).
    spinning: usize,
    /// Workers waiting on [`JobQueue::ready`].
    sleeping: usize,
    /// Workers running a job.
    running: usize,
}

/// A worker's claim on the job it took: while it lives the worker counts as running.
pub(super) struct Ticket<'a, J>(&'a JobQueue<J>);

impl<J> Drop for Ticket<'_, J> {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
    }
}

impl<J> std::fmt::Debug for JobQueue<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("JobQueue")
            .field("queued", &s.jobs.len())
            .field("closed", &s.closed)
            .field("spinning", &s.spinning)
            .field("sleeping", &s.sleeping)
            .field("running", &s.running)
            .finish()
    }
}

impl<J> std::fmt::Debug for Ticket<'_, J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

impl<J> JobQueue<J> {
    /// A queue that holds at most `depth` jobs waiting for a worker.
    pub(super) fn new(depth: usize) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
                spinning: 0,
                sleeping: 0,
                running: 0,
            }),
            ready: Condvar::new(),
            depth,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // A worker that panicked mid-job held no lock of ours; the state is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`, or gives it back when the queue is full or closed. A sleeping worker
    /// is woken only when the spinning one (if any) cannot take every queued job.
    pub(super) fn push(&self, job: J) -> Result<(), J> {
        let mut s = self.lock();
        if s.closed || s.jobs.len() >= self.depth {
            return Err(job);
        }
        s.jobs.push_back(job);
        let wake = s.sleeping > 0 && s.jobs.len() > s.spinning;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// No more jobs: the workers finish the queued ones, then [`JobQueue::take`] says
    /// `None`.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next job, waiting for one as long as it takes; `None` once the queue is closed
    /// and empty. When no other worker runs or spins, it first looks for up to `spin`
    /// (yielding the CPU in between) before it sleeps.
    pub(super) fn take(&self, spin: Duration) -> Option<(J, Ticket<'_, J>)> {
        let mut s = self.lock();
        let mut spun = spin.is_zero();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                s.running += 1;
                return Some((job, Ticket(self)));
            }
            if s.closed {
                return None;
            }
            if !spun && s.running == 0 && s.spinning == 0 {
                spun = true;
                s.spinning += 1;
                drop(s);
                let start = Instant::now();
                s = loop {
                    std::thread::yield_now();
                    let mut g = self.lock();
                    if !g.jobs.is_empty() || g.closed || g.running > 0 || start.elapsed() >= spin {
                        g.spinning -= 1;
                        break g;
                    }
                };
                continue;
            }
            s.sleeping += 1;
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            s.sleeping -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_runs_once_in_order_per_worker_and_close_drains() {
        let q = Arc::new(JobQueue::<usize>::new(10_000));
        let seen = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (q, seen) = (q.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut last = None;
                    while let Some((job, _t)) = q.take(Duration::from_micros(200)) {
                        assert!(last < Some(job), "a worker took {job} after {last:?}");
                        last = Some(job);
                        seen.fetch_add(job, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut sum = 0;
        for i in 1..=5_000 {
            q.push(i).expect("room");
            sum += i;
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        q.close();
        for w in workers {
            w.join().expect("worker");
        }
        assert_eq!(seen.load(Ordering::Relaxed), sum);
        assert!(q.push(1).is_err(), "a closed queue takes no job");
    }

    #[test]
    fn a_full_queue_refuses() {
        let q = JobQueue::new(2);
        assert!(q.push(1).is_ok() && q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
    }

    #[test]
    fn a_sleeping_worker_is_woken_while_another_runs_a_long_job() {
        let q = Arc::new(JobQueue::<u64>::new(16));
        let (tx, rx) = std::sync::mpsc::channel();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (q, tx) = (q.clone(), tx.clone());
                std::thread::spawn(move || {
                    while let Some((ms, _t)) = q.take(Duration::from_micros(200)) {
                        std::thread::sleep(Duration::from_millis(ms));
                        tx.send(ms).expect("report");
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20)); // both asleep
        q.push(2_000).expect("room"); // one worker is busy for 2 s
        std::thread::sleep(Duration::from_millis(20));
        q.push(1).expect("room"); // the other must take this at once
        let first = rx
            .recv_timeout(Duration::from_secs(1))
            .expect("the second job ran while the first still did");
        assert_eq!(first, 1);
        q.close();
        for w in workers {
            w.join().expect("worker");
        }
    }
}
