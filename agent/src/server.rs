//! The socket server: bind with safe permissions, accept with a connection limit, check
//! the peer, and run one [`Handler`] per connection until shutdown.
//!
//! ```text
//!  bind (dir 0700, socket 0600) ─► accept loop ─(permit)─► peer euid check ─► Handler task
//!                                     ▲ semaphore                                │
//!                          shutdown ──┴── CancellationToken ─── TaskTracker ◄────┘ (drained)
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use interprocess::local_socket::tokio::{Listener, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use smime_proto::{
    ErrorCode, ErrorResponse, FrameDecoder, FrameError, MAX_REQUEST_LEN, Request, Response,
};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroizing;

use crate::backend::pkcs11::{Guest, OnWorker, Served, Token};
use crate::keystore::Keystore;
use crate::session::{Answer, Done, Later, OnLane, Peer, Session, Sink, encode};

/// A frame that has started must be complete within this time (slow-loris guard).
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// A response must be written within this time (a client that never reads).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per second one connection may make; beyond it the agent slows it down
/// (it reads the next request later) instead of letting it starve the others.
const RATE_PER_SEC: f64 = 50_000.0;
/// Requests a connection may make in a burst before the rate applies.
const RATE_BURST: f64 = 5_000.0;
/// An idle connection is closed after this time.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A connection that has sent nothing for this long leaves its token's lane: while it
/// idles, it costs nothing there, but a request waiting on a lane whose workers are all
/// busy (a card waiting for a touch) would wait with them. Back in tokio, its next
/// request is read at once.
const LANE_IDLE: Duration = Duration::from_secs(1);

/// Creates the socket's directory (0700) if needed and refuses one that others can enter.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me || meta.mode() & 0o077 != 0 {
        bail!(
            "socket directory {} must be owned by uid {me} with mode 0700 (it is uid {}, mode {:o}); \
             choose a private directory",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// Fails if an agent already answers on `path`; removes a stale socket left by a dead
/// agent. Anything at the path that is not a socket is left alone: an error.
pub fn check_not_running(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir)?;
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("an agent is already listening on {}", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))
}

/// Binds the listening socket with mode 0600 (set before bind: no umask window).
///
/// # Errors
/// When the directory is unsafe or the socket cannot be bound.
pub fn bind(path: &Path) -> anyhow::Result<Listener> {
    check_not_running(path)?;
    let name = path
        .to_fs_name::<GenericFilePath>()
        .context("socket path")?;
    let listener = ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .create_tokio()
        .with_context(|| format!("binding {}", path.display()))?;
    Ok(listener)
}

/// The listening socket handed over by a service manager (systemd socket activation:
/// `LISTEN_FDS`, `LISTEN_PID`), with its path if it has one.
///
/// # Errors
/// When the passed descriptor is not a Unix stream socket.
pub fn activated_listener() -> anyhow::Result<Option<(Listener, Option<PathBuf>)>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let std_listener = fds
        .take_unix_listener(0)
        .context("LISTEN_FDS: descriptor 3 is not a Unix stream socket")?
        .context("LISTEN_FDS: descriptor 3 was already taken")?;
    std_listener.set_nonblocking(true)?;
    let path = std_listener.local_addr()?.as_pathname().map(Path::to_owned);
    let fd: std::os::fd::OwnedFd = std_listener.into();
    let uds = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(fd)?;
    Ok(Some((Listener::from(uds), path)))
}

/// Raises the open-file limit to its hard maximum and returns how many connections fit
/// under it, keeping room for the modules' own files and sockets.
pub fn fit_connection_limit(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
    {
        lim.current = Some(max);
        if setrlimit(Resource::Nofile, lim).is_err() {
            lim.current = Some(cur);
        }
    }
    let files = lim
        .current
        .map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
    // Each connection has two descriptors: one for tokio, one for the worker threads.
    let fit = wanted.min(files.saturating_sub(128) / 2).max(1);
    if fit < wanted {
        tracing::warn!(
            wanted,
            fit,
            open_files = files,
            "the open-file limit lowers the connection limit"
        );
    }
    fit
}

