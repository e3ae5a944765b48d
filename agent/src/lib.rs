//! # smime-agent
//!
//! A background agent that keeps smart-card and HSM sessions logged in and serves
//! private-key operations (sign a digest, decrypt a wrapped key, ECDH) over a local socket.
//! Messages never reach it: clients hash and build CMS themselves.
//!
//! ```text
//!  client ──frames──► server (bind 0600/0700, peer uid check, limits)
//!                       └─► Handler per connection ─► Session (hello, dispatch, audit)
//!                                                        └─► Keystore ─► backend::pkcs11::Token
//!                                                                         └─► worker threads ─► PKCS#11 module
//!  client ◄──────────── response (written by the worker thread, see session::Sink) ◄──┘
//! ```
//!
//! [`run`] starts everything; tests call it in-process with their own shutdown future.
#![deny(unsafe_code)] // one exception: backend::pkcs11::raw (see there)

pub mod backend;
pub mod cards;
pub mod config;
pub mod error;
pub mod keystore;
pub mod logwriter;
pub mod pinentry;
pub mod server;
pub mod session;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Flags};
pub use error::AgentError;

/// SIGHUP: re-read the configuration (modules added or removed, per-token settings for
/// tokens opened from now on), look at the slots again (tokens inserted or removed) and
/// re-read every token's keys, without dropping a connection.
async fn rescan_on_sighup(keystore: Arc<keystore::Keystore>, cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        tracing::info!("SIGHUP: re-reading the configuration and rescanning tokens");
        rescan(&keystore, true).await;
    }
}

/// Looks at the slots again (tokens inserted or gone; with `reload`, the configuration
/// too), starts new tokens and re-reads every other token's keys.
async fn rescan(keystore: &Arc<keystore::Keystore>, reload: bool) {
    let ks = keystore.clone();
    let Ok(added) = tokio::task::spawn_blocking(move || {
        if !reload {
            return ks.rescan();
        }
        match Config::resolve(&ks.config().flags) {
            Ok(config) => ks.reload(config),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration not reloaded; keeping the old one");
                ks.rescan()
            }
        }
    })
    .await
    else {
        return;
    };
    keystore.start_tokens(&added).await;
    for t in keystore
        .tokens()
        .iter()
        .filter(|t| !added.iter().any(|a| Arc::ptr_eq(a, t)))
    {
        if let Err(e) = t.refresh_keys().await {
            tracing::warn!(token = %t.label, error = %e, "cannot enumerate keys");
        }
    }
    tracing::info!(
        tokens = keystore.tokens().len(),
        added = added.len(),
        "rescan done"
    );
}

/// Card events. A card pulled out drops the login and cached PIN of the tokens in that
/// reader at once (no call to the module: OpenSC 0.23 deadlocks when asked about slots
/// while a card comes and goes; the sessions are reopened by the next request once the
/// card is back). A card in a reader that holds no known token makes the agent look at
/// the slots, so a card inserted after the agent started is found without a restart; a
/// card back in its reader gets new sessions on the next request.
async fn on_card_events(
    keystore: Arc<keystore::Keystore>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<cards::CardEvent>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = events.recv() => match e { Some(e) => e, None => return },
        };
        match event {
            cards::CardEvent::Removed { reader } => {
                for t in keystore.tokens().iter().filter(|t| t.in_reader(&reader)) {
                    tracing::info!(token = %t.label, %reader, "card removed: login and PIN dropped");
                    t.card_removed();
                }
            }
            cards::CardEvent::Inserted { reader } => {
                let tokens = keystore.tokens();
                let known: Vec<_> = tokens.iter().filter(|t| t.in_reader(&reader)).collect();
                for t in &known {
                    t.card_inserted();
                }
                if known.is_empty() {
                    // Let the card settle before the module looks at it.
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    rescan(&keystore, false).await;
                }
            }
            cards::CardEvent::ServiceBack => {
                // pcscd restarted: OpenSC's PC/SC context died with the old one, and OpenSC
                // makes a new one only when the slots are listed (C_GetSlotList). Until
                // then every operation fails with CKR_GENERAL_ERROR, even with the card
                // back. The rescan lists them, alone on the module.
                tracing::info!("pcscd is back: looking at the slots again");
                rescan(&keystore, false).await;
            }
        }
    }
}

/// Logs out of tokens whose login outlived the cache policy (TTL, idle timeout).
async fn expire_logins(keystore: Arc<keystore::Keystore>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for t in keystore.tokens() {
            if t.login_expired()
                && let Err(e) = t.expire().await
            {
                tracing::warn!(token = %t.label, error = %e, "logout failed");
            }
        }
    }
}

/// Runs the agent until `shutdown` completes: loads the modules, logs in with a configured
/// PIN (once), serves the socket, then drains connections and finalizes the modules.
///
/// `ready` is called once the socket accepts connections.
///
/// # Errors
/// When the socket cannot be bound (for instance another agent is running).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    // Under socket activation the service manager owns the socket and its permissions.
    let activated = server::activated_listener()?;
    if activated.is_none() {
        server::check_not_running(&config.socket)?;
    }
    let cfg = config.clone();
    let keystore = tokio::task::spawn_blocking(move || keystore::Keystore::open(&cfg))
        .await
        .context("loading modules")?;
    keystore.start().await;
    let keystore = Arc::new(keystore);
    let (listener, socket) = match activated {
        Some((l, path)) => {
            tracing::info!(socket = ?path, "using the socket passed by the service manager");
            (l, path.unwrap_or_else(|| config.socket.clone()))
        }
        None => (server::bind(&config.socket)?, config.socket.clone()),
    };
    ready();
    let cancel = CancellationToken::new();
    tokio::spawn(rescan_on_sighup(keystore.clone(), cancel.clone()));
    if config.card_events {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        match cards::CardMonitor::start(move |e| {
            let _ = tx.send(e);
        }) {
            Ok(monitor) => {
                keystore.set_card_monitor(monitor);
                tokio::spawn(on_card_events(keystore.clone(), rx, cancel.clone()));
            }
            Err(e) => tracing::warn!(error = %e, "card events off: cannot start the monitor"),
        }
    }
    // Always running: a reload may bring per-token TTLs.
    tokio::spawn(expire_logins(keystore.clone(), cancel.clone()));
    let server = tokio::spawn(server::serve(
        listener,
        socket,
        keystore.clone(),
        server::fit_connection_limit(config.max_connections),
        cancel.clone(),
    ));
    shutdown.await;
    tracing::info!("shutting down");
    cancel.cancel();
    server.await.context("server task")?;
    match Arc::try_unwrap(keystore) {
        Ok(ks) => tokio::task::spawn_blocking(move || ks.shutdown())
            .await
            .context("closing tokens")?,
        Err(_) => tracing::warn!("requests still running; not finalizing the modules"),
    }
    Ok(())
}
