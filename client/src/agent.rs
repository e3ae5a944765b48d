//! A blocking client of the agent: std I/O only, no tokio.
//!
//! ```text
//! AgentClient::connect(path) ─► hello ─► request() … request()
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use smime_proto::{
    ErrorResponse, FrameDecoder, KeyInfo, PROTOCOL_VERSION, Request, Response, SecretBytes,
};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// No agent answers on the socket.
    #[error("cannot reach the agent at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The connection broke or the agent spoke garbage.
    #[error("agent connection failed: {0}")]
    Transport(String),
    /// The agent answered with an operation error.
    #[error("{0}")]
    Agent(ErrorResponse),
    /// The agent answered with the wrong kind of response.
    #[error("unexpected response from the agent: {0}")]
    Unexpected(String),
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        AgentError::Transport(e.to_string())
    }
}

/// The socket path: `--socket`, else `$SMIME_AGENT_SOCK`, else
/// `$XDG_RUNTIME_DIR/smime-agent/agent.sock`.
pub fn socket_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_owned());
    }
    let env = |n| std::env::var_os(n).filter(|v: &std::ffi::OsString| !v.is_empty());
    env("SMIME_AGENT_SOCK").map(PathBuf::from).or_else(|| {
        env("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("smime-agent").join("agent.sock"))
    })
}

/// How long to wait for one response.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// How long to wait for the agent to take a request.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection to the agent, after `Hello`.
#[derive(Debug)]
pub struct AgentClient<S: Read + Write = UnixStream> {
    stream: S,
    decoder: FrameDecoder,
    /// The agent's name and version, from `Hello`.
    pub agent: String,
    /// The socket, for a second connection that tells the user what a slow private-key
    /// operation waits for (see [`Notice`]); `None` over other streams.
    socket: Option<PathBuf>,
}

/// While a private-key operation runs, a thread that after a second asks the agent (on a
/// second connection) what the token waits for (a touch, the card, the PIN pad) and says
/// so once per token on standard error, when that is a terminal. Mail clients and git,
/// which read stderr through a pipe, never see it. Dropping it ends the thread.
struct Notice {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Notice {
    fn start(socket: &Path) -> Option<Self> {
        use std::io::IsTerminal as _;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let socket = socket.to_owned();
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut told: Vec<String> = Vec::new();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(std::time::Duration::from_secs(1))
            {
                let Ok(mut c) = AgentClient::connect(&socket) else {
                    return;
                };
                let Ok(Response::Status { tokens, .. }) = c.request(&Request::Status) else {
                    return;
                };
                for t in tokens {
                    if let Some(w) = t.waiting
                        && !told.contains(&t.label)
                    {
                        eprintln!("smime: {}: {w}", t.label);
                        told.push(t.label);
                    }
                }
            }
        });
        Some(Self {
            done: Some(done),
            thread: Some(thread),
        })
    }
}