/// Accepts connections until `cancel` fires, then waits for the handlers to finish
/// their current request.
pub async fn serve(
    listener: Listener,
    socket: PathBuf,
    keystore: Arc<Keystore>,
    max_connections: usize,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    let me = rustix::process::geteuid().as_raw();
    tracing::info!(socket = %socket.display(), "listening");
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            s = listener.accept() => s,
        };
        let mut stream = match stream {
            Ok(s) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                // EMFILE and friends: wait and try again rather than spin or die.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let peer = match stream.peer_creds() {
            Ok(c) => Peer::new(c.pid(), c.euid()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; refusing");
                continue;
            }
        };
        if peer.uid != Some(me) {
            tracing::warn!(pid = ?peer.pid, uid = ?peer.uid, "refusing connection from another user");
            continue;
        }
        // Over the limit: say so at once instead of leaving the client in the backlog.
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(pid = ?peer.pid, max_connections, "connection limit reached");
            let busy = Response::Error(ErrorResponse::new(
                ErrorCode::BUSY,
                format!("the agent already serves {max_connections} connections; try again"),
            ));
            if let Ok(frame) = busy.encode_frame() {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frame)).await;
            }
            continue;
        };
        let (ks, cancel) = (keystore.clone(), cancel.clone());
        let interprocess::local_socket::tokio::Stream::UdSocket(stream) = stream;
        let stream = UnixStream::from(stream);
        // The workers' descriptor: they write responses to it and, while the connection
        // waits on a lane, read requests from it, with no tokio registration.
        let sock = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => Arc::new(std::os::unix::net::UnixStream::from(fd)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot duplicate the connection's descriptor; refusing");
                continue;
            }
        };
        let sink = Sink::new(sock);
        tracker.spawn(async move {
            Handler {
                io: Some(Arc::new(stream)),
                session: Session::new(peer, ks, Some(sink)),
                cancel,
                pending: None,
                park_on: None,
            }
            .run()
            .await;
            drop(permit);
        });
    }
    drop(listener); // unlinks the socket: new clients fail fast while we drain
    tracker.close();
    tracing::info!(connections = tracker.len(), "draining");
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still busy after 10 s; stopping anyway");
    }
}

/// One connection: read a frame, answer it, repeat.
///
/// A private-key operation is answered by the token's worker thread, which writes the
/// response itself; meanwhile the handler goes back to reading, and waits for that answer
/// ([`Handler::pending`]) before it answers the next request, so responses keep their
/// order. A client that waits for each response finds the answer long done by then, and
/// the worker never has to wake the handler.
///
/// After a key operation on a token with a lane, the connection waits there for its next
/// request ([`Handler::park`]); the token's workers read and answer what they can, and
/// give the rest back.
struct Handler {
    /// The connection, registered with tokio; `None` while it waits on a lane. (The
    /// workers' descriptor of it is the session's sink.)
    io: Option<Arc<UnixStream>>,
    session: Session,
    cancel: CancellationToken,
    /// The answer a worker thread is giving to the last request.
    pending: Option<Later>,
    /// The token on whose lane the connection waits for its next request.
    park_on: Option<Arc<Token>>,
}

enum Next {
    Frame(Zeroizing<Vec<u8>>),
    Closed,
}

impl Handler {
    async fn run(mut self) {
        self.serve().await;
        // A request still with a worker: its answer is written (or dropped) before the
        // connection's slot is given back.
        let _ = self.settle().await;
    }

