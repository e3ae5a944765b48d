//! PC/SC card events (the `pcsc` crate): a monitor thread with its own PC/SC context
//! watches the readers and their cards and tells the agent when a card comes or goes.
//!
//! ```text
//!  pcscd ──SCardGetStatusChange──► monitor thread ──CardEvent──► agent (lib.rs):
//!                                       │                 removed: drop login + PIN of the
//!                                       │                          tokens in that reader
//!                                       │                 inserted: new sessions on the next
//!                                       │                          request; unknown reader:
//!                                       │                          rescan the slots
//!                                       └──► Snapshot (readers, cards) ──► `smime status`
//! ```
//!
//! The monitor never connects to a card: it only reads reader states, so it cannot reset a
//! card or disturb another application's session or PIN state. When pcscd is not running
//! or restarts, the monitor retries with backoff (1 s doubling to 30 s) and the snapshot
//! says so; the cards it knew count as removed, and when pcscd answers again the agent
//! hears [`CardEvent::ServiceBack`] before the cards come back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pcsc::{Context, PNP_NOTIFICATION, ReaderState, Scope, State};

/// How long one wait for a change lasts before the stop flag is looked at again.
const POLL: Duration = Duration::from_millis(500);

/// Longest pause between attempts to reach pcscd.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One reader as the monitor last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// The reader name, as PC/SC gives it.
    pub name: String,
    /// Whether a card is in it.
    pub card: bool,
    /// The card's ATR, hex, when there is a card.
    pub atr: Option<String>,
}

/// The state of PC/SC as the monitor sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `None` while pcscd answers; otherwise why it does not (not running, restarted).
    pub service_error: Option<String>,
    /// The readers, in PC/SC's order.
    pub readers: Vec<Reader>,
}

/// A change the agent acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardEvent {
    /// A card went into `reader` (or a reader with a card appeared).
    Inserted { reader: String },
    /// The card left `reader` (or the reader went away with it).
    Removed { reader: String },
    /// pcscd answers again after it was gone (restarted): a card module's own PC/SC
    /// context is dead and must be re-established (OpenSC does it in C_GetSlotList).
    ServiceBack,
}

