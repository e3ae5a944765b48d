//! The job queue between the tokio thread and one token's worker threads.
//!
//! A bounded FIFO under a mutex, with one refinement over a plain channel: a worker that
//! has just finished a job, while none of its siblings is looking already, keeps looking
//! for the next job for a short while ([`JobQueue::take`]'s `spin`) before it sleeps, and
//! a job queued meanwhile wakes nobody. That is the common case of a client sending one
//! request after another, and on a VM whose idle vCPUs halt, waking a sleeping thread costs
//! as much as the rest of the round trip (BENCHMARKS.md, round 3). A plain channel (the
//! crossbeam channel before) also woke a sleeping sibling for every job that the spinning
//! worker then took itself. It looks also while a sibling runs a job: under load the
//! clients' next requests come soon, and a worker that yields its CPU to them while it
//! looks takes their requests without being woken (BENCHMARKS.md, round 8).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::lane::{Found, Guest, Lane};

/// A bounded job queue served by several worker threads.
///
/// With a [`Lane`], the workers also serve the lane's guests, and they sleep in the
/// lane's `epoll_wait` instead of on a condition variable: a queued job rings its bell.
pub(super) struct JobQueue<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    depth: usize,
    lane: Option<Arc<Lane>>,
}

/// What a worker takes: a job, or a parked connection with something to read.
pub(super) enum Work<'a, J> {
    Job(J, Ticket<'a, J>),
    Guest(u64, Box<dyn Guest>, Ticket<'a, J>),
}

struct State<J> {
    jobs: VecDeque<J>,
    closed: bool,
    /// Workers looking for a job without sleeping (at most one).
    spinning: usize,
    /// Workers waiting on [`JobQueue::ready`].
    sleeping: usize,
    /// A worker sleeps in the lane's `epoll_wait` (at most one).
    watching: bool,
    /// Workers running a job.
    running: usize,
}

impl<J> State<J> {
    /// Whether a worker looks at the lane: one sleeping in its `epoll_wait`, or a spinning
    /// one (it looks at the lane between its looks at the queue).
    fn watched(&self) -> bool {
        self.watching || self.spinning > 0
    }
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
            .field("watching", &s.watching)
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
    pub(super) fn new(depth: usize, lane: Option<Arc<Lane>>) -> Self {
        Self {
            lane,
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
                spinning: 0,
                sleeping: 0,
                watching: false,
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
        let more = s.jobs.len() > s.spinning;
        let (sleeper, watcher) = (more && s.sleeping > 0, more && s.watching);
        drop(s);
        // A sleeper rather than the watcher, which goes on watching the lane.
        if sleeper {
            self.ready.notify_one();
        } else if watcher {
            self.ring();
        }
        Ok(())
    }

    fn ring(&self) {
        if let Some(lane) = &self.lane {
            lane.ring();
        }
    }

    fn wake_one(&self) {
        self.ready.notify_one();
        self.ring();
    }

    /// A look at the lane (`sleep`: as [`Lane::look`]), outside the queue's lock.
    fn look(&self, sleep: bool) -> Option<(u64, Box<dyn Guest>)> {
        match self.lane.as_ref()?.look(sleep) {
            Found::Guest(id, guest) => Some((id, guest)),
            Found::Nothing => None,
        }
    }

    /// No more jobs: the workers finish the queued ones, then [`JobQueue::take`] says
    /// `None`.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.ring();
    }

    /// The next job (or guest of the lane), waiting for one as long as it takes; `None`
    /// once the queue is closed and empty. When no other worker spins or watches the
    /// lane, it first looks for up to `spin` (yielding the CPU in between) before it
    /// sleeps. Queued jobs come before the lane's guests.
    ///
    /// With a lane, one sleeping worker watches it (sleeps in its `epoll_wait`), the
    /// others sleep on the condition variable; a spinning worker watches it too, so that
    /// a parked client's request never wakes a sleeper that a spinner would have
    /// served. A worker that takes work while guests stay parked and nobody else watches
    /// wakes a sleeper to watch.
    pub(super) fn take(&self, spin: Duration) -> Option<Work<'_, J>> {
        let mut s = self.lock();
        let mut spun = spin.is_zero();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                return Some(Work::Job(job, self.ticket(s)));
            }
            if s.closed {
                drop(s);
                // The bell woke one sleeper: pass it on to the next.
                self.wake_one();
                return None;
            }
            if self.lane.is_some() {
                drop(s);
                let found = self.look(false);
                s = self.lock();
                if let Some((id, guest)) = found {
                    return Some(Work::Guest(id, guest, self.ticket(s)));
                }
                if !s.jobs.is_empty() || s.closed {
                    continue;
                }
            }
            if !spun && !s.watched() {
                spun = true;
                s.spinning += 1;
                drop(s);
                let start = Instant::now();
                s = loop {
                    std::thread::yield_now();
                    let mut g = self.lock();
                    // Queued jobs first.
                    if !g.jobs.is_empty() || g.closed || start.elapsed() >= spin {
                        g.spinning -= 1;
                        break g;
                    }
                    drop(g);
                    let found = self.look(false);
                    if let Some((id, guest)) = found {
                        let mut g = self.lock();
                        g.spinning -= 1;
                        return Some(Work::Guest(id, guest, self.ticket(g)));
                    }
                };
                continue;
            }
            if self.lane.is_some() && !s.watched() {
                s.watching = true;
                drop(s);
                let found = self.look(true);
                s = self.lock();
                s.watching = false;
                if let Some((id, guest)) = found {
                    return Some(Work::Guest(id, guest, self.ticket(s)));
                }
                continue;
            }
            s.sleeping += 1;
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            s.sleeping -= 1;
        }
    }

    /// The worker holding `s` starts on what it took, and passes wake-ups on:
    /// - jobs still queued wake another worker (a sleeper, else the watcher): any worker's
    ///   look at the lane may have taken the bell that a push rang for the watcher;
    /// - a lane left unwatched while guests wait there gets a sleeper to watch it.
    fn ticket(&self, mut s: MutexGuard<'_, State<J>>) -> Ticket<'_, J> {
        s.running += 1;
        let more = s.jobs.len() > s.spinning;
        let (sleeper, watcher) = (s.sleeping > 0, s.watching);
        let unwatched = !s.watched() && sleeper;
        drop(s);
        if more && sleeper {
            self.ready.notify_one();
        } else if more && watcher {
            self.ring();
        } else if unwatched && self.lane.as_ref().is_some_and(|l| l.has_parked()) {
            self.ready.notify_one();
        }
        Ticket(self)
    }

    /// A guest was parked on the lane: unless a worker watches it (or spins, or will look
    /// when it is done), a sleeping one is woken to watch.
    pub(super) fn watch(&self) {
        let s = self.lock();
        let wake = !s.watched() && s.sleeping > 0;
        drop(s);
        if wake {
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lane::Served;
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_runs_once_in_order_per_worker_and_close_drains() {
        let q = Arc::new(JobQueue::<usize>::new(10_000, None));
        let seen = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let (q, seen) = (q.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut last = None;
                    while let Some(Work::Job(job, _t)) = q.take(Duration::from_micros(200)) {
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
        let q = JobQueue::new(2, None);
        assert!(q.push(1).is_ok() && q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
    }

    #[test]
    fn a_sleeping_worker_is_woken_while_another_runs_a_long_job() {
        let q = Arc::new(JobQueue::<u64>::new(16, None));
        let (tx, rx) = std::sync::mpsc::channel();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (q, tx) = (q.clone(), tx.clone());
                std::thread::spawn(move || {
                    while let Some(Work::Job(ms, _t)) = q.take(Duration::from_micros(200)) {
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

    /// A parked connection for the lane tests; the test's worker threads serve it
    /// themselves (read what came, report, park it again).
    struct TestGuest {
        sock: std::os::unix::net::UnixStream,
        wanted: Arc<std::sync::atomic::AtomicBool>,
        /// Where it goes back to (with its socket, which stays open).
        back: std::sync::mpsc::Sender<std::os::unix::net::UnixStream>,
    }

    impl Guest for TestGuest {
        fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
            std::os::fd::AsFd::as_fd(&self.sock)
        }
        fn serve(self: Box<Self>, _: &mut super::super::OnWorker<'_>) -> Served {
            unreachable!("the test's workers serve their guests themselves")
        }
        fn wanted(&self) -> bool {
            self.wanted.load(Ordering::SeqCst)
        }
        fn go_back(self: Box<Self>) {
            let _ = self.back.send(self.sock);
        }
    }

    /// Opened by the test to let workers go on with the guests they hold.
    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// What the lane tests share: a queue with a lane, its workers' reports (guest ids;
    /// jobs as 1000 + job), the guests that went back, and the ids a worker holds until
    /// the gate opens.
    struct LaneTest {
        q: Arc<JobQueue<u64>>,
        lane: Arc<Lane>,
        took: std::sync::mpsc::Receiver<u64>,
        back: std::sync::mpsc::Receiver<std::os::unix::net::UnixStream>,
        back_tx: std::sync::mpsc::Sender<std::os::unix::net::UnixStream>,
        held: Arc<Mutex<Vec<u64>>>,
        gate: Gate,
        workers: Vec<std::thread::JoinHandle<()>>,
        /// The workers' thread ids.
        tids: Vec<i32>,
    }

    impl LaneTest {
        fn new(workers: usize) -> Self {
            let lane = Arc::new(Lane::new().expect("lane"));
            let q = Arc::new(JobQueue::<u64>::new(16, Some(lane.clone())));
            let (took_tx, took) = std::sync::mpsc::channel();
            let (back_tx, back) = std::sync::mpsc::channel();
            let held = Arc::new(Mutex::new(Vec::new()));
            let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let workers = (0..workers)
                .map(|_| {
                    let (q, lane, tx) = (q.clone(), lane.clone(), took_tx.clone());
                    let (held, gate, tid_tx) = (held.clone(), gate.clone(), tid_tx.clone());
                    std::thread::spawn(move || {
                        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
                        while let Some(work) = q.take(Duration::from_micros(200)) {
                            match work {
                                Work::Job(j, _t) => {
                                    // Jobs from 2000 on take j - 2000 ms.
                                    if j >= 2000 {
                                        std::thread::sleep(Duration::from_millis(j - 2000));
                                    }
                                    tx.send(1000 + j).expect("report");
                                }
                                Work::Guest(id, g, _t) => {
                                    let mut b = [0u8; 64];
                                    let _ = rustix::io::read(g.fd(), &mut b);
                                    tx.send(id).expect("report");
                                    if held.lock().expect("lock").contains(&id) {
                                        let (open, cv) = &*gate;
                                        let mut o = open.lock().expect("lock");
                                        while !*o {
                                            o = cv.wait(o).expect("wait");
                                        }
                                    }
                                    lane.served(id, Served::Stay(g));
                                }
                            }
                        }
                    })
                })
                .collect::<Vec<_>>();
            let tids = (0..workers.len())
                .map(|_| tid_rx.recv().expect("thread id"))
                .collect();
            std::thread::sleep(Duration::from_millis(20)); // all asleep
            Self {
                tids,
                q,
                lane,
                took,
                back,
                back_tx,
                held,
                gate,
                workers,
            }
        }

        /// Parks a guest; returns its id, the client's end and its `wanted` flag.
        fn park(
            &self,
        ) -> (
            u64,
            std::os::unix::net::UnixStream,
            Arc<std::sync::atomic::AtomicBool>,
        ) {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
            let wanted = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let g = Box::new(TestGuest {
                sock: ours,
                wanted: wanted.clone(),
                back: self.back_tx.clone(),
            });
            // As `Token::park` does.
            let id = self.lane.park(g).map_err(|(e, _)| e).expect("park");
            self.q.watch();
            (id, theirs, wanted)
        }

        /// How often the workers have fallen asleep so far (voluntary context switches;
        /// a yield does not count).
        fn sleeps(&self) -> u64 {
            self.tids
                .iter()
                .map(|tid| {
                    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
                        .expect("status");
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .expect("voluntary_ctxt_switches")
                })
                .sum()
        }

        fn took(&self) -> Option<u64> {
            self.took.recv_timeout(Duration::from_secs(2)).ok()
        }

        fn open_gate(&self) {
            let (open, cv) = &*self.gate;
            *open.lock().expect("lock") = true;
            cv.notify_all();
        }

        fn finish(self) {
            self.open_gate();
            self.q.close();
            for w in self.workers {
                w.join().expect("worker");
            }
        }
    }

    fn poke(s: &mut std::os::unix::net::UnixStream) {
        std::io::Write::write_all(s, b"x").expect("write");
    }

    #[test]
    fn a_sleeping_worker_is_woken_by_a_parked_connection_and_by_a_job() {
        let t = LaneTest::new(1);
        let (id, mut client, _) = t.park();
        poke(&mut client);
        assert_eq!(
            t.took(),
            Some(id),
            "the connection's request woke the worker"
        );
        q_push(&t, 7);
        assert_eq!(t.took(), Some(1007), "a job rang the bell");
        poke(&mut client);
        assert_eq!(t.took(), Some(id), "parked again after it was served");
        t.finish();
    }

    fn q_push(t: &LaneTest, j: u64) {
        t.q.push(j).expect("room");
    }

    #[test]
    fn while_one_worker_serves_a_connection_another_takes_the_next() {
        let t = LaneTest::new(2);
        let (a, mut ca, _) = t.park();
        let (b, mut cb, _) = t.park();
        t.held.lock().expect("lock").push(a);
        poke(&mut ca);
        assert_eq!(t.took(), Some(a));
        // The worker that took `a` holds it; the other must come for `b`.
        poke(&mut cb);
        assert_eq!(t.took(), Some(b), "the second request waited for the first");
        // And a job too, while `a` is still held.
        q_push(&t, 1);
        assert_eq!(t.took(), Some(1001));
        t.finish();
    }

    #[test]
    fn a_connection_called_back_leaves_the_lane() {
        let t = LaneTest::new(2);
        let (a, mut ca, _) = t.park();
        t.lane.reclaim(a);
        let _a = t
            .back
            .recv_timeout(Duration::from_secs(2))
            .expect("sent back");
        poke(&mut ca);
        assert_eq!(
            t.took.recv_timeout(Duration::from_millis(200)).ok(),
            None,
            "a worker took a connection that had left the lane"
        );
        // Called back while a worker serves it: it goes back instead of being parked.
        let (b, mut cb, wanted) = t.park();
        t.held.lock().expect("lock").push(b);
        poke(&mut cb);
        assert_eq!(t.took(), Some(b));
        wanted.store(true, Ordering::SeqCst);
        t.lane.reclaim(b); // a worker has it: nothing to take back yet
        t.open_gate();
        let _b = t
            .back
            .recv_timeout(Duration::from_secs(2))
            .expect("sent back");
        poke(&mut cb);
        assert_eq!(t.took.recv_timeout(Duration::from_millis(200)).ok(), None);
        t.finish();
    }

    #[test]
    fn a_connection_parked_while_the_watcher_serves_is_watched() {
        let t = LaneTest::new(2);
        let (a, mut ca, _) = t.park();
        t.held.lock().expect("lock").push(a);
        poke(&mut ca);
        assert_eq!(t.took(), Some(a));
        // The watcher holds `a`; the other worker sleeps. A connection parked now must
        // get a watcher.
        let (b, mut cb, _) = t.park();
        poke(&mut cb);
        assert_eq!(t.took(), Some(b), "nobody watched the lane");
        t.finish();
    }

    #[test]
    fn a_job_queued_behind_a_long_one_does_not_wait_for_it() {
        // Any worker's look at the lane can take the bell a push rang for the watcher;
        // the worker that takes a job with more queued must pass the wake-up on.
        let t = LaneTest::new(2);
        for _ in 0..10 {
            q_push(&t, 2000); // 0 ms
            q_push(&t, 2300); // 300 ms
            q_push(&t, 2001); // 1 ms
            let mut order = Vec::new();
            while order.len() < 3 {
                order.push(t.took().expect("a job ran"));
            }
            let short = order.iter().position(|&j| j == 3001);
            let long = order.iter().position(|&j| j == 3300);
            assert!(
                short < long,
                "the 1 ms job waited for the 300 ms one: {order:?}"
            );
        }
        t.finish();
    }

    #[test]
    fn a_worker_looks_for_the_next_request_while_its_sibling_runs_a_long_job() {
        let t = LaneTest::new(2);
        let (id, mut client, _) = t.park();
        q_push(&t, 3000); // one worker is busy for a second
        std::thread::sleep(Duration::from_millis(20));
        let before = t.sleeps();
        for _ in 0..200 {
            poke(&mut client);
            assert_eq!(t.took(), Some(id));
        }
        // Each request comes soon after the last answer: the other worker looks for it
        // instead of sleeping in `epoll_wait` (and being woken) between requests.
        let slept = t.sleeps() - before;
        assert!(
            slept < 20,
            "the workers fell asleep {slept} times in 200 requests"
        );
        assert_eq!(t.took.recv_timeout(Duration::from_secs(3)).ok(), Some(4000));
        t.finish();
    }
}
