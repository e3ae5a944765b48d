//! The control file named by `P11_COUNT_CONTROL`: change detection and parsing.
//!
//! The file is `stat`ed on every intercepted call and re-read only when its
//! [`Stamp`] changes, so an unchanged file costs one `stat(2)` per call.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cryptoki_sys::CK_RV;

/// The fault knobs, as last parsed. `Default` is "no faults" (also used when
/// the file does not exist).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Knobs {
    /// `removed=1`: the token is out of the reader.
    pub removed: bool,
    /// `delay_ms=N`: sleep before C_Sign/C_Decrypt/C_DeriveKey (and the
    /// *Final variants).
    pub delay_ms: u64,
    /// `always_authenticate=ID,...`: CKA_IDs of private keys that act as if
    /// CKA_ALWAYS_AUTHENTICATE were TRUE.
    pub always_authenticate: Vec<Vec<u8>>,
    /// `fail_login_once=RV`: the rv the next C_Login returns.
    pub fail_login_once: Option<CK_RV>,
    /// `delay_token=LABEL`: `delay_ms` applies only to this token (by label).
    pub delay_token: Option<String>,
    /// `protected_auth_path=1`: the token reports CKF_PROTECTED_AUTHENTICATION_PATH and
    /// takes `C_Login` with no PIN (a PIN pad).
    pub protected_auth_path: bool,
}

/// One version of the file. Any difference means "the file changed". The
/// inode catches write-then-rename, the size catches most in-place rewrites
/// that land within one mtime tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// Path of the marker that records "`fail_login_once` fired for this
    /// version of the control file" for all processes: `<control>.spent-<stamp>`.
    fn marker(&self, control: &Path) -> std::path::PathBuf {
        let mut name = control.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".spent-{:x}-{:x}-{:x}-{:x}.{:x}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1
        ));
        control.with_file_name(name)
    }
}

/// Claims the one-shot `fail_login_once` of the control file version `stamp`,
/// across processes: the first caller creates the marker file (`O_EXCL`) and
/// gets `true`, every later caller (in any process) gets `false`. Markers of
/// older versions are removed. If no marker can be created (read-only
/// directory), the claim falls back to being per process.
pub(crate) fn claim_once(control: &Path, stamp: &Stamp) -> bool {
    let marker = stamp.marker(control);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return false,
        Err(e) => {
            eprintln!("p11-count: cannot create {}: {e}", marker.display());
            return true;
        }
    }
    // Best effort: drop markers of earlier versions of the file.
    let (Some(dir), Some(own)) = (marker.parent(), marker.file_name()) else {
        return true;
    };
    let mut prefix = control.file_name().unwrap_or_default().to_os_string();
    prefix.push(".spent-");
    let prefix = prefix.to_string_lossy().into_owned();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name != own && name.to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    true
}

/// The file's current stamp, or `None` if it does not exist (or cannot be stat'ed).
pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let md = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
    })
}

/// Reads and parses the file; a missing or unreadable file means no faults.
pub(crate) fn load(path: &Path) -> Knobs {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, |msg| {
            eprintln!("p11-count: {}: {msg}", path.display());
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Knobs::default(),
        Err(e) => {
            eprintln!("p11-count: cannot read {}: {e}", path.display());
            Knobs::default()
        }
    }
}

/// Parses `key=value` lines. `#` starts a comment (whole line or trailing);
/// blank lines are ignored; the last occurrence of a key wins. Bad lines are
/// reported through `warn` and otherwise ignored.
pub(crate) fn parse(text: &str, mut warn: impl FnMut(String)) -> Knobs {
    let mut k = Knobs::default();
    for (no, raw) in text.lines().enumerate() {
        let no = no + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            warn(format!("line {no}: expected key=value, got {line:?}"));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let ok = match key {
            "removed" => parse_bool(value).map(|b| k.removed = b),
            "delay_ms" => value.parse::<u64>().ok().map(|n| k.delay_ms = n),
            "delay_token" => {
                k.delay_token = Some(value.to_owned()).filter(|v| !v.is_empty());
                Some(())
            }
            "protected_auth_path" => parse_bool(value).map(|b| k.protected_auth_path = b),
            "always_authenticate" => value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(parse_hex_bytes)
                .collect::<Option<Vec<_>>>()
                .map(|ids| k.always_authenticate = ids),
            "fail_login_once" => {
                if value.is_empty() {
                    k.fail_login_once = None;
                    Some(())
                } else {
                    parse_rv(value).map(|rv| k.fail_login_once = Some(rv))
                }
            }
            _ => {
                warn(format!("line {no}: unknown key {key:?}"));
                continue;
            }
        };
        if ok.is_none() {
            warn(format!("line {no}: bad value for {key}: {value:?}"));
        }
    }
    k
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn strip_0x(s: &str) -> &str {
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

/// `a0`, `0xA0`, `0x000000a0` -> 0xa0.
fn parse_rv(s: &str) -> Option<CK_RV> {
    let h = strip_0x(s);
    if h.is_empty() {
        return None;
    }
    CK_RV::from_str_radix(h, 16).ok()
}

/// `01`, `0x0102`, `01:02` -> bytes. An odd number of digits is an error.
fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = strip_0x(s).bytes().filter(|b| *b != b':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> (Knobs, Vec<String>) {
        let mut w = Vec::new();
        let k = parse(text, |m| w.push(m));
        (k, w)
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(p(""), (Knobs::default(), vec![]));
        assert_eq!(p("# only a comment\n\n"), (Knobs::default(), vec![]));
    }

    #[test]
    fn all_knobs() {
        let (k, w) = p(concat!(
            "# test\n",
            "removed = 1\n",
            "delay_ms=250   # touch\n",
            "always_authenticate=01, 0xA0B1 ,02:03\n",
            "fail_login_once=0xa4\n",
            "delay_token=tok\n",
            "protected_auth_path=1\n",
        ));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            k,
            Knobs {
                removed: true,
                delay_ms: 250,
                always_authenticate: vec![vec![1], vec![0xa0, 0xb1], vec![2, 3]],
                fail_login_once: Some(0xa4),
                delay_token: Some("tok".into()),
                protected_auth_path: true,
            }
        );
    }

    #[test]
    fn last_wins_and_bad_lines_warn() {
        let (k, w) = p("removed=1\nremoved=0\nbogus\nfoo=1\ndelay_ms=x\nalways_authenticate=1\n");
        assert!(!k.removed);
        assert_eq!(k.delay_ms, 0);
        assert!(k.always_authenticate.is_empty());
        assert_eq!(w.len(), 4, "{w:?}");
    }

    #[test]
    fn rv_forms() {
        assert_eq!(parse_rv("a0"), Some(0xa0));
        assert_eq!(parse_rv("0XA0"), Some(0xa0));
        assert_eq!(parse_rv("0x"), None);
        assert_eq!(parse_rv("zz"), None);
    }
}