    async fn serve(&mut self) {
        let mut decoder = FrameDecoder::with_limit(MAX_REQUEST_LEN);
        let mut bucket = RateLimit::new();
        loop {
            let next = match self.park_on.take() {
                Some(token) => self.park(&token, &mut decoder, &mut bucket).await,
                None => {
                    bucket.wait().await;
                    self.next_frame(&mut decoder).await
                }
            };
            if !self.settle().await {
                return;
            }
            let payload = match next {
                Ok(Next::Frame(p)) => p, // may hold a PIN
                Ok(Next::Closed) => return,
                Err(e) => {
                    tracing::debug!(peer = ?self.session.peer(), error = %e, "closing connection");
                    return;
                }
            };
            let (answer, keep_open) = match Request::decode(&payload) {
                Ok(req) => (self.session.handle(req).await, true),
                Err(smime_proto::DecodeError::UnknownOperation(op)) => (
                    now(Response::Error(ErrorResponse::new(
                        ErrorCode::UNKNOWN_OPERATION,
                        format!("unknown operation {op:?}"),
                    ))),
                    true,
                ),
                Err(e) => {
                    tracing::warn!(peer = ?self.session.peer(), error = %e, "malformed request; closing");
                    (
                        now(Response::Error(ErrorResponse::new(
                            ErrorCode::BAD_REQUEST,
                            e.to_string(),
                        ))),
                        false,
                    )
                }
            };
            match answer {
                Answer::Now(frame) => {
                    if frame.is_empty() || !self.write(&frame).await {
                        return;
                    }
                }
                Answer::Later(done) => {
                    let park_on = done.park_on.clone();
                    self.pending = Some(done);
                    if park_on.is_some() {
                        // The connection waits on the lane only once this answer is out.
                        if !self.settle().await {
                            return;
                        }
                        self.park_on = park_on;
                    }
                }
            }
            if !keep_open {
                return;
            }
        }
    }

    /// Waits until the worker has answered the last request and writes what it left
    /// (a full socket, or an error). False when the connection is done for.
    async fn settle(&mut self) -> bool {
        let Some(pending) = self.pending.take() else {
            return true;
        };
        match pending.done.await {
            Done::Sent => true,
            Done::Write(frame) => self.write(&frame).await,
            Done::Gone => false,
        }
    }

