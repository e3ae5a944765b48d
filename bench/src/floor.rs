//! The socket floor: the thinnest server any socket-based agent could be, measured in the
//! same run as the agent. A Unix socket in this process; one thread per connection with its
//! own session (of `Raw`'s logged-in application) that reads a 4-byte big-endian length and
//! the input, does the same C_Sign / C_Decrypt as the raw phase and writes a 4-byte length
//! and the result. No protocol, no framing library, no async, no logging, no limits.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use crate::measure::{Stats, run_threads};
use crate::raw::{Raw, check, private_op};
use crate::{Env, Op};

/// Largest request body the server takes (an RSA-2048 ciphertext is 256 bytes).
const MAX_BODY: usize = 4096;
/// A client waiting longer than this for a reply fails instead of hanging the run.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the floor server serves its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// One blocking thread and session per connection.
    Threads,
    /// [`EVENT_THREADS`] threads (one session each, as the agent's default) over one epoll
    /// of all connections; a thread that finds nothing looks again for up to
    /// [`EVENT_SPIN`] (yielding) before it blocks, while no other thread looks.
    Events,
}

/// Server threads of [`Server::Events`]: the agent's default sessions per token.
const EVENT_THREADS: usize = 2;
/// How long an idle [`Server::Events`] thread keeps looking: the agent workers' time.
const EVENT_SPIN: Duration = Duration::from_micros(250);

/// A client's connection and its buffers.
struct Client {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
    /// Length prefix and input, sent with one write.
    req: Vec<u8>,
    resp: Vec<u8>,
    /// Looks for the reply before sleeping, as the agent's clients do.
    spin: smime::agent::Spin,
}

