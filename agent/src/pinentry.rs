//! Asking the user for a PIN through pinentry (the Assuan programs every desktop has:
//! `pinentry-gnome3`, `-qt`, `-curses`, `-tty`).
//!
//! ```text
//! agent                         pinentry
//!   ◄── OK Pleased to meet you
//!   ──► SETTITLE / SETDESC / SETPROMPT / SETERROR …   ◄── OK
//!   ──► GETPIN                  ◄── D <percent-escaped PIN>   ◄── OK   (or ERR … cancelled)
//!   ──► CONFIRM                 ◄── OK | ERR                           (final-try warning)
//!   ──► BYE
//! ```
//!
//! Runs blocking; the agent calls it from `spawn_blocking`. The PIN goes straight into a
//! zeroizing [`Pin`]; the line buffers that carried it are wiped too.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use smime_proto::Pin;
use zeroize::Zeroizing;

/// Why no PIN came back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinentryError {
    /// The user cancelled (or closed the dialog).
    #[error("PIN entry was cancelled")]
    Cancelled,
    /// The program could not be run or spoke something else than Assuan.
    #[error("pinentry {program}: {detail}")]
    Failed {
        /// The program.
        program: String,
        /// What went wrong.
        detail: String,
    },
}

/// What the dialog says.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    /// The long description: token, key, requesting program.
    pub description: String,
    /// A warning shown above the entry (e.g. "this is the last try").
    pub error: Option<String>,
}

struct Conversation {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    program: String,
}

/// Percent-escapes an Assuan parameter (RFC: `%`, CR, LF must be escaped).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\n' => out.push_str("%0A"),
            '\r' => out.push_str("%0D"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Zeroizing<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(b.len()));
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

impl Conversation {
    fn start(program: &Path) -> Result<Self, PinentryError> {
        let name = program.display().to_string();
        let fail = |detail: String| PinentryError::Failed {
            program: name.clone(),
            detail,
        };
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let to = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
        let from = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| fail("no stdout".into()))?,
        );
        let mut c = Self {
            child,
            to,
            from,
            program: name,
        };
        c.expect_ok()?;
        Ok(c)
    }

    fn fail(&self, detail: impl Into<String>) -> PinentryError {
        PinentryError::Failed {
            program: self.program.clone(),
            detail: detail.into(),
        }
    }

    /// Reads lines up to OK/ERR; returns the data lines (`D …`), unescaped.
    fn read_reply(&mut self) -> Result<Result<Zeroizing<Vec<u8>>, String>, PinentryError> {
        let mut data = Zeroizing::new(Vec::new());
        loop {
            let mut line = Zeroizing::new(String::new());
            if self
                .from
                .read_line(&mut line)
                .map_err(|e| self.fail(e.to_string()))?
                == 0
            {
                return Err(self.fail("closed the conversation"));
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l == "OK" || l.starts_with("OK ") {
                return Ok(Ok(data));
            } else if let Some(rest) = l.strip_prefix("ERR ") {
                return Ok(Err(rest.to_owned()));
            } else if let Some(d) = l.strip_prefix("D ") {
                data.extend_from_slice(&unescape(d));
            }
            // Status (S) and comment (#) lines are ignored; INQUIRE is not used here.
        }
    }

    fn expect_ok(&mut self) -> Result<(), PinentryError> {
        match self.read_reply()? {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(format!("refused: {e}"))),
        }
    }

    fn command(&mut self, cmd: &str, arg: &str) -> Result<(), PinentryError> {
        let line = if arg.is_empty() {
            format!("{cmd}\n")
        } else {
            format!("{cmd} {}\n", escape(arg))
        };
        self.to
            .write_all(line.as_bytes())
            .map_err(|e| self.fail(e.to_string()))?;
        self.to.flush().map_err(|e| self.fail(e.to_string()))
    }

    fn set(&mut self, cmd: &str, arg: &str) -> Result<(), PinentryError> {
        self.command(cmd, arg)?;
        self.expect_ok()
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        let _ = self.to.write_all(b"BYE\n");
        let _ = self.child.wait();
    }
}

/// Asks for a PIN. `Ok(pin)`, or [`PinentryError::Cancelled`] when the user declines.
///
/// # Errors
/// When the user cancels or the program fails.
pub fn get_pin(program: &Path, prompt: &Prompt) -> Result<Pin, PinentryError> {
    let mut c = Conversation::start(program)?;
    c.set("SETTITLE", "smime-agent")?;
    c.set("SETDESC", &prompt.description)?;
    c.set("SETPROMPT", "PIN:")?;
    if let Some(e) = &prompt.error {
        c.set("SETERROR", e)?;
    }
    c.command("GETPIN", "")?;
    match c.read_reply()? {
        Ok(bytes) => {
            let pin = std::str::from_utf8(&bytes).map_err(|_| c.fail("the PIN is not UTF-8"))?;
            if pin.is_empty() {
                return Err(PinentryError::Cancelled);
            }
            Ok(Pin::new(pin.to_owned()))
        }
        Err(_) => Err(PinentryError::Cancelled),
    }
}

/// Asks the user to confirm `description` (OK / Cancel).
///
/// # Errors
/// When the program fails.
pub fn confirm(program: &Path, description: &str) -> Result<bool, PinentryError> {
    let mut c = Conversation::start(program)?;
    c.set("SETTITLE", "smime-agent")?;
    c.set("SETDESC", description)?;
    c.command("CONFIRM", "")?;
    Ok(c.read_reply()?.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        let s = "token \"smime-demo\"\n100% sure";
        assert_eq!(escape(s), "token \"smime-demo\"%0A100%25 sure");
        assert_eq!(&*unescape(&escape(s)), s.as_bytes());
        assert_eq!(&*unescape("12%2534"), b"12%34");
    }
}