/// The running monitor; stops its thread when dropped.
#[derive(Debug)]
pub struct CardMonitor {
    snapshot: Arc<Mutex<Snapshot>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CardMonitor {
    /// Starts the monitor thread; `on_event` is called from it for every change.
    pub fn start(on_event: impl Fn(CardEvent) + Send + 'static) -> std::io::Result<Self> {
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("pcsc-monitor".into())
            .spawn({
                let snapshot = snapshot.clone();
                let stop = stop.clone();
                move || monitor(&snapshot, &stop, &on_event)
            })?;
        Ok(Self {
            snapshot,
            stop,
            thread: Some(thread),
        })
    }

    /// What the monitor saw last.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for CardMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `d` in short steps; returns early (true) when asked to stop.
fn sleep_or_stop(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    stop.load(Ordering::SeqCst)
}

fn set(snapshot: &Mutex<Snapshot>, f: impl FnOnce(&mut Snapshot)) {
    f(&mut snapshot.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The errors that mean the PC/SC service went away: establish a new context.
fn service_gone(e: pcsc::Error) -> bool {
    matches!(
        e,
        pcsc::Error::NoService
            | pcsc::Error::ServiceStopped
            | pcsc::Error::InvalidHandle
            | pcsc::Error::CommError
    )
}

fn monitor(snapshot: &Mutex<Snapshot>, stop: &AtomicBool, on_event: &dyn Fn(CardEvent)) {
    let mut backoff = Duration::from_secs(1);
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let ctx = match Context::establish(Scope::User) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("pcscd is not available: {e}");
                if last_error.as_deref() != Some(&msg) {
                    tracing::info!(error = %e, "card events off until pcscd answers");
                    last_error = Some(msg.clone());
                }
                // Cards seen before are gone as far as we can tell.
                let before =
                    std::mem::take(&mut snapshot.lock().unwrap_or_else(|e| e.into_inner()).readers);
                set(snapshot, |s| s.service_error = Some(msg));
                report(&before, &[], on_event);
                if sleep_or_stop(backoff, stop) {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if last_error.take().is_some() {
            tracing::info!("pcscd answers: card events on");
            on_event(CardEvent::ServiceBack);
        }
        backoff = Duration::from_secs(1);
        set(snapshot, |s| s.service_error = None);
        watch(&ctx, snapshot, stop, on_event);
    }
}

/// Watches readers and cards until the service goes away or the monitor stops.
fn watch(
    ctx: &Context,
    snapshot: &Mutex<Snapshot>,
    stop: &AtomicBool,
    on_event: &dyn Fn(CardEvent),
) {
    let pnp = PNP_NOTIFICATION();
    let mut states = vec![ReaderState::new(pnp, State::UNAWARE)];
    while !stop.load(Ordering::SeqCst) {
        // Readers that went away, then readers that came.
        states.retain(|r| {
            r.name() == pnp || !r.event_state().intersects(State::UNKNOWN | State::IGNORE)
        });
        match ctx.list_readers_owned() {
            Ok(names) => {
                for n in names {
                    if !states.iter().any(|r| r.name() == n.as_c_str()) {
                        states.push(ReaderState::new(n, State::UNAWARE));
                    }
                }
            }
            Err(pcsc::Error::NoReadersAvailable) => {}
            Err(e) if service_gone(e) => return,
            Err(e) => tracing::debug!(error = %e, "listing readers"),
        }
        for r in &mut states {
            r.sync_current_state();
        }
        match ctx.get_status_change(Some(POLL), &mut states) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => {}
            Err(e) if service_gone(e) => {
                tracing::info!(error = %e, "pcscd went away; reconnecting");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "waiting for card events");
                if sleep_or_stop(POLL, stop) {
                    return;
                }
            }
        }
        let now: Vec<Reader> = states
            .iter()
            .filter(|r| r.name() != pnp)
            .filter(|r| !r.event_state().intersects(State::UNKNOWN | State::IGNORE))
            .map(|r| {
                let card = r.event_state().contains(State::PRESENT);
                Reader {
                    name: r.name().to_string_lossy().into_owned(),
                    card,
                    atr: card.then(|| hex::encode(r.atr())),
                }
            })
            .collect();
        let before = {
            let mut s = snapshot.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut s.readers, now.clone())
        };
        report(&before, &now, on_event);
    }
}

/// Calls `on_event` for every card that came or went between two snapshots.
fn report(before: &[Reader], now: &[Reader], on_event: &dyn Fn(CardEvent)) {
    let has_card = |list: &[Reader], name: &str| list.iter().any(|r| r.name == name && r.card);
    for r in now.iter().filter(|r| r.card) {
        let same_card = before
            .iter()
            .any(|b| b.name == r.name && b.card && b.atr == r.atr);
        if !same_card {
            tracing::info!(reader = %r.name, "card inserted");
            on_event(CardEvent::Inserted {
                reader: r.name.clone(),
            });
        }
    }
    for b in before.iter().filter(|b| b.card) {
        if !has_card(now, &b.name) {
            tracing::info!(reader = %b.name, "card removed");
            on_event(CardEvent::Removed {
                reader: b.name.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(name: &str, card: bool) -> Reader {
        Reader {
            name: name.into(),
            card,
            atr: card.then(|| "3b95".into()),
        }
    }

    #[test]
    fn changes_become_events() {
        let events = Mutex::new(Vec::new());
        let push = |e| events.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        report(&[reader("A", false)], &[reader("A", true)], &push);
        report(&[reader("A", true)], &[reader("A", true)], &push);
        report(
            &[reader("A", true), reader("B", true)],
            &[reader("A", false)],
            &push,
        );
        let got = events.into_inner().unwrap_or_default();
        assert_eq!(
            got,
            vec![
                CardEvent::Inserted { reader: "A".into() },
                CardEvent::Removed { reader: "A".into() },
                CardEvent::Removed { reader: "B".into() },
            ]
        );
    }
}