/// `clients` threads, one connection each, doing `op` back to back through the floor
/// server. The clients send exactly what the raw phase passes to the token.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bench(
    env: &Env,
    raw: &Raw,
    server: Server,
    op: Op,
    clients: usize,
    ct: &[u8],
    warm: Duration,
    dur: Duration,
) -> anyhow::Result<Stats> {
    let path = env.work.join("floor.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {path:?}"))?;
    let (key, input) = raw.input(op, ct);
    // Sessions are opened here (`Raw` is not Sync) and handed out one per server thread.
    let threads = match server {
        Server::Threads => clients,
        Server::Events => EVENT_THREADS,
    };
    let sessions = (0..threads)
        .map(|_| raw.session())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sessions = Mutex::new(sessions);
    let stop = AtomicBool::new(false);
    let req = [&(input.len() as u32).to_be_bytes()[..], &input].concat();

    let res = std::thread::scope(|s| {
        let (listener, sessions, stop) = (&listener, &sessions, &stop);
        let acceptor = s.spawn(move || -> anyhow::Result<()> {
            if server == Server::Events {
                let conns = (0..clients)
                    .map(|_| listener.accept().map(|(c, _)| c))
                    .collect::<Result<Vec<_>, _>>()
                    .context("accept")?;
                let sessions =
                    std::mem::take(&mut *sessions.lock().map_err(|_| anyhow!("poisoned"))?);
                return serve_events(&conns, sessions, key, op, stop);
            }
            let mut conns = vec![];
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let stream = stream.context("accept")?;
                let session = sessions
                    .lock()
                    .map_err(|_| anyhow!("poisoned"))?
                    .pop()
                    .ok_or_else(|| anyhow!("more connections than clients"))?;
                conns.push(s.spawn(move || serve(&stream, &session, key, op)));
            }
            for c in conns {
                c.join()
                    .unwrap_or_else(|_| Err(anyhow!("server thread panicked")))?;
            }
            Ok(())
        });
        let stats = (0..clients)
            .map(|_| {
                let wr = UnixStream::connect(&path).context("connecting to the floor server")?;
                wr.set_read_timeout(Some(REPLY_TIMEOUT))?;
                Ok(Client {
                    rd: BufReader::new(wr.try_clone()?),
                    wr,
                    req: req.clone(),
                    resp: vec![],
                    spin: smime::agent::Spin::default(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .and_then(|workers| {
                run_threads(workers, warm, dur, &|c: &mut Client| {
                    c.wr.write_all(&c.req)?;
                    if c.rd.buffer().is_empty() {
                        c.spin.wait(&c.wr, Some(REPLY_TIMEOUT), true)?;
                    }
                    let mut len = [0u8; 4];
                    c.rd.read_exact(&mut len).context("reading the reply")?;
                    c.resp.resize(u32::from_be_bytes(len) as usize, 0);
                    c.rd.read_exact(&mut c.resp).context("reading the reply")?;
                    check(op, &c.resp)
                })
            });
        // The clients are gone (their server threads see EOF); wake the acceptor.
        stop.store(true, Ordering::Relaxed);
        let woke = UnixStream::connect(&path);
        let served = match woke {
            Ok(_) => acceptor
                .join()
                .unwrap_or_else(|_| Err(anyhow!("acceptor panicked"))),
            Err(e) => Err(anyhow!("waking the acceptor: {e}")),
        };
        // A server error is the cause of a client's error: report it first.
        served.context("floor server").and(stats)
    });
    let _ = std::fs::remove_file(&path);
    res
}

/// One connection: length-prefixed request in, private-key operation, length-prefixed
/// result out, until the client hangs up.
fn serve(stream: &UnixStream, session: &Session, key: ObjectHandle, op: Op) -> anyhow::Result<()> {
    let mut rd = BufReader::new(stream);
    let mut wr = stream;
    let mut body = vec![];
    let mut out = vec![];
    loop {
        if rd.buffer().is_empty() {
            smime::agent::AgentStream::wait_readable(stream, None)?;
        }
        let mut len = [0u8; 4];
        match rd.read_exact(&mut len) {
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        let n = u32::from_be_bytes(len) as usize;
        ensure!(n <= MAX_BODY, "request of {n} bytes");
        body.resize(n, 0);
        rd.read_exact(&mut body)?;
        let result = private_op(session, key, op, &body)?;
        out.clear();
        out.extend_from_slice(&(result.len() as u32).to_be_bytes());
        out.extend_from_slice(&result);
        wr.write_all(&out)?;
    }
}

/// [`Server::Events`]: `sessions.len()` threads over one epoll of `conns` (each connection
/// armed for one event at a time), until `stop`.
fn serve_events(
    conns: &[UnixStream],
    sessions: Vec<Session>,
    key: ObjectHandle,
    op: Op,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    use rustix::event::epoll;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for (i, c) in conns.iter().enumerate() {
        c.set_nonblocking(true)?;
        epoll::add(&ep, c, epoll::EventData::new_u64(i as u64), ARMED)?;
    }
    let looking = AtomicBool::new(false);
    let events = EventServer {
        ep: &ep,
        conns,
        key,
        op,
        stop,
        looking: &looking,
    };
    std::thread::scope(|s| {
        let threads: Vec<_> = sessions
            .into_iter()
            .map(|session| s.spawn(move || events.serve(&session)))
            .collect();
        threads.into_iter().try_for_each(|t| {
            t.join()
                .unwrap_or_else(|_| Err(anyhow!("server thread panicked")))
        })
    })
}

/// A connection waits for one request at a time.
const ARMED: rustix::event::epoll::EventFlags =
    rustix::event::epoll::EventFlags::IN.union(rustix::event::epoll::EventFlags::ONESHOT);

/// What the threads of [`Server::Events`] share.
#[derive(Clone, Copy)]
struct EventServer<'a> {
    ep: &'a std::os::fd::OwnedFd,
    conns: &'a [UnixStream],
    key: ObjectHandle,
    op: Op,
    stop: &'a AtomicBool,
    /// Whether a thread is looking for work without blocking (at most one does).
    looking: &'a AtomicBool,
}

impl EventServer<'_> {
    /// One thread: takes ready connections and answers their request, until `stop`.
    fn serve(self, session: &Session) -> anyhow::Result<()> {
        use rustix::event::{Timespec, epoll};
        const NOW: Timespec = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // Short, so that `stop` is seen soon.
        const BLOCK: Timespec = Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        let mut events = Vec::with_capacity(16);
        let (mut buf, mut out) = (vec![0u8; 4 + MAX_BODY], vec![]);
        let wait = |events: &mut Vec<_>, t: &Timespec| {
            events.clear();
            epoll::wait(self.ep, rustix::buffer::spare_capacity(events), Some(t))
        };
        while !self.stop.load(Ordering::Relaxed) {
            // At most one thread looks without blocking, for up to EVENT_SPIN.
            let mut found = 0;
            if self
                .looking
                .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                let start = Instant::now();
                loop {
                    found = wait(&mut events, &NOW)?;
                    if found > 0 || start.elapsed() >= EVENT_SPIN {
                        break;
                    }
                    std::thread::yield_now();
                }
                self.looking.store(false, Ordering::Relaxed);
            }
            if found == 0 {
                wait(&mut events, &BLOCK)?;
            }
            for ev in &events {
                let i = ev.data.u64();
                let c = &self.conns[usize::try_from(i)?];
                if self.answer(c, session, &mut buf, &mut out)? {
                    epoll::modify(self.ep, c, epoll::EventData::new_u64(i), ARMED)?;
                }
            }
        }
        Ok(())
    }

    /// Answers the request waiting on `c`, if any; false when the client hung up.
    fn answer(
        &self,
        mut c: &UnixStream,
        session: &Session,
        buf: &mut [u8],
        out: &mut Vec<u8>,
    ) -> anyhow::Result<bool> {
        // The clients send a request with one write and wait for its reply: one read
        // takes all of it.
        let n = match c.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        let len = u32::from_be_bytes(buf[..4].try_into()?) as usize;
        ensure!(
            n == 4 + len,
            "a request in pieces ({n} of {} bytes)",
            4 + len
        );
        let result = private_op(session, self.key, self.op, &buf[4..n])?;
        out.clear();
        out.extend_from_slice(&(result.len() as u32).to_be_bytes());
        out.extend_from_slice(&result);
        c.write_all(out)?;
        Ok(true)
    }
}
