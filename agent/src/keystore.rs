//! The registry of loaded modules and their tokens, and key selection by [`KeyId`].

use std::sync::{Arc, Mutex, RwLock};

use smime_proto::{KeyId, KeyInfo, ModuleStatus, Pin};

use crate::backend::pkcs11::{KeyEntry, Module, PinSource, Token};
use crate::config::Config;
use crate::error::AgentError;

/// All tokens the agent serves.
#[derive(Debug)]
pub struct Keystore {
    /// The loaded modules (changed by a reload).
    modules: Mutex<Vec<Module>>,
    /// Every configured module with its load outcome, for `Status`.
    module_status: RwLock<Vec<ModuleStatus>>,
    started: std::time::Instant,
    /// Replaced as a whole on rescans (token inserted or gone).
    tokens: RwLock<Vec<Arc<Token>>>,
    pin: Option<(Arc<Pin>, Option<String>)>,
    /// The configuration tokens are opened with (replaced on SIGHUP).
    config: RwLock<Config>,
    /// The PC/SC card monitor, when card events are on.
    cards: RwLock<Option<crate::cards::CardMonitor>>,
}

impl Keystore {
    /// Loads every configured module and opens its tokens. A module that fails to load is
    /// reported and skipped: the others still serve. Blocking.
    pub fn open(config: &Config) -> Self {
        let mut modules = Vec::new();
        let mut module_status = Vec::new();
        // Native PIV cards first: PKCS#11 modules then leave their readers alone.
        let mut tokens = open_native(config, &[]);
        let native = native_readers(config, &tokens);
        for path in &config.modules {
            match Module::load(path) {
                Ok(m) => {
                    tokens.extend(
                        m.token_slots()
                            .into_iter()
                            .filter_map(|slot| m.open_token(slot, config, &native)),
                    );
                    modules.push(m);
                    module_status.push(ModuleStatus {
                        path: path.display().to_string(),
                        loaded: true,
                        error: None,
                    });
                }
                Err(e) => {
                    tracing::error!(module = %path.display(), error = %e, "cannot load PKCS#11 module");
                    module_status.push(ModuleStatus {
                        path: path.display().to_string(),
                        loaded: false,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        Self {
            modules: Mutex::new(modules),
            module_status: RwLock::new(module_status),
            tokens: RwLock::new(tokens),
            started: std::time::Instant::now(),
            pin: config.pin.clone(),
            config: RwLock::new(config.clone()),
            cards: RwLock::new(None),
        }
    }

    /// A snapshot of the tokens.
    pub fn tokens(&self) -> Vec<Arc<Token>> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Looks at every module's slots again: opens tokens that appeared, and stops tokens
    /// that are gone. Returns the new tokens (not yet enumerated). Blocking.
    pub fn rescan(&self) -> Vec<Arc<Token>> {
        let current = self.tokens();
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Native PIV cards: the known ones stay (a removed card's keys stay listed and
        // its requests say "card removed"); cards in other readers are opened.
        // A card a reloaded configuration gives back to PKCS#11 is closed.
        let mut keep: Vec<Arc<Token>> = current
            .iter()
            .filter(|t| t.is_native_piv() && config.native_card(t.reader(), t.serial.parse().ok()))
            .cloned()
            .collect();
        let mut added = open_native(&config, &keep);
        let all_native: Vec<Arc<Token>> = keep.iter().chain(&added).cloned().collect();
        let native = native_readers(&config, &all_native);
        for m in self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let module = m.path().display().to_string();
            let Some(_alone) = m.exclusive() else {
                // Busy: keep this module's tokens as they are.
                keep.extend(current.iter().filter(|t| t.module() == module).cloned());
                continue;
            };
            // Known tokens are matched by slot, with no call to the card: OpenSC 0.23
            // deadlocks in C_GetTokenInfo on a card that has just come back. (A different
            // card in the same reader keeps the token's label and serial until SIGHUP; its
            // keys are read anew.)
            let present = m.token_slots();
            for slot in &present {
                match current
                    .iter()
                    .find(|t| t.module() == module && t.slot() == Some(*slot))
                {
                    // A token the native backend now serves is dropped (below).
                    Some(t) if !native(t.reader()) => {
                        t.card_seen();
                        keep.push(t.clone());
                    }
                    Some(_) => {}
                    None => added.extend(m.open_token(*slot, &config, &native)),
                }
            }
            // A card pulled out of a reader that is still there: keep the token (its keys
            // stay listed, requests say "insert the card"), without sessions or login; it
            // works again when the card is back. Tokens whose slot went away are gone.
            let slots = m.slots();
            for t in current.iter().filter(|t| {
                t.module() == module
                    && t.slot()
                        .is_some_and(|s| !present.contains(&s) && slots.contains(&s))
            }) {
                tracing::info!(token = %t.label, serial = %t.serial, "card removed: sessions and login dropped");
                t.card_removed();
                keep.push(t.clone());
            }
        }
        for gone in current
            .iter()
            .filter(|t| !keep.iter().any(|k| Arc::ptr_eq(k, t)))
        {
            tracing::info!(token = %gone.label, serial = %gone.serial, "token gone");
            gone.shutdown();
        }
        keep.extend(added.iter().cloned());
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = keep;
        added
    }

    /// Enumerates keys and, where a PIN is configured, logs in once.
    ///
    /// A configured PIN goes only to the token it names, or to the single token that
    /// needs a login: sending one card's PIN to another card burns a try there.
    pub async fn start(&self) {
        self.start_tokens(&self.tokens()).await;
    }

    /// [`Keystore::start`] for some tokens (those a rescan found). The token a
    /// configured PIN goes to logs in before its keys are listed, so a client that sees
    /// the keys of a card inserted after the start finds it logged in.
    pub async fn start_tokens(&self, tokens: &[Arc<Token>]) {
        let mut started: Option<&Arc<Token>> = None;
        if let Some((pin, target)) = self.pin.clone() {
            let candidates: Vec<&Arc<Token>> = match &target {
                Some(sel) => tokens.iter().filter(|t| t.matches(sel)).collect(),
                None => tokens.iter().filter(|t| t.needs_login()).collect(),
            };
            match candidates.as_slice() {
                [t] => {
                    // The outcome is logged by login() and reported to clients later;
                    // a login that worked has read the keys.
                    if t.login(pin, PinSource::Configured).await.is_ok() {
                        started = Some(t);
                    }
                }
                [] => {
                    tracing::warn!(target = ?target, "a PIN is configured but no token to use it on")
                }
                many => tracing::warn!(
                    tokens = ?many.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
                    "a PIN is configured but several tokens need one; name the token with --pin-token"
                ),
            }
        }
        for t in tokens
            .iter()
            .filter(|t| !started.is_some_and(|s| Arc::ptr_eq(s, t)))
        {
            if let Err(e) = t.refresh_keys().await {
                tracing::warn!(token = %t.label, error = %e, "cannot enumerate keys");
            }
        }
    }

    /// Every key of every token.
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        self.tokens()
            .iter()
            .flat_map(|t| t.keys())
            .map(|k| k.info.clone())
            .collect()
    }

    /// The token and key for an id.
    ///
    /// # Errors
    /// [`AgentError::KeyNotFound`] for an unknown id.
    pub fn key(&self, id: &KeyId) -> Result<(Arc<Token>, Arc<KeyEntry>), AgentError> {
        let (serial, _) = id
            .parts()
            .ok_or_else(|| AgentError::KeyNotFound(id.clone()))?;
        // Looked up under the lock: every request asks, and a copy of the list costs an
        // allocation and a reference count per token.
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| t.serial == serial)
            .find_map(|t| t.key(id).map(|k| (t.clone(), k)))
            .ok_or_else(|| AgentError::KeyNotFound(id.clone()))
    }

    /// The token named by label or serial.
    ///
    /// # Errors
    /// [`AgentError::TokenNotFound`] when none or more than one token match.
    pub fn token(&self, sel: &str) -> Result<Arc<Token>, AgentError> {
        let tokens = self.tokens();
        let mut it = tokens.iter().filter(|t| t.matches(sel));
        match (it.next(), it.next()) {
            (Some(t), None) => Ok(t.clone()),
            (Some(_), Some(_)) => Err(AgentError::TokenNotFound(format!(
                "{sel} (ambiguous: use the serial)"
            ))),
            _ => Err(AgentError::TokenNotFound(sel.to_owned())),
        }
    }

    /// When the agent loaded its modules.
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// Hands the keystore the card monitor, for `Status` (and to stop it on shutdown).
    pub fn set_card_monitor(&self, monitor: crate::cards::CardMonitor) {
        *self.cards.write().unwrap_or_else(|e| e.into_inner()) = Some(monitor);
    }

    /// Readers and cards, when card events are on.
    pub fn pcsc(&self) -> Option<smime_proto::PcscStatus> {
        let cards = self.cards.read().unwrap_or_else(|e| e.into_inner());
        let snap = cards.as_ref()?.snapshot();
        Some(smime_proto::PcscStatus {
            error: snap.service_error,
            readers: snap
                .readers
                .into_iter()
                .map(|r| smime_proto::ReaderStatus {
                    name: r.name,
                    card: r.card,
                    atr: r.atr,
                })
                .collect(),
        })
    }

    /// Every configured module and whether it loaded.
    pub fn modules(&self) -> Vec<ModuleStatus> {
        self.module_status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies a re-read configuration (SIGHUP): stops the tokens of modules no longer
    /// listed and finalizes those modules, loads the newly listed ones, gives every token
    /// its new `[[token]]` settings, then rescans the slots. Tokens still open keep their
    /// sessions and logins. Returns the new tokens. Blocking.
    pub fn reload(&self, config: Config) -> Vec<Arc<Token>> {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config.clone();
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let (keep, gone): (Vec<Module>, Vec<Module>) = std::mem::take(&mut *modules)
            .into_iter()
            .partition(|m| config.modules.iter().any(|p| p == m.path()));
        for m in gone {
            let path = m.path().display().to_string();
            // Out of the list first, stopped after: a worker that is serving a request
            // looks its key up in the list, and `shutdown` waits for the workers.
            let mine: Vec<Arc<Token>> = {
                let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
                let (mine, rest) = std::mem::take(&mut *tokens)
                    .into_iter()
                    .partition(|t| t.module() == path);
                *tokens = rest;
                mine
            };
            for t in mine {
                t.shutdown();
            }
            tracing::info!(module = %path, "module no longer configured; finalizing");
            m.finalize();
        }
        *modules = keep;
        let mut status = Vec::new();
        for path in &config.modules {
            if modules.iter().any(|m| m.path() == path) {
                status.push(loaded(path));
                continue;
            }
            match Module::load(path) {
                Ok(m) => {
                    tracing::info!(module = %path.display(), "module loaded");
                    modules.push(m);
                    status.push(loaded(path));
                }
                Err(e) => {
                    tracing::error!(module = %path.display(), error = %e, "cannot load PKCS#11 module");
                    status.push(ModuleStatus {
                        path: path.display().to_string(),
                        loaded: false,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        drop(modules);
        *self
            .module_status
            .write()
            .unwrap_or_else(|e| e.into_inner()) = status;
        for t in self.tokens() {
            t.set_policy(config.policy_for(&t.label, &t.serial));
        }
        self.rescan()
    }

    /// Stops the workers, closes sessions and finalizes the modules. Blocking.
    pub fn shutdown(self) {
        for t in self.tokens() {
            t.shutdown();
        }
        drop(self.tokens);
        for m in self.modules.into_inner().unwrap_or_else(|e| e.into_inner()) {
            tracing::debug!(module = %m.path().display(), "finalizing");
            m.finalize();
        }
    }
}

fn loaded(path: &std::path::Path) -> ModuleStatus {
    ModuleStatus {
        path: path.display().to_string(),
        loaded: true,
        error: None,
    }
}

/// Opens the native PIV cards the `[[card]]` tables ask for, except in readers a `known`
/// token already serves. Blocking.
fn open_native(config: &Config, known: &[Arc<Token>]) -> Vec<Arc<Token>> {
    if !config.any_native() {
        return vec![];
    }
    crate::backend::piv::discover(|reader, serial| {
        !known.iter().any(|t| t.reader() == reader) && config.native_card(reader, serial)
    })
    .into_iter()
    .filter_map(|card| match Token::open_piv(card, config) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a PIV card's thread");
            None
        }
    })
    .collect()
}

/// The readers PKCS#11 tokens must leave alone: those of native PIV tokens, and those a
/// `[[card]]` table gives to the native backend.
fn native_readers(config: &Config, native: &[Arc<Token>]) -> impl Fn(&str) -> bool + use<> {
    let config = config.clone();
    let readers: Vec<String> = native.iter().map(|t| t.reader().to_owned()).collect();
    move |desc: &str| {
        config.native_reader(desc)
            || readers
                .iter()
                .any(|r| !r.is_empty() && (desc == r || desc.starts_with(r.as_str())))
    }
}