    /// Writes a frame, within [`WRITE_TIMEOUT`].
    async fn write(&mut self, frame: &[u8]) -> bool {
        let Some(io) = self.io.clone() else {
            return false;
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write_all(&io, frame)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "client went away");
                false
            }
            Err(_) => {
                tracing::warn!(peer = ?self.session.peer(), "client does not read its responses; closing");
                false
            }
        }
    }

    /// Reads the next frame. Between frames the connection may idle (up to
    /// [`IDLE_TIMEOUT`], counted from the last answer) and shutdown ends it; once a frame
    /// has begun, all of it must arrive within [`FRAME_TIMEOUT`].
    async fn next_frame(&mut self, decoder: &mut FrameDecoder) -> Result<Next, io::Error> {
        let mut buf = [0u8; 4 * 1024];
        let Some(stream) = self.io.clone() else {
            return Ok(Next::Closed);
        };
        let mut idle_from = tokio::time::Instant::now();
        // Bytes of the next frame that came with the last one: it has begun.
        let mut deadline = decoder.is_mid_frame().then(|| idle_from + FRAME_TIMEOUT);
        loop {
            if let Some(p) = decoder.next_frame().map_err(invalid)? {
                return Ok(Next::Frame(Zeroizing::new(p)));
            }
            // A connection that has not said hello yet gets no idle allowance: a flood of
            // silent connections must not hold slots for long.
            let idle = if self.session.greeted() {
                IDLE_TIMEOUT
            } else {
                FRAME_TIMEOUT
            };
            let until = deadline.unwrap_or(idle_from + idle);
            // One read takes a whole request (header and body: one system call, not two).
            // What follows it stays in the decoder and is served before anything more is
            // read, so a flood never holds more than one buffer here.
            let attention = self.pending.as_ref().map(|p| p.attention.clone());
            let n = tokio::select! {
                _ = self.cancel.cancelled(), if deadline.is_none() => return Ok(Next::Closed),
                // The worker could not give the whole answer: write the rest (or the error) now.
                _ = async { attention.as_ref()?.notified().await; Some(()) }, if attention.is_some() => {
                    if !self.settle().await {
                        return Ok(Next::Closed);
                    }
                    idle_from = tokio::time::Instant::now();
                    continue;
                }
                r = tokio::time::timeout_at(until, read_some(&stream, &mut buf)) => match r {
                    Ok(r) => r?,
                    // Idle while a worker still answers the last request (a token waiting
                    // for a touch, say): the idle time starts once it has answered.
                    Err(_) if deadline.is_none() && self.pending.is_some() => {
                        if !self.settle().await {
                            return Ok(Next::Closed);
                        }
                        idle_from = tokio::time::Instant::now();
                        continue;
                    }
                    Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
                },
            };
            if n == 0 {
                decoder.finish().map_err(invalid)?;
                return Ok(Next::Closed);
            }
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + FRAME_TIMEOUT);
            // The request may hold a PIN: what was read is wiped once fed.
            if let Some(p) = decoder.feed_wiping(&mut buf[..n]).map_err(invalid)? {
                return Ok(Next::Frame(Zeroizing::new(p)));
            }
        }
    }

    /// Waits for the next frame on `token`'s lane: the connection leaves tokio, and a
    /// worker of the token reads it. What the worker does not answer itself comes back here,
    /// as does the connection after [`LANE_IDLE`] without a request, or at shutdown.
    async fn park(
        &mut self,
        token: &Token,
        decoder: &mut FrameDecoder,
        bucket: &mut RateLimit,
    ) -> Result<Next, io::Error> {
        let io = self.io.take().map(Arc::try_unwrap);
        let (io, on_lane) = match (io, self.session.on_lane()) {
            (Some(Ok(io)), Some(on_lane)) => (io, on_lane),
            (io, _) => {
                self.io = io.map(|r| r.map_or_else(|shared| shared, Arc::new));
                bucket.wait().await;
                return self.next_frame(decoder).await;
            }
        };
        // Out of tokio's epoll set: a request must not wake the tokio thread.
        let io = io.into_std()?;
        let state = Arc::new(ParkState::new());
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let guest = Box::new(Parked {
            decoder: std::mem::take(decoder),
            bucket: std::mem::replace(bucket, RateLimit::new()),
            on_lane,
            state: state.clone(),
            back: Some(tx),
            why: Why::Called,
        });
        let id = match token.park(guest) {
            Ok(id) => Some(id),
            Err((e, guest)) => {
                tracing::debug!(error = %e, "cannot wait on the lane");
                guest.go_back();
                None
            }
        };
        let mut check = tokio::time::Instant::now() + LANE_IDLE;
        let back = loop {
            let call = tokio::select! {
                back = &mut rx => break back,
                _ = self.cancel.cancelled(), if !state.wanted() => true,
                _ = tokio::time::sleep_until(check), if !state.wanted() => {
                    let idle = state.idle();
                    check = tokio::time::Instant::now() + LANE_IDLE.saturating_sub(idle);
                    idle >= LANE_IDLE
                }
            };
            if call {
                state.wanted.store(true, Ordering::SeqCst);
                if let Some(id) = id {
                    token.reclaim(id);
                }
            }
        };
        self.io = Some(Arc::new(UnixStream::from_std(io)?));
        let Ok(back) = back else {
            // Dropped unanswered: the token shut down, or its worker panicked.
            tracing::warn!(peer = ?self.session.peer(), "the token's worker stopped while serving this connection; closing");
            return Ok(Next::Closed);
        };
        *decoder = back.decoder;
        *bucket = back.bucket;
        match back.why {
            Why::Frame(p) => {
                bucket.wait().await;
                Ok(Next::Frame(p))
            }
            Why::Called => {
                bucket.wait().await;
                self.next_frame(decoder).await
            }
            Why::Eof => {
                decoder.finish().map_err(invalid)?;
                Ok(Next::Closed)
            }
            Why::Failed(e) => Err(e),
            Why::Rest(rest) => {
                if !self.write(&rest).await {
                    return Ok(Next::Closed);
                }
                bucket.wait().await;
                self.next_frame(decoder).await
            }
            Why::Gone => Ok(Next::Closed),
        }
    }
}

