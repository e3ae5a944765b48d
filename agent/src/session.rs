//! Request → Response for one connection, bound to the peer that opened it.

use std::sync::Arc;

use smime_proto::{AgentStatus, ErrorCode, ErrorResponse, PROTOCOL_VERSION, Request, Response};

use crate::backend::pkcs11::PinSource;
use crate::error::AgentError;
use crate::keystore::Keystore;

/// The process at the other end of a connection (from SO_PEERCRED).
#[derive(Debug, Clone)]
pub struct Peer {
    /// Process id.
    pub pid: Option<u32>,
    /// Effective uid.
    pub uid: Option<u32>,
    /// Executable, from /proc (best effort).
    pub exe: Option<String>,
}

impl Peer {
    /// Builds a peer from its credentials.
    pub fn new(pid: Option<impl TryInto<u32>>, uid: Option<u32>) -> Self {
        let pid = pid.and_then(|p| p.try_into().ok());
        let exe = pid
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
            .map(|p| p.display().to_string());
        Self { pid, uid, exe }
    }
}

/// Per-connection protocol state.
#[derive(Debug)]
pub struct Session {
    peer: Peer,
    keystore: Arc<Keystore>,
    version: Option<u32>,
    client: String,
}

impl Session {
    /// A session for `peer`, before `Hello`.
    pub fn new(peer: Peer, keystore: Arc<Keystore>) -> Self {
        Self {
            peer,
            keystore,
            version: None,
            client: String::new(),
        }
    }

    /// Whether the client has completed `Hello`.
    pub fn greeted(&self) -> bool {
        self.version.is_some()
    }

    /// The peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Answers one request. Operation failures become `Response::Error`.
    pub async fn handle(&mut self, req: Request) -> Response {
        match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => Response::Error(ErrorResponse::from(&e)),
        }
    }

    async fn dispatch(&mut self, req: Request) -> Result<Response, AgentError> {
        if let Request::Hello { versions, client } = &req {
            if !versions.contains(&PROTOCOL_VERSION) {
                return Ok(Response::Error(ErrorResponse::new(
                    ErrorCode::UNSUPPORTED_VERSION,
                    format!(
                        "this agent speaks protocol version {PROTOCOL_VERSION}; the client offered {versions:?}"
                    ),
                )));
            }
            self.version = Some(PROTOCOL_VERSION);
            self.client = client.clone();
            tracing::debug!(peer = ?self.peer, client = %client, "hello");
            return Ok(Response::Hello {
                version: PROTOCOL_VERSION,
                agent: format!("smime-agent {}", env!("CARGO_PKG_VERSION")),
                capabilities: Request::OPERATIONS[1..]
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect(),
            });
        }
        if self.version.is_none() {
            return Ok(Response::Error(ErrorResponse::new(
                ErrorCode::HELLO_REQUIRED,
                "send hello first",
            )));
        }
        let ks = &self.keystore;
        match req {
            Request::ListKeys => Ok(Response::Keys {
                keys: ks.list_keys(),
            }),
            Request::Sign {
                key,
                algorithm,
                digest,
            } => {
                let (token, entry) = ks.key(&key)?;
                let r = token
                    .sign(&entry, algorithm, digest.into_vec(), &self.who())
                    .await;
                self.audit("sign", &key, &r);
                Ok(Response::Signature {
                    signature: serde_bytes::ByteBuf::from(r?),
                })
            }
            Request::Decrypt {
                key,
                algorithm,
                ciphertext,
            } => {
                let (token, entry) = ks.key(&key)?;
                let r = token
                    .decrypt(&entry, algorithm, ciphertext.into_vec(), &self.who())
                    .await;
                self.audit("decrypt", &key, &r);
                Ok(Response::Secret { secret: r? })
            }
            Request::Ecdh { key, peer_point } => {
                let (token, entry) = ks.key(&key)?;
                let r = token.ecdh(&entry, peer_point.into_vec(), &self.who()).await;
                self.audit("ecdh", &key, &r);
                Ok(Response::Secret { secret: r? })
            }
            Request::Unlock {
                token,
                pin,
                confirm_final_try,
            } => {
                let t = ks.token(&token)?;
                tracing::info!(token = %t.label, pid = ?self.peer.pid, exe = ?self.peer.exe, "unlock requested");
                let source = if confirm_final_try {
                    PinSource::UserConfirmedFinalTry
                } else {
                    PinSource::User
                };
                t.login(Arc::new(pin), source).await?;
                Ok(Response::Ok)
            }
            Request::Lock { token } => {
                let tokens = match token {
                    Some(sel) => vec![ks.token(&sel)?],
                    None => ks.tokens().to_vec(),
                };
                // Every token is logged out even if one fails (a pulled card, say).
                let mut first_error = None;
                for t in tokens {
                    if let Err(e) = t.logout().await {
                        tracing::warn!(token = %t.label, error = %e, "logout failed");
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(Response::Ok), Err)
            }
            Request::Status => {
                let mut tokens = Vec::new();
                for t in ks.tokens() {
                    tokens.push(t.status().await);
                }
                Ok(Response::Status {
                    tokens,
                    agent: Some(AgentStatus {
                        version: format!("smime-agent {}", env!("CARGO_PKG_VERSION")),
                        uptime_secs: ks.started().elapsed().as_secs(),
                        modules: ks.modules(),
                        pcsc: ks.pcsc(),
                    }),
                })
            }
            Request::Hello { .. } => Err(AgentError::Internal("hello handled above".into())),
            _ => Err(AgentError::BadRequest("operation not supported".into())),
        }
    }

    /// The requesting program, for PIN dialogs.
    fn who(&self) -> String {
        let exe = self.peer.exe.as_deref().unwrap_or("an unknown program");
        match self.peer.pid {
            Some(pid) => format!("{exe} (pid {pid})"),
            None => exe.to_owned(),
        }
    }

    /// One audit line per private-key operation: who, which key, what, outcome.
    fn audit<T>(&self, op: &str, key: &smime_proto::KeyId, r: &Result<T, AgentError>) {
        let outcome = match r {
            Ok(_) => "ok".to_owned(),
            Err(e) => ErrorResponse::from(e).code.to_string(),
        };
        tracing::info!(target: "smime_agent::audit", pid = ?self.peer.pid, uid = ?self.peer.uid,
            exe = ?self.peer.exe, client = %self.client, key = %key, op, outcome = %outcome);
    }
}
