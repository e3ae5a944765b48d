//! The socket floor: the thinnest server any socket-based agent could be, measured in the
//! same run as the agent. A Unix socket in this process; one thread per connection with its
//! own session (of `Raw`'s logged-in application) that reads a 4-byte big-endian length and
//! the input, does the same C_Sign / C_Decrypt as the raw phase and writes a 4-byte length
//! and the result. No protocol, no framing library, no async, no logging, no limits.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

/// A client's connection and its buffers.
struct Client {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
    /// Length prefix and input, sent with one write.
    req: Vec<u8>,
    resp: Vec<u8>,
}

/// `clients` threads, one connection each, doing `op` back to back through the floor
/// server. The clients send exactly what the raw phase passes to the token.
pub(crate) fn bench(
    env: &Env,
    raw: &Raw,
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
    // Sessions are opened here (`Raw` is not Sync) and handed out one per connection.
    let sessions = (0..clients)
        .map(|_| raw.session())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sessions = Mutex::new(sessions);
    let stop = AtomicBool::new(false);
    let req = [&(input.len() as u32).to_be_bytes()[..], &input].concat();

    let res = std::thread::scope(|s| {
        let (listener, sessions, stop) = (&listener, &sessions, &stop);
        let acceptor = s.spawn(move || -> anyhow::Result<()> {
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
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .and_then(|workers| {
                run_threads(workers, warm, dur, &|c: &mut Client| {
                    c.wr.write_all(&c.req)?;
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