/// What a parked connection and its tokio task share.
struct ParkState {
    /// The task wants the connection back.
    wanted: AtomicBool,
    since: Instant,
    /// When a worker last answered a request, in µs after `since`.
    answered: AtomicU64,
}

impl ParkState {
    fn new() -> Self {
        Self {
            wanted: AtomicBool::new(false),
            since: Instant::now(),
            answered: AtomicU64::new(0),
        }
    }

    fn wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }

    fn answered(&self) {
        let us = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.answered.store(us, Ordering::Relaxed);
    }

    /// How long since the last answer (or since parking).
    fn idle(&self) -> Duration {
        let answered = Duration::from_micros(self.answered.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(answered)
    }
}

/// Why a parked connection came back to its task.
enum Why {
    /// The task called it back, or a frame is incomplete: read on as usual.
    Called,
    /// A request for the task to answer (not a key operation the token can do at once,
    /// or over the rate).
    Frame(Zeroizing<Vec<u8>>),
    /// End of stream.
    Eof,
    /// A read failed or the frame is invalid.
    Failed(io::Error),
    /// The rest of a response that the socket did not take.
    Rest(Zeroizing<Vec<u8>>),
    /// The client went away.
    Gone,
}

/// A connection back from its lane.
struct Back {
    decoder: FrameDecoder,
    bucket: RateLimit,
    why: Why,
}

/// A connection waiting on a lane: what a worker needs to read its next request and
/// answer it.
struct Parked {
    decoder: FrameDecoder,
    bucket: RateLimit,
    on_lane: OnLane,
    state: Arc<ParkState>,
    back: Option<tokio::sync::oneshot::Sender<Back>>,
    why: Why,
}

impl Parked {
    fn back(mut self: Box<Self>, why: Why) -> Served {
        self.why = why;
        Served::Back(self)
    }
}

impl Guest for Parked {
    fn fd(&self) -> BorrowedFd<'_> {
        self.on_lane.socket().as_fd()
    }

    fn wanted(&self) -> bool {
        self.state.wanted()
    }

    fn go_back(self: Box<Self>) {
        let Parked {
            decoder,
            bucket,
            back,
            why,
            ..
        } = *self;
        if let Some(tx) = back {
            let _ = tx.send(Back {
                decoder,
                bucket,
                why,
            });
        }
    }

    fn serve(mut self: Box<Self>, here: &mut OnWorker<'_>) -> Served {
        let mut buf = [0u8; 4 * 1024];
        let n = loop {
            match rustix::io::read(self.on_lane.socket(), &mut buf) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Served::Stay(self),
                Err(e) => return self.back(Why::Failed(e.into())),
            }
        };
        if n == 0 {
            return self.back(Why::Eof);
        }
        // The request may hold a PIN: what was read is wiped once fed.
        let payload = match self.decoder.feed_wiping(&mut buf[..n]) {
            Ok(Some(p)) => Zeroizing::new(p),
            Ok(None) => return self.back(Why::Called),
            Err(e) => return self.back(Why::Failed(invalid(e))),
        };
        let Ok(req) = Request::decode(&payload) else {
            return self.back(Why::Frame(payload));
        };
        if !req.is_key_operation() || !self.bucket.try_take() {
            return self.back(Why::Frame(payload));
        }
        let done = self.on_lane.answer(&req, here);
        drop(req);
        match done {
            None => {
                self.bucket.give_back();
                self.back(Why::Frame(payload))
            }
            Some(Done::Sent) => {
                self.state.answered();
                if self.decoder.is_mid_frame() {
                    // More came with it: the task reads on.
                    self.back(Why::Called)
                } else {
                    Served::Stay(self)
                }
            }
            Some(Done::Write(rest)) => self.back(Why::Rest(rest)),
            Some(Done::Gone) => self.back(Why::Gone),
        }
    }
}

