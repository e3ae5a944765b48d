//! Output that appears only when complete.
//!
//! Everything a command writes goes to a temporary file first. [`Output::commit`] then
//! renames it into place (same directory, so the rename is atomic) or copies it to
//! standard output. A command that fails drops the [`Output`] and leaves nothing: no
//! partial file, and no unverified plaintext on a pipe.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Where a command's result goes.
#[derive(Debug)]
pub struct Output {
    sink: BufWriter<File>,
    dest: Dest,
}

#[derive(Debug)]
enum Dest {
    /// Renamed over `path` on commit.
    File {
        tmp: tempfile::TempPath,
        path: PathBuf,
    },
    /// Copied to stdout on commit.
    Stdout,
}

impl Output {
    /// Output to `path`, or to standard output for `None` or `-`.
    ///
    /// # Errors
    /// When the temporary file cannot be created (for a file: in its directory).
    pub fn create(path: Option<&Path>) -> io::Result<Self> {
        match path {
            Some(p) if p != Path::new("-") => {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let (file, tmp) = NamedTempFile::new_in(dir)?.into_parts();
                Ok(Self {
                    sink: BufWriter::with_capacity(256 * 1024, file),
                    dest: Dest::File {
                        tmp,
                        path: p.to_owned(),
                    },
                })
            }
            _ => Ok(Self {
                sink: BufWriter::with_capacity(256 * 1024, tempfile::tempfile()?),
                dest: Dest::Stdout,
            }),
        }
    }

    /// Publishes the output: renames the file into place, or copies it to stdout.
    ///
    /// # Errors
    /// When flushing, renaming or copying fails.
    pub fn commit(self) -> io::Result<()> {
        let file = self
            .sink
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all().ok();
        match self.dest {
            Dest::File { tmp, path } => tmp.persist(&path).map_err(|e| e.error),
            Dest::Stdout => {
                let mut file = file;
                file.rewind()?;
                let mut out = io::stdout().lock();
                io::copy(&mut file, &mut out)?;
                out.flush()
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_appears_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut o = Output::create(Some(&path)).unwrap();
        o.write_all(b"partial").unwrap();
        drop(o);
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the temporary file is gone too"
        );
        let mut o = Output::create(Some(&path)).unwrap();
        o.write_all(b"whole").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    }
}
