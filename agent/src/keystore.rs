//! The registry of loaded modules and their tokens, and key selection by [`KeyId`].

use std::sync::{Arc, RwLock};

use smime_proto::{KeyId, KeyInfo, ModuleStatus, Pin};

use crate::backend::pkcs11::{KeyEntry, Module, PinSource, Token};
use crate::config::Config;
use crate::error::AgentError;

/// All tokens the agent serves.
#[derive(Debug)]
pub struct Keystore {
    modules: Vec<Module>,
    /// Every configured module with its load outcome, for `Status`.
    module_status: Vec<ModuleStatus>,
    started: std::time::Instant,
    /// Replaced as a whole on rescans (token inserted or gone).
    tokens: RwLock<Vec<Arc<Token>>>,
    sessions: usize,
    pin: Option<(Arc<Pin>, Option<String>)>,
    policy: Arc<crate::config::PinPolicy>,
}

impl Keystore {
    /// Loads every configured module and opens its tokens. A module that fails to load is
    /// reported and skipped: the others still serve. Blocking.
    pub fn open(config: &Config) -> Self {
        let mut modules = Vec::new();
        let mut module_status = Vec::new();
        let mut tokens = Vec::new();
        for path in &config.modules {
            match Module::load(path) {
                Ok(m) => {
                    let present = m.present_tokens();
                    tokens.extend(present.into_iter().filter_map(|(slot, _)| {
                        m.open_token(slot, config.sessions, &config.policy)
                    }));
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
            modules,
            module_status,
            tokens: RwLock::new(tokens),
            started: std::time::Instant::now(),
            sessions: config.sessions,
            pin: config.pin.clone(),
            policy: config.policy.clone(),
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
        let mut keep = Vec::new();
        let mut added = Vec::new();
        for m in &self.modules {
            let module = m.path().display().to_string();
            for (slot, serial) in m.present_tokens() {
                match current
                    .iter()
                    .find(|t| t.module() == module && t.serial == serial)
                {
                    Some(t) => keep.push(t.clone()),
                    None => added.extend(m.open_token(slot, self.sessions, &self.policy)),
                }
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

    /// [`Keystore::start`] for some tokens (those a rescan found).
    pub async fn start_tokens(&self, tokens: &[Arc<Token>]) {
        for t in tokens {
            if let Err(e) = t.refresh_keys().await {
                tracing::warn!(token = %t.label, error = %e, "cannot enumerate keys");
            }
        }
        let Some((pin, target)) = self.pin.clone() else {
            return;
        };
        let candidates: Vec<&Arc<Token>> = match &target {
            Some(sel) => tokens.iter().filter(|t| t.matches(sel)).collect(),
            None => tokens.iter().filter(|t| t.needs_login()).collect(),
        };
        match candidates.as_slice() {
            [t] => {
                // The outcome is logged by login() and reported to clients later.
                let _ = t.login(pin, PinSource::Configured).await;
            }
            [] => tracing::warn!(target = ?target, "a PIN is configured but no token to use it on"),
            many => tracing::warn!(
                tokens = ?many.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
                "a PIN is configured but several tokens need one; name the token with --pin-token"
            ),
        }
    }

    /// Every key of every token.
    pub fn list_keys(&self) -> Vec<KeyInfo> {
        self.tokens()
            .iter()
            .flat_map(|t| t.keys())
            .map(|k| k.info)
            .collect()
    }

    /// The token and key for an id.
    ///
    /// # Errors
    /// [`AgentError::KeyNotFound`] for an unknown id.
    pub fn key(&self, id: &KeyId) -> Result<(Arc<Token>, KeyEntry), AgentError> {
        let (serial, _) = id
            .parts()
            .ok_or_else(|| AgentError::KeyNotFound(id.clone()))?;
        self.tokens()
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

    /// Every configured module and whether it loaded.
    pub fn modules(&self) -> &[ModuleStatus] {
        &self.module_status
    }

    /// Stops the workers, closes sessions and finalizes the modules. Blocking.
    pub fn shutdown(self) {
        for t in self.tokens() {
            t.shutdown();
        }
        drop(self.tokens);
        for m in self.modules {
            tracing::debug!(module = %m.path().display(), "finalizing");
            m.finalize();
        }
    }
}
