//! Request → Response for one connection, bound to the peer that opened it.
//!
//! Private-key operations are answered by the token's worker thread: it writes a
//! successful response to the client itself ([`Sink`]) and logs the audit line, so a
//! request costs no hop back through tokio. The server waits for that ([`Answer::Later`])
//! only before it reads the next request's answer, by which time it is long done.

use std::future::Future;
use std::os::unix::net::UnixStream;
use std::pin::Pin as StdPin;
use std::sync::{Arc, Weak};

use smime_proto::{
    AgentStatus, ErrorCode, ErrorResponse, KeyId, PROTOCOL_VERSION, Request, Response,
};
use zeroize::Zeroizing;

use crate::backend::pkcs11::{OnWorker, PinSource, Token};
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

/// The connection a worker thread writes a response to.
#[derive(Debug, Clone)]
pub struct Sink(Arc<UnixStream>);

impl Sink {
    /// A sink writing to `stream` (non-blocking; a second descriptor of the connection
    /// the server reads from).
    pub fn new(stream: Arc<UnixStream>) -> Self {
        Self(stream)
    }

    /// The socket it writes to.
    pub fn socket(&self) -> &UnixStream {
        &self.0
    }

    /// Writes as much of `frame` as the socket takes now, without blocking; returns what
    /// is left (empty when all went out), or `None` when the client is gone.
    fn send<'a>(&self, mut frame: &'a [u8]) -> Option<&'a [u8]> {
        use rustix::net::{SendFlags, send};
        while !frame.is_empty() {
            match send(&*self.0, frame, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => frame = &frame[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => return None,
            }
        }
        Some(frame)
    }
}

/// What became of a response.
#[derive(Debug)]
pub enum Done {
    /// The worker wrote all of it.
    Sent,
    /// The server must write this (all or the rest of the frame).
    Write(Zeroizing<Vec<u8>>),
    /// The client went away.
    Gone,
}

/// The answer to one request.
#[derive(Debug)]
pub enum Answer {
    /// Write this frame now.
    Now(Zeroizing<Vec<u8>>),
    /// A worker thread answers.
    Later(Later),
}

/// An answer a worker thread gives. The worker writes a successful response itself and
/// wakes nobody; when the server has something to do (an error to write, the rest of a
/// response the socket did not take, a client gone), the worker notifies
/// [`Later::attention`].
pub struct Later {
    /// Await this before the next answer goes out (and after [`Later::attention`]).
    pub done: StdPin<Box<dyn Future<Output = Done> + Send>>,
    /// Notified when the server must act on `done` without waiting for the next request.
    pub attention: Arc<tokio::sync::Notify>,
    /// The key's token, if the connection can wait on its lane for its next request.
    pub park_on: Option<Arc<Token>>,
}

impl std::fmt::Debug for Later {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Later")
    }
}

/// A response as a frame; one too large for a frame becomes an `INTERNAL` error. May
/// hold a secret (zeroized on drop).
pub fn encode(response: &Response) -> Option<Zeroizing<Vec<u8>>> {
    response
        .encode_frame()
        .or_else(|e| {
            tracing::error!(error = %e, "response does not fit a frame");
            Response::Error(ErrorResponse::new(
                ErrorCode::INTERNAL,
                format!("the response is too large: {e}"),
            ))
            .encode_frame()
        })
        .ok()
        .map(Zeroizing::new)
}

/// Who asked for a private-key operation, for the audit line: its part that stays the
/// same for the whole connection, formatted once (`pid=… uid=… exe=… client=…`). The
/// `client` string comes from the client and is escaped, so it cannot forge a line.
#[derive(Debug)]
struct Requester(String);

impl Requester {
    fn new(peer: &Peer, client: &str) -> Self {
        Self(format!(
            "pid={:?} uid={:?} exe={:?} client={client:?}",
            peer.pid, peer.uid, peer.exe
        ))
    }
}

/// One audit line per private-key operation: who, which key, what, outcome.
#[derive(Debug)]
struct Audit {
    who: Arc<Requester>,
    key: KeyId,
    op: &'static str,
}

