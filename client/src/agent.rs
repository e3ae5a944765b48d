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

mod spin;
pub use spin::{Spin, spin_for_input};

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

/// A stream to the agent.
pub trait AgentStream: Read + Write {
    /// How long one read may wait (`None`: no limit). [`AgentClient`] asks once, when it
    /// says hello. The default is `None`.
    ///
    /// # Errors
    /// When the stream cannot tell.
    fn read_limit(&self) -> std::io::Result<Option<std::time::Duration>> {
        Ok(None)
    }

    /// Waits until the stream has something to read (or an error or hang-up to report),
    /// before a response is first read, for at most `limit`. The default returns at once.
    ///
    /// # Errors
    /// When waiting fails, or nothing comes within `limit`.
    fn wait_readable(&self, limit: Option<std::time::Duration>) -> std::io::Result<()> {
        let _ = limit;
        Ok(())
    }

    /// Looks for something to read without sleeping, for up to `budget` and until another
    /// thread is seen to want the CPU ([`spin_for_input`]); says whether it found some.
    /// The default does not look.
    fn input_within(&self, budget: std::time::Duration) -> bool {
        let _ = budget;
        false
    }
}

/// A Unix socket looks for its response for a while without sleeping ([`Spin`]; BENCHMARKS.md,
/// round 6), then waits in `poll(POLLIN)`, not in a blocking `read`, for as long as its read
/// timeout allows ([`AgentClient::connect`] sets [`READ_TIMEOUT`]; none: no limit). The
/// agent's reading of a request frees the memory that request took on this socket, and
/// the kernel then tells this socket's waiters that it may write again. A thread blocked
/// in `read` on a Unix stream socket is woken by that too, only to go back to sleep;
/// `poll` for input ignores it. So each request costs one wake-up of the client (its
/// response) instead of two (BENCHMARKS.md, round 5).
impl AgentStream for UnixStream {
    fn read_limit(&self) -> std::io::Result<Option<std::time::Duration>> {
        self.read_timeout()
    }

    fn input_within(&self, budget: std::time::Duration) -> bool {
        spin_for_input(self, budget)
    }