/// Reads what the socket holds, up to `buf.len()` bytes, waiting until there is something.
///
/// A read that leaves room in `buf` has drained the socket, so the socket's readiness is
/// cleared then: the next read waits for the next request instead of asking the kernel
/// once more only to hear `EAGAIN`. tokio's own `poll_read` does the same; the reader of
/// interprocess's `&Stream` did not, which cost a second `recvfrom` per request. (A read
/// also stops short at passed file descriptors or an out-of-band mark; a client that sends
/// those stalls only its own connection, until it writes again or [`FRAME_TIMEOUT`].)
async fn read_some(s: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    let room = buf.len();
    loop {
        s.readable().await?;
        let mut got = 0;
        let r = s.try_io(Interest::READABLE, || {
            got = rustix::io::read(s, &mut *buf)?;
            if 0 < got && got < room {
                // tokio clears the readiness on `WouldBlock`; `got` is what was read.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => return Ok(got),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            r => return r,
        }
    }
}

/// Writes all of `frame`, waiting while the socket is full.
async fn write_all(s: &UnixStream, mut frame: &[u8]) -> io::Result<()> {
    while !frame.is_empty() {
        s.writable().await?;
        match s.try_write(frame) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => frame = &frame[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn now(response: Response) -> Answer {
    Answer::Now(encode(&response).unwrap_or_default())
}

/// A token bucket: [`RATE_BURST`] requests at once, then [`RATE_PER_SEC`].
struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new() -> Self {
        Self {
            tokens: RATE_BURST,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one now.
    fn try_take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * RATE_PER_SEC)
            .min(RATE_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Returns a token taken for a request that was not served after all.
    fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(RATE_BURST);
    }

    /// Takes one token, sleeping until there is one.
    async fn wait(&mut self) {
        if !self.try_take() {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / RATE_PER_SEC);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
            self.tokens -= 1.0;
        }
    }
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        (UnixStream::from_std(ours).expect("register"), theirs)
    }

    async fn soon(s: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
        tokio::time::timeout(Duration::from_secs(5), read_some(s, buf))
            .await
            .expect("read_some waited although there was something to read")
    }

    #[tokio::test]
    async fn what_a_full_buffer_leaves_is_read_without_new_data() {
        use std::io::Write;
        let (ours, mut theirs) = pair();
        theirs.write_all(&[7u8; 6000]).expect("write");
        let mut buf = [0u8; 4096];
        assert_eq!(soon(&ours, &mut buf).await.expect("read"), 4096);
        // The socket still holds 1904 bytes: its readiness must not have been cleared.
        assert_eq!(soon(&ours, &mut buf).await.expect("read"), 1904);
        // A short read drained it: the next read waits for new data, then returns it.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            theirs.write_all(b"next").expect("write");
            theirs
        });
        assert_eq!(soon(&ours, &mut buf).await.expect("read"), 4);
        assert_eq!(&buf[..4], b"next");
        drop(writer.join().expect("writer"));
        assert_eq!(
            soon(&ours, &mut buf).await.expect("read"),
            0,
            "end of stream"
        );
    }

    #[tokio::test]
    async fn write_all_waits_while_the_socket_is_full() {
        use std::io::Read;
        let (ours, mut theirs) = pair();
        let big = vec![1u8; 4 << 20]; // more than a socket buffer holds
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).expect("read");
            all.len()
        });
        write_all(&ours, &big).await.expect("write");
        drop(ours);
        assert_eq!(reader.join().expect("reader"), big.len());
    }
}
