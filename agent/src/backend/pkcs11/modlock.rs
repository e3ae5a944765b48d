//! The locks the agent lends a PKCS#11 module for its own mutexes (`C_Initialize` with
//! `CreateMutex`, `LockMutex`, …; the callbacks are in `raw`).
//!
//! A module guards its state with mutexes that its calls take for a moment (SoftHSM: its
//! session, handle and object mutexes, in every `C_SignInit` and `C_Sign`). With the
//! OS's locks (`CKF_OS_LOCKING_OK`), a thread that finds one taken sleeps at once, and
//! the holder's unlock must wake it: on a VM that is an IPI and two context switches,
//! tens of microseconds, for a lock held for a few. Two workers signing at once meet on
//! those mutexes all the time (`__lll_lock_wait` and `futex` in the workers' profile).
//! So a waiter here looks for the lock for a while ([`SPIN`]) before it sleeps; one that
//! still finds it taken then sleeps on a futex, as the OS's lock would.
//!
//! At 8 ECDSA clients on two vCPUs the agent served 1.08–1.14 × the signatures, at 8
//! RSA clients 1.02–1.03 × (BENCHMARKS.md, round 10).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// How long a waiter looks for the lock before it sleeps: longer than the module's
/// critical sections (a few microseconds; SoftHSM's longest re-reads an object file),
/// shorter than what a sleep and a wake-up cost on a VM.
pub(crate) const SPIN: Duration = Duration::from_micros(30);

const FREE: u32 = 0;
const HELD: u32 = 1;
/// Held, and a waiter may be asleep on it: the unlock must wake one.
const CONTENDED: u32 = 2;

/// A mutex without a guard: the module locks and unlocks it in separate calls. Not
/// reentrant (nor are the OS locks modules get from `CKF_OS_LOCKING_OK`).
#[derive(Debug, Default)]
pub(crate) struct ModLock(AtomicU32);

impl ModLock {
    /// Takes the lock: at once when it is free, else after looking for it for up to
    /// [`SPIN`], else after sleeping until an unlock wakes this thread.
    pub(crate) fn lock(&self) {
        if self.try_take() {
            return;
        }
        let start = Instant::now();
        let mut looks = 0u32;
        loop {
            std::hint::spin_loop();
            if self.0.load(Ordering::Relaxed) == FREE && self.try_take() {
                return;
            }
            looks = looks.wrapping_add(1);
            if looks.is_multiple_of(64) && start.elapsed() >= SPIN {
                break;
            }
        }
        // Drepper's "Futexes are tricky", mutex 3: mark it contended, sleep while held.
        while self.0.swap(CONTENDED, Ordering::Acquire) != FREE {
            // EAGAIN (it changed meanwhile) and EINTR both mean: look again.
            let _ = futex::wait(&self.0, futex::Flags::PRIVATE, CONTENDED, None);
        }
    }

    fn try_take(&self) -> bool {
        self.0
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock, waking one sleeper if there may be one; `false` when it was not
    /// held (`CKR_MUTEX_NOT_LOCKED`).
    pub(crate) fn unlock(&self) -> bool {
        match self.0.swap(FREE, Ordering::Release) {
            FREE => false,
            HELD => true,
            _ => {
                let _ = futex::wake(&self.0, futex::Flags::PRIVATE, 1);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn unlocking_a_free_lock_says_so() {
        let l = ModLock::default();
        assert!(!l.unlock());
        l.lock();
        assert!(l.unlock());
        assert!(!l.unlock());
    }

    /// Threads that increment a plain (non-atomic read-modify-write) counter under the
    /// lock lose no increment; some of them hold it past SPIN, so waiters also sleep.
    #[test]
    fn it_excludes_and_wakes_sleepers() {
        let lock = Arc::new(ModLock::default());
        let count = Arc::new(AtomicU64::new(0));
        let threads = 4;
        let per = 2_000u64;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (lock, count) = (lock.clone(), count.clone());
                std::thread::spawn(move || {
                    for i in 0..per {
                        lock.lock();
                        // A read and a write apart: an overlap would lose an increment.
                        let v = count.load(Ordering::Relaxed);
                        if (i + t) % 500 == 0 {
                            std::thread::sleep(SPIN * 3); // waiters give up looking
                        } else {
                            std::hint::spin_loop();
                        }
                        count.store(v + 1, Ordering::Relaxed);
                        assert!(lock.unlock());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a locking thread panicked");
        }
        assert_eq!(count.load(Ordering::Relaxed), threads * per);
        assert!(!lock.unlock(), "left locked");
    }

    #[test]
    fn a_waiter_that_slept_is_woken_by_the_unlock() {
        let lock = Arc::new(ModLock::default());
        lock.lock();
        let l2 = lock.clone();
        let waiter = std::thread::spawn(move || {
            l2.lock();
            assert!(l2.unlock());
        });
        // Long enough for the waiter to stop looking and sleep on the futex.
        std::thread::sleep(SPIN * 20);
        assert_eq!(
            lock.0.load(Ordering::Relaxed),
            CONTENDED,
            "the waiter did not sleep"
        );
        assert!(lock.unlock());
        waiter.join().expect("the waiter panicked");
    }
}