impl Drop for Notice {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl AgentClient<UnixStream> {
    /// Connects to the socket and says hello.
    ///
    /// # Errors
    /// When nothing listens there or the hello fails.
    pub fn connect(path: &Path) -> Result<Self, AgentError> {
        let stream = UnixStream::connect(path).map_err(|source| AgentError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
        // Talk (and send PINs) only to an agent of our own user.
        let owner = rustix::net::sockopt::socket_peercred(&stream).map_err(std::io::Error::from)?;
        let me = rustix::process::geteuid();
        if owner.uid != me {
            return Err(AgentError::Transport(format!(
                "the agent at {} runs as uid {}, not as this user (uid {}); refusing to use it",
                path.display(),
                owner.uid.as_raw(),
                me.as_raw()
            )));
        }
        // Never hang on a stuck agent. Operations can legitimately take a while (a card
        // waiting for a touch or a PIN pad), hence the generous read limit.
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut c = Self::hello(stream)?;
        c.socket = Some(path.to_owned());
        Ok(c)
    }
}

impl<S: Read + Write> AgentClient<S> {
    /// Says hello over an open stream.
    ///
    /// # Errors
    /// When the agent refuses the protocol version.
    pub fn hello(stream: S) -> Result<Self, AgentError> {
        let mut c = Self {
            stream,
            decoder: FrameDecoder::new(),
            agent: String::new(),
            socket: None,
        };
        let client = format!("smime {}", env!("CARGO_PKG_VERSION"));
        match c.request(&Request::Hello {
            versions: vec![PROTOCOL_VERSION],
            client,
        })? {
            Response::Hello { agent, .. } => {
                c.agent = agent;
                Ok(c)
            }
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    /// [`AgentClient::request`] for a private-key operation, which may wait on the token:
    /// the user is told what it waits for (see [`Notice`]).
    fn key_op(&mut self, req: &Request) -> Result<Response, AgentError> {
        let _notice = self.socket.as_deref().and_then(Notice::start);
        self.request(req)
    }

    /// Sends one request and reads its response. An error response becomes
    /// [`AgentError::Agent`].
    ///
    /// # Errors
    /// Transport failures and agent errors.
    pub fn request(&mut self, req: &Request) -> Result<Response, AgentError> {
        let frame = req
            .encode_frame()
            .map_err(|e| AgentError::Transport(e.to_string()))?;
        // If the agent hung up before taking the request (it may refuse a connection over
        // its limit), it may still have said why: read that before reporting the write.
        let sent = self
            .stream
            .write_all(&frame)
            .and_then(|()| self.stream.flush());
        let payload = match (self.read_frame(), sent) {
            (Ok(p), _) => p,
            (Err(_), Err(e)) => return Err(AgentError::from(e)),
            (Err(e), Ok(())) => return Err(e),
        };
        match Response::decode(&payload).map_err(|e| AgentError::Transport(e.to_string()))? {
            Response::Error(e) => Err(AgentError::Agent(e)),
            r => Ok(r),
        }
    }

    fn read_frame(&mut self) -> Result<Vec<u8>, AgentError> {
        Ok(loop {
            if let Some(p) = self
                .decoder
                .next_frame()
                .map_err(|e| AgentError::Transport(e.to_string()))?
            {
                break p;
            }
            // One read takes a whole response (header and body) when it is there. It may
            // hold a secret (an unwrapped key): what was read is wiped once fed.
            let mut buf = [0u8; 4096];
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(AgentError::Transport(
                        "the agent closed the connection".into(),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(AgentError::from(e)),
            };
            if let Some(p) = self
                .decoder
                .feed_wiping(&mut buf[..n])
                .map_err(|e| AgentError::Transport(e.to_string()))?
            {
                break p;
            }
        })
    }

    /// Lists the agent's keys.
    ///
    /// # Errors
    /// As for [`AgentClient::request`].
    pub fn list_keys(&mut self) -> Result<Vec<KeyInfo>, AgentError> {
        match self.request(&Request::ListKeys)? {
            Response::Keys { keys } => Ok(keys),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Signs a digest.
    ///
    /// # Errors
    /// As for [`AgentClient::request`].
    pub fn sign(
        &mut self,
        key: &smime_proto::KeyId,
        algorithm: smime_proto::SignAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, AgentError> {
        let req = Request::Sign {
            key: key.clone(),
            algorithm,
            digest: serde_bytes::ByteBuf::from(digest.to_vec()),
        };
        match self.key_op(&req)? {
            Response::Signature { signature } => Ok(signature.into_vec()),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Decrypts a wrapped key.
    ///
    /// # Errors
    /// As for [`AgentClient::request`].
    pub fn decrypt(
        &mut self,
        key: &smime_proto::KeyId,
        algorithm: smime_proto::DecryptAlgorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, AgentError> {
        let req = Request::Decrypt {
            key: key.clone(),
            algorithm,
            ciphertext: serde_bytes::ByteBuf::from(ciphertext.to_vec()),
        };
        match self.key_op(&req)? {
            Response::Secret { secret } => Ok(secret),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    /// ECDH with the key and a peer's uncompressed point; returns Z.
    ///
    /// # Errors
    /// As for [`AgentClient::request`].
    pub fn ecdh(
        &mut self,
        key: &smime_proto::KeyId,
        peer_point: &[u8],
    ) -> Result<SecretBytes, AgentError> {
        let req = Request::Ecdh {
            key: key.clone(),
            peer_point: serde_bytes::ByteBuf::from(peer_point.to_vec()),
        };
        match self.key_op(&req)? {
            Response::Secret { secret } => Ok(secret),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Forwards a PIN the user typed.
    ///
    /// # Errors
    /// As for [`AgentClient::request`]; a wrong PIN is not retried.
    pub fn unlock(
        &mut self,
        token: &str,
        pin: smime_proto::Pin,
        confirm_final_try: bool,
    ) -> Result<(), AgentError> {
        match self.request(&Request::Unlock {
            token: token.to_owned(),
            pin,
            confirm_final_try,
        })? {
            Response::Ok => Ok(()),
            other => Err(AgentError::Unexpected(format!("{other:?}"))),
        }
    }
}
