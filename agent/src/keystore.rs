//! The registry of loaded modules and their tokens, and key selection by [`KeyId`].

use std::sync::Arc;

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
    tokens: Vec<Arc<Token>>,
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
                    tokens.extend(m.open_tokens(config.sessions));
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
            tokens,
            started: std::time::Instant::now(),
        }
    }

    /// Enumerates keys and, where a PIN is configured, logs in once.
    ///
    /// A configured PIN goes only to the token it names, or to the single token that
    /// needs a login: sending one card's PIN to another card burns a try there.
    pub async fn start(&self, pin: Option<(Arc<Pin>, Option<String>)>) {
        for t in &self.tokens {
            if let Err(e) = t.refresh_keys().await {
                tracing::warn!(token = %t.label, error = %e, "cannot enumerate keys");
            }
        }
        let Some((pin, target)) = pin else { return };
        let candidates: Vec<&Arc<Token>> = match &target {
            Some(sel) => self.tokens.iter().filter(|t| t.matches(sel)).collect(),
            None => self.tokens.iter().filter(|t| t.needs_login()).collect(),
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
        self.tokens
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
        self.tokens
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
        let mut it = self.tokens.iter().filter(|t| t.matches(sel));
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

    /// All tokens.
    pub fn tokens(&self) -> &[Arc<Token>] {
        &self.tokens
    }

    /// Stops the workers, closes sessions and finalizes the modules. Blocking.
    pub fn shutdown(self) {
        for t in &self.tokens {
            t.shutdown();
        }
        drop(self.tokens);
        for m in self.modules {
            tracing::debug!(module = %m.path().display(), "finalizing");
            m.finalize();
        }
    }
}
