//! Looking for a response without sleeping, while that costs nobody anything.
//!
//! On a machine whose idle CPUs halt (a VM; a laptop's core in a sleep state), waking a
//! thread that sleeps on one costs tens of microseconds: here more than the agent's whole
//! share of an ECDSA signature (BENCHMARKS.md, round 6). A client that is still looking
//! when its response comes costs no wake-up at all. So a client looks for a while first,
//! and sleeps only after that; but only for about as long as a response takes when the
//! agent is not busy, and not at all for a while after looking did not pay
//! ([`Spin`]), and it stops once another thread is seen to want its CPU
//! ([`spin_for_input`]).

use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fd::AsFd;

use super::AgentStream;

/// The longest a client looks for one response without sleeping: a little longer than
/// SoftHSM takes for an RSA-2048 signature. A card takes far longer; then a client
/// sleeps after at most this much.
const SPIN_LIMIT: Duration = Duration::from_millis(1);

/// A `sched_yield` that takes longer than this let another thread run on this CPU. The
/// first time, that is most likely the agent's thread that takes the request; the second
/// time, the CPU is wanted, and a client that keeps looking would only take it away.
const CONTENDED: Duration = Duration::from_micros(20);

/// Looks past the fastest recent answer by this share of it (plus [`SLACK`]); a busy
/// agent, whose answers wait behind other clients' requests, answers later than that and
/// its clients soon stop looking.
const MARGIN_DIV: u32 = 2;
const SLACK: Duration = Duration::from_micros(20);

/// At most this many waits go without looking after looks that did not pay.
const MAX_SKIP: u32 = 64;

/// Whether `fd` has input (or an error or hang-up to report), waiting for at most
/// `timeout` (`None`: as long as it takes).
pub(super) fn poll_in(fd: impl AsFd, timeout: Option<&Timespec>) -> rustix::io::Result<bool> {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    Ok(poll(&mut fds, timeout)? > 0)
}

/// Looks for input on `fd` without sleeping, for up to `budget`, and says whether there
/// is some (or an error or hang-up to report). Between looks it yields the CPU, and it
/// gives up when a second yield shows that another thread wanted the CPU.
pub fn spin_for_input(fd: impl AsFd, budget: Duration) -> bool {
    const NOW: Timespec = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ready = || poll_in(&fd, Some(&NOW)).unwrap_or(false);
    let start = Instant::now();
    let mut yielded = false;
    loop {
        if ready() {
            return true;
        }
        let looked = Instant::now();
        if looked.duration_since(start) >= budget {
            return false;
        }
        std::thread::yield_now();
        if looked.elapsed() > CONTENDED && std::mem::replace(&mut yielded, true) {
            // One last look: the response may have come while the other thread ran.
            return ready();
        }
    }
}

/// How long one connection's client looks for each response before it sleeps.
///
/// - It looks for up to one and a half times the fastest recent answer to a private-key
///   operation on this connection (at most 1 ms, `SPIN_LIMIT`; all of it before the
///   first). The fastest answer counts for less with each answer that follows (an eighth
///   more each time), so it follows the agent when that slows down for good.
/// - After a look that did not find the response, it skips looking for the next wait,
///   then for the next 2, 4, … up to 64 waits; each look that pays halves that again.
#[derive(Debug, Default, Clone)]
pub struct Spin {
    fastest: Option<Duration>,
    skip: u32,
    backoff: u32,
}

impl Spin {
    /// How long to look for the next response (zero: do not look).
    fn budget(&mut self) -> Duration {
        if self.skip > 0 {
            self.skip -= 1;
            return Duration::ZERO;
        }
        self.fastest.map_or(SPIN_LIMIT, |f| {
            f.saturating_add(f / MARGIN_DIV)
                .saturating_add(SLACK)
                .min(SPIN_LIMIT)
        })
    }

    /// Takes note of one wait: whether it looked and found the response, and how long the
    /// response took since the request went out (for a private-key operation, `key_op`).
    fn record(&mut self, looked: bool, found: bool, took: Duration, key_op: bool) {
        if key_op {
            self.fastest = Some(match self.fastest {
                Some(f) => took.min(f.saturating_add(f / 8)),
                None => took,
            });
        }
        if found {
            self.backoff /= 2;
        } else if looked {
            self.backoff = (self.backoff * 2).clamp(1, MAX_SKIP);
            self.skip = self.backoff;
        }
    }

    /// Waits until `stream` has something to read, right after a request went out: looks
    /// for up to [`Spin::budget`], then sleeps in [`AgentStream::wait_readable`] for at
    /// most `limit`.
    ///
    /// # Errors
    /// As for [`AgentStream::wait_readable`].
    pub fn wait<S: AgentStream + ?Sized>(
        &mut self,
        stream: &S,
        limit: Option<Duration>,
        key_op: bool,
    ) -> std::io::Result<()> {
        let sent = Instant::now();
        let budget = self.budget();
        let looked = !budget.is_zero();
        let found = looked && stream.input_within(budget);
        if !found {
            stream.wait_readable(limit)?;
        }
        self.record(looked, found, sent.elapsed(), key_op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: fn(u64) -> Duration = Duration::from_micros;

    #[test]
    fn a_new_connection_looks_for_the_whole_limit() {
        assert_eq!(Spin::default().budget(), SPIN_LIMIT);
    }

    #[test]
    fn it_looks_a_little_past_the_fastest_answer() {
        let mut s = Spin::default();
        s.record(true, true, US(80), true);
        assert_eq!(s.budget(), US(80 + 40 + 20));
        // A slower answer does not raise it by more than an eighth.
        s.record(true, true, US(800), true);
        assert_eq!(s.budget(), US(90 + 45 + 20));
        // Answers to other requests (hello, status) do not count.
        s.record(true, true, US(10), false);
        assert_eq!(s.budget(), US(90 + 45 + 20));
        // Never more than the limit.
        let mut slow = Spin::default();
        slow.record(true, true, Duration::from_millis(5), true);
        assert_eq!(slow.budget(), SPIN_LIMIT);
    }

    #[test]
    fn an_absurd_answer_time_does_not_overflow() {
        let mut s = Spin::default();
        s.record(true, true, Duration::MAX, true);
        s.record(true, true, Duration::MAX, true);
        assert_eq!(s.budget(), SPIN_LIMIT);
    }

    #[test]
    fn the_back_off_stops_growing_at_its_cap() {
        let mut s = Spin::default();
        for _ in 0..20 {
            s.skip = 0;
            s.record(true, false, US(900), true);
        }
        assert_eq!(s.skip, MAX_SKIP);
    }

    #[test]
    fn looks_that_do_not_pay_make_it_stop_looking_for_longer_and_longer() {
        let mut s = Spin::default();
        let mut skipped = vec![];
        for _ in 0..5 {
            assert!(!s.budget().is_zero());
            s.record(true, false, US(900), true);
            let mut n = 0;
            while s.budget().is_zero() {
                n += 1;
                s.record(false, false, US(900), true);
            }
            skipped.push(n);
        }
        assert_eq!(skipped, [1, 2, 4, 8, 16]);
        // A look that pays halves it.
        s.record(true, true, US(100), true);
        s.record(true, false, US(900), true);
        let mut n = 0;
        while s.budget().is_zero() {
            n += 1;
        }
        assert_eq!(n, 16);
    }
}