    fn wait_readable(&self, limit: Option<std::time::Duration>) -> std::io::Result<()> {
        let timeout = limit.map(|t| {
            rustix::event::Timespec::try_from(t).unwrap_or(rustix::event::Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        loop {
            match spin::poll_in(self, timeout.as_ref()) {
                Ok(false) => {
                    let secs = limit.unwrap_or_default().as_secs_f64();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no response from the agent within {secs} s"),
                    ));
                }
                Ok(true) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A connection to the agent, after `Hello`.
#[derive(Debug)]
pub struct AgentClient<S: AgentStream = UnixStream> {
    stream: S,
    /// The stream's read limit, asked once (see [`AgentStream::read_limit`]).
    read_limit: Option<std::time::Duration>,
    decoder: FrameDecoder,
    /// The agent's name and version, from `Hello`.
    pub agent: String,
    /// The socket, for a second connection that tells the user what a slow private-key
    /// operation waits for (see [`Notice`]); `None` over other streams, and when standard
    /// error is not a terminal (asked once, at connect: not once per request).
    socket: Option<PathBuf>,
    /// How long to look for a response before sleeping.
    spin: Spin,
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
        use std::io::IsTerminal as _;
        c.socket = std::io::stderr().is_terminal().then(|| path.to_owned());
        Ok(c)
    }
}

impl<S: AgentStream> AgentClient<S> {
    /// Says hello over an open stream.
    ///
    /// # Errors
    /// When the agent refuses the protocol version.
    pub fn hello(stream: S) -> Result<Self, AgentError> {
        let mut c = Self {
            read_limit: stream.read_limit()?,
            stream,
            decoder: FrameDecoder::new(),
            agent: String::new(),
            socket: None,
            spin: Spin::default(),
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
        let payload = match (self.read_frame(req.is_key_operation()), sent) {
            (Ok(p), _) => p,
            (Err(_), Err(e)) => return Err(AgentError::from(e)),
            (Err(e), Ok(())) => return Err(e),
        };
        match Response::decode(&payload).map_err(|e| AgentError::Transport(e.to_string()))? {
            Response::Error(e) => Err(AgentError::Agent(e)),
            r => Ok(r),
        }
    }

    /// Reads one response; `key_op` says whether it answers a private-key operation.
    fn read_frame(&mut self, key_op: bool) -> Result<Vec<u8>, AgentError> {
        let mut first = true;
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
            // Only the response's first bytes are waited for (the rest follows at once).
            if std::mem::take(&mut first) {
                self.spin.wait(&self.stream, self.read_limit, key_op)?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// This thread's count of voluntary context switches (each time it slept).
    fn sleeps() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    }

    /// A test agent's answer to `Hello`.
    fn say_hello(s: &mut UnixStream) {
        let hello = Response::Hello {
            version: PROTOCOL_VERSION,
            agent: "test".into(),
            capabilities: vec![],
        };
        s.write_all(&hello.encode_frame().expect("encode"))
            .expect("write");
    }

    /// An agent on the other end of `theirs` that answers `Hello`, then takes one request
    /// `late` after it came and answers it `late` after that.
    fn slow_agent(theirs: UnixStream, late: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut s = theirs;
            let mut decoder = FrameDecoder::new();
            let mut next = |s: &mut UnixStream| loop {
                if let Some(p) = decoder.next_frame().expect("frame") {
                    return p;
                }
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "client hung up");
                if let Some(p) = decoder.feed(&buf[..n]).expect("feed") {
                    return p;
                }
            };
            next(&mut s);
            say_hello(&mut s);
            // The client sends its request and waits; it is read only after a while.
            std::thread::sleep(late);
            next(&mut s);
            std::thread::sleep(late);
            s.write_all(&Response::Ok.encode_frame().expect("encode"))
                .expect("write");
        })
    }

    /// The fewest times, over up to `tries` tries in up to 20 s (stopping at `enough` or
    /// fewer), that the client thread sleeps while it waits for the response to one
    /// request from the test agent that `agent` starts.
    fn fewest_sleeps(
        tries: usize,
        enough: u64,
        agent: impl Fn(UnixStream) -> std::thread::JoinHandle<()>,
    ) -> u64 {
        let start = std::time::Instant::now();
        let mut fewest = u64::MAX;
        for _ in 0..tries {
            if start.elapsed() > Duration::from_secs(20) {
                break;
            }
            fewest = fewest.min({
                let (ours, theirs) = UnixStream::pair().expect("pair");
                let agent = agent(theirs);
                let mut c = AgentClient::hello(ours).expect("hello");
                let before = sleeps();
                let r = c.request(&Request::Status).expect("response");
                let slept = sleeps() - before;
                assert!(matches!(r, Response::Ok), "{r:?}");
                agent.join().expect("agent");
                slept
            });
            if fewest <= enough {
                break;
            }
        }
        fewest
    }

    #[test]
    fn waiting_for_a_response_sleeps_once() {
        if std::fs::read_to_string("/proc/thread-self/status").is_err() {
            eprintln!("no /proc/thread-self/status here; skipped");
            return;
        }
        // A busy machine can add a sleep (a lock, a page fault) or take one away (the
        // client preempted until its response is there), but not on every try; a blocking
        // `read` sleeps twice every time.
        let fewest = fewest_sleeps(3, 1, |theirs| slow_agent(theirs, Duration::from_millis(30)));
        // Blocked in `read`, the client would also wake when the agent reads the request
        // (the socket has room to write again), and sleep a second time.
        assert!(
            fewest <= 1,
            "the client slept {fewest} times waiting for one response"
        );
    }

    /// An agent on the other end of `theirs` that answers `Hello`, then looks for one
    /// request without ever sleeping, and answers it `late` after it came: a response that
    /// comes without the client's thread being woken for it.
    fn busy_agent(theirs: UnixStream, late: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut s = theirs;
            let mut decoder = FrameDecoder::new();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).expect("read");
            assert!(decoder.feed(&buf[..n]).expect("feed").is_some(), "hello");
            say_hello(&mut s);
            s.set_nonblocking(true).expect("nonblocking");
            loop {
                match s.read(&mut buf) {
                    Ok(n) => {
                        assert!(n > 0, "client hung up");
                        if decoder.feed(&buf[..n]).expect("feed").is_some() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::hint::spin_loop();
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
            let came = std::time::Instant::now();
            while came.elapsed() < late {
                std::hint::spin_loop();
            }
            s.set_nonblocking(false).expect("blocking");
            s.write_all(&Response::Ok.encode_frame().expect("encode"))
                .expect("write");
        })
    }

    #[test]
    fn a_quick_response_is_found_without_sleeping() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus < 2 || std::fs::read_to_string("/proc/thread-self/status").is_err() {
            eprintln!("one CPU, or no /proc/thread-self/status here; skipped");
            return;
        }
        // The agent (on the other CPU, never sleeping) answers 500 µs after the request
        // came; the client is still looking then. A busy machine (other tests running) can
        // end a look early, since another thread wants the client's CPU, but not on every
        // try for 20 s.
        let fewest = fewest_sleeps(usize::MAX, 0, |theirs| {
            busy_agent(theirs, Duration::from_micros(500))
        });
        assert_eq!(fewest, 0, "the client slept waiting for a quick response");
    }

    #[test]
    fn looking_ends_at_the_budget_or_at_a_hang_up() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        // On a thread, so that looking that ignores its budget fails the test, not hangs it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let found = spin_for_input(&ours, Duration::from_millis(2));
            drop(theirs);
            let _ = tx.send((found, spin_for_input(&ours, Duration::from_secs(5))));
        });
        let (found, hung_up) = rx
            .recv_timeout(Duration::from_secs(4))
            .expect("looking outlived its 2 ms budget, or a hang-up");
        assert!(!found, "nothing was sent");
        assert!(hung_up, "the other end hung up");
    }

    #[test]
    fn the_wait_keeps_the_sockets_read_timeout() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        // On a thread, so that a wait that ignores the limit fails the test, not hangs it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let limit = ours.read_limit().expect("read timeout");
            let _ = tx.send(ours.wait_readable(limit));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the wait outlived the socket's 50 ms read timeout");
        let e = r.expect_err("nothing to read");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        drop(theirs);
    }

    #[test]
    fn a_hang_up_ends_the_wait() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(theirs);
        });
        ours.wait_readable(None).expect("wait");
        let mut buf = [0u8; 8];
        assert_eq!((&ours).read(&mut buf).expect("read"), 0);
        t.join().expect("peer");
    }
}
