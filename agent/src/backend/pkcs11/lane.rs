//! A token's lane: connections whose next request the token's worker threads read
//! themselves, without the tokio thread in between.
//!
//! After a private-key operation on a token, the server parks the connection on that
//! token's lane ([`Lane::park`]): its socket joins the lane's epoll set, armed for one
//! event at a time, and leaves tokio's. A worker that looks for work polls the lane
//! beside its job queue, and sleeps in the lane's `epoll_wait` (a queued job rings the
//! lane's bell, an eventfd). When a parked client sends its next request, a worker takes
//! the connection ([`Guest::serve`]), reads the request, and when it is a key operation
//! on this token that needs nothing but the token (no login, no dialog), answers it and
//! parks the connection again. Anything else goes back to the connection's tokio task.
//!
//! A request then costs the agent one thread's wake-up or none (a worker that is still
//! busy or looking finds it), where the way through tokio costs the tokio thread's
//! wake-up, its read, and a hand-off to a worker (BENCHMARKS.md, round 7).

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use rustix::event::{EventfdFlags, Timespec, epoll, eventfd};

use super::Device;

/// A connection parked on a lane.
pub trait Guest: Send {
    /// The connection's socket.
    fn fd(&self) -> BorrowedFd<'_>;
    /// On a worker thread, when the socket has become readable: serve what came.
    fn serve(self: Box<Self>, here: &mut OnWorker<'_>) -> Served;
    /// Whether its tokio task wants it back.
    fn wanted(&self) -> bool;
    /// Hands the connection back to its tokio task (it has left the lane).
    fn go_back(self: Box<Self>);
}

/// What became of a guest a worker served.
#[allow(missing_debug_implementations)] // it holds a `dyn Guest`
pub enum Served {
    /// Park it again for its next request.
    Stay(Box<dyn Guest>),
    /// It goes back to its tokio task.
    Back(Box<dyn Guest>),
}

/// A worker thread serving a guest of its token's lane: what the token needs to run a
/// key operation right there (see `Token::sign_now`).
pub struct OnWorker<'a> {
    pub(super) dev: &'a mut Device,
    pub(super) lane: &'a Lane,
}

impl std::fmt::Debug for OnWorker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnWorker")
    }
}

/// The event data of the bell; guests get ids counted from 0.
const BELL: u64 = u64::MAX;

/// A token's lane (see the module's documentation).
pub(super) struct Lane {
    ep: OwnedFd,
    bell: OwnedFd,
    guests: Mutex<Guests>,
}

struct Guests {
    parked: HashMap<u64, Box<dyn Guest>>,
    next: u64,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("parked", &self.lock().parked.len())
            .finish()
    }
}

/// What a look at the lane found.
pub(super) enum Found {
    /// Nothing (or the bell: look at the job queue).
    Nothing,
    /// A guest that has something to read, taken off the lane.
    Guest(u64, Box<dyn Guest>),
}

impl Lane {
    /// A lane with nobody parked.
    ///
    /// # Errors
    /// When the epoll instance or the eventfd cannot be made.
    pub(super) fn new() -> io::Result<Self> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let bell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &ep,
            &bell,
            epoll::EventData::new_u64(BELL),
            epoll::EventFlags::IN,
        )?;
        Ok(Self {
            ep,
            bell,
            guests: Mutex::new(Guests {
                parked: HashMap::new(),
                next: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Guests> {
        // Nothing panics while holding it; the map is consistent.
        self.guests.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn armed() -> epoll::EventFlags {
        epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT
    }

    /// Parks `guest` until its socket is readable; returns its id for [`Lane::reclaim`].
    ///
    /// # Errors
    /// When its socket cannot join the epoll set: the guest comes back with the error.
    pub(super) fn park(&self, guest: Box<dyn Guest>) -> Result<u64, (io::Error, Box<dyn Guest>)> {
        let mut g = self.lock();
        let id = g.next;
        if let Err(e) = epoll::add(
            &self.ep,
            guest.fd(),
            epoll::EventData::new_u64(id),
            Self::armed(),
        ) {
            return Err((e.into(), guest));
        }
        g.next += 1;
        g.parked.insert(id, guest);
        Ok(id)
    }

    /// Sends the guest `id` back to its task now, unless a worker is serving it (that
    /// worker sends it back when done, if [`Guest::wanted`] says so).
    pub(super) fn reclaim(&self, id: u64) {
        let guest = self.lock().parked.remove(&id);
        if let Some(guest) = guest {
            self.leave(guest);
        }
    }

    /// Takes `guest` out of the epoll set and sends it back.
    fn leave(&self, guest: Box<dyn Guest>) {
        // It can fail only if the socket is already closed; it is going back either way.
        let _ = epoll::delete(&self.ep, guest.fd());
        guest.go_back();
    }

    /// After a worker served guest `id`.
    pub(super) fn served(&self, id: u64, served: Served) {
        match served {
            Served::Back(guest) => self.leave(guest),
            Served::Stay(guest) => {
                let mut g = self.lock();
                // Under the lock: a task that wants it back either finds it parked or
                // has said so before this check.
                if guest.wanted() {
                    drop(g);
                    self.leave(guest);
                    return;
                }
                // Parked before it is armed: a worker that gets its event finds it.
                match epoll::modify(
                    &self.ep,
                    guest.fd(),
                    epoll::EventData::new_u64(id),
                    Self::armed(),
                ) {
                    Ok(()) => {
                        g.parked.insert(id, guest);
                    }
                    Err(_) => {
                        drop(g);
                        self.leave(guest);
                    }
                }
            }
        }
    }

    /// Looks for a guest with something to read; with `sleep`, waits until there is one
    /// or the bell rings.
    pub(super) fn look(&self, sleep: bool) -> Found {
        const NOW: Timespec = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut events = Vec::with_capacity(1);
        loop {
            events.clear();
            match epoll::wait(
                &self.ep,
                rustix::buffer::spare_capacity(&mut events),
                (!sleep).then_some(&NOW),
            ) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) if sleep => {}
                Err(_) => return Found::Nothing,
            }
        }
        let Some(ev) = events.first() else {
            return Found::Nothing;
        };
        let id = ev.data.u64();
        if id == BELL {
            let mut n = [0u8; 8];
            let _ = rustix::io::read(&self.bell, &mut n);
            return Found::Nothing;
        }
        // Gone when its task reclaimed it meanwhile.
        match self.lock().parked.remove(&id) {
            Some(guest) => Found::Guest(id, guest),
            None => Found::Nothing,
        }
    }

    /// Whether any guest is parked (not counting those a worker serves).
    pub(super) fn has_parked(&self) -> bool {
        !self.lock().parked.is_empty()
    }

    /// Wakes a worker sleeping in [`Lane::look`].
    pub(super) fn ring(&self) {
        let _ = rustix::io::write(&self.bell, &1u64.to_ne_bytes());
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let parked: Vec<_> = self.lock().parked.drain().map(|(_, g)| g).collect();
        for guest in parked {
            self.leave(guest);
        }
    }
}