impl Audit {
    fn log(&self, r: Result<(), &AgentError>) {
        let outcome = match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => ErrorResponse::from(e).code.to_string(),
        };
        tracing::info!(target: crate::logwriter::AUDIT_TARGET, key = %self.key, op = self.op,
            outcome = %outcome, "{}", self.who.0);
    }

    /// On the worker thread: a successful `response` goes to the client at once (or back
    /// to the server when there is no sink or the socket is full); then the audit line.
    fn deliver(&self, response: &Response, sink: Option<&Sink>) -> Done {
        let done = send(response, sink);
        self.log(Ok(()));
        done
    }
}

/// `response` written to `sink` as far as the socket takes it now.
fn send(response: &Response, sink: Option<&Sink>) -> Done {
    let Some(frame) = encode(response) else {
        return Done::Gone;
    };
    match sink {
        None => Done::Write(frame),
        Some(sink) => match sink.send(&frame) {
            Some([]) => Done::Sent,
            Some(rest) => Done::Write(Zeroizing::new(rest.to_vec())),
            None => Done::Gone,
        },
    }
}

/// What a worker thread needs to answer a connection's key operations itself, while the
/// connection waits on a token's lane (`server::Parked`).
#[derive(Debug, Clone)]
pub struct OnLane {
    keystore: Weak<Keystore>,
    who: Arc<Requester>,
    sink: Sink,
}

impl OnLane {
    /// The connection's socket (the workers' descriptor).
    pub fn socket(&self) -> &UnixStream {
        self.sink.socket()
    }

    /// On the worker thread `here`: answers `req` when it is a key operation its token can
    /// do at once (see `Token::sign_now`), with the audit line. `None` sends the request
    /// the way through tokio.
    pub fn answer(&self, req: &Request, here: &mut OnWorker<'_>) -> Option<Done> {
        let (key, op) = req.key_operation()?;
        let (token, entry) = self.keystore.upgrade()?.key(key).ok()?;
        let r = match req {
            Request::Sign {
                algorithm, digest, ..
            } => token
                .sign_now(here, &entry, *algorithm, digest)?
                .map(|sig| Response::Signature {
                    signature: serde_bytes::ByteBuf::from(sig),
                }),
            Request::Decrypt {
                algorithm,
                ciphertext,
                ..
            } => token
                .decrypt_now(here, &entry, *algorithm, ciphertext)?
                .map(|secret| Response::Secret { secret }),
            Request::Ecdh { peer_point, .. } => token
                .ecdh_now(here, &entry, peer_point)?
                .map(|secret| Response::Secret { secret }),
            _ => return None,
        };
        let audit = Audit {
            who: self.who.clone(),
            key: key.clone(),
            op,
        };
        Some(match r {
            Ok(response) => audit.deliver(&response, Some(&self.sink)),
            Err(e) => {
                audit.log(Err(&e));
                send(&Response::Error(ErrorResponse::from(&e)), Some(&self.sink))
            }
        })
    }
}

/// Per-connection protocol state.
#[derive(Debug)]
pub struct Session {
    peer: Peer,
    keystore: Arc<Keystore>,
    version: Option<u32>,
    who: Arc<Requester>,
    /// The requesting program as PIN dialogs name it ("/usr/bin/mutt (pid 7)").
    asker: String,
    sink: Option<Sink>,
}

impl Session {
    /// A session for `peer`, before `Hello`. With a `sink`, worker threads write
    /// successful key operation responses to it themselves.
    pub fn new(peer: Peer, keystore: Arc<Keystore>, sink: Option<Sink>) -> Self {
        let who = Arc::new(Requester::new(&peer, ""));
        let exe = peer.exe.as_deref().unwrap_or("an unknown program");
        let asker = match peer.pid {
            Some(pid) => format!("{exe} (pid {pid})"),
            None => exe.to_owned(),
        };
        Self {
            peer,
            keystore,
            version: None,
            who,
            asker,
            sink,
        }
    }

    /// What a worker needs to answer this connection's key operations itself (`None`
    /// without a sink).
    pub fn on_lane(&self) -> Option<OnLane> {
        Some(OnLane {
            keystore: Arc::downgrade(&self.keystore),
            who: self.who.clone(),
            sink: self.sink.clone()?,
        })
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
    pub async fn handle(&mut self, req: Request) -> Answer {
        let r = match req {
            req if req.is_key_operation() && self.greeted() => return self.key_op(req).await,
            req => self.dispatch(req).await,
        };
        let response = r.unwrap_or_else(|e| Response::Error(ErrorResponse::from(&e)));
        match encode(&response) {
            Some(frame) => Answer::Now(frame),
            None => Answer::Now(Zeroizing::new(Vec::new())),
        }
    }

    /// Sign, decrypt and ECDH: queued on the key's token; its worker answers.
    async fn key_op(&mut self, req: Request) -> Answer {
        let fail = |e: &AgentError| {
            Answer::Now(
                encode(&Response::Error(ErrorResponse::from(e)))
                    .unwrap_or_else(|| Zeroizing::new(Vec::new())),
            )
        };
        let who = &self.asker;
        let Some((key, op)) = req.key_operation().map(|(k, op)| (k.clone(), op)) else {
            return fail(&AgentError::Internal("not a key operation".into()));
        };
        let (token, entry) = match self.keystore.key(&key) {
            Ok(te) => te,
            Err(e) => return fail(&e),
        };
        let park_on = token.has_lane().then(|| token.clone());
        let audit = Arc::new(Audit {
            who: self.who.clone(),
            key,
            op,
        });
        let attention = Arc::new(tokio::sync::Notify::new());
        let (a, sink, n) = (audit.clone(), self.sink.clone(), attention.clone());
        // On the worker thread: answer, and call the server only when it has to act.
        let deliver = move |r: Result<Response, AgentError>| {
            let done = r.map(|response| a.deliver(&response, sink.as_ref()));
            if !matches!(done, Ok(Done::Sent)) {
                n.notify_one();
            }
            done
        };
        let submitted = match req {
            Request::Sign {
                algorithm, digest, ..
            } => {
                token
                    .submit_sign(&entry, algorithm, digest.into_vec(), who, move |r| {
                        deliver(r.map(|sig| Response::Signature {
                            signature: serde_bytes::ByteBuf::from(sig),
                        }))
                    })
                    .await
            }
            Request::Decrypt {
                algorithm,
                ciphertext,
                ..
            } => {
                token
                    .submit_decrypt(&entry, algorithm, ciphertext.into_vec(), who, move |r| {
                        deliver(r.map(|secret| Response::Secret { secret }))
                    })
                    .await
            }
            Request::Ecdh { peer_point, .. } => {
                token
                    .submit_ecdh(&entry, peer_point.into_vec(), who, move |r| {
                        deliver(r.map(|secret| Response::Secret { secret }))
                    })
                    .await
            }
            _ => return fail(&AgentError::Internal("not a key operation".into())),
        };
        let submitted = match submitted {
            Ok(s) => s,
            Err(e) => {
                audit.log(Err(&e));
                return fail(&e);
            }
        };
        Answer::Later(Later {
            done: Box::pin(async move {
                match submitted.wait(&token).await {
                    Ok(done) => done,
                    Err(e) => {
                        audit.log(Err(&e));
                        match encode(&Response::Error(ErrorResponse::from(&e))) {
                            Some(frame) => Done::Write(frame),
                            None => Done::Gone,
                        }
                    }
                }
            }),
            attention,
            park_on,
        })
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
            self.who = Arc::new(Requester::new(&self.peer, client));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_line_escapes_what_the_client_says() {
        let peer = Peer {
            pid: Some(7),
            uid: Some(1000),
            exe: Some("/usr/bin/mutt".into()),
        };
        let forged = "mutt\n2026-01-01T00:00:00Z  INFO smime_agent::audit: pid=Some(1) \"x\"";
        let line = Requester::new(&peer, forged).0;
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(
            line,
            r#"pid=Some(7) uid=Some(1000) exe=Some("/usr/bin/mutt") client="mutt\n2026-01-01T00:00:00Z  INFO smime_agent::audit: pid=Some(1) \"x\"""#
        );
    }
}
