//! The local certificate store: certificates of correspondents, to encrypt to them by
//! e-mail address.
//!
//! A directory (`$SMIME_CERT_STORE`, else `$XDG_DATA_HOME/smime/certs`, else
//! `~/.local/share/smime/certs`) with one PEM file per certificate, named by the SHA-256
//! fingerprint of its DER. Adding the same certificate twice is a no-op.

use std::path::{Path, PathBuf};

use der::{Decode, Encode, EncodePem, pem::LineEnding};
use x509_cert::Certificate;

use crate::keys::{certificate_emails, hex_fingerprint};

/// Store errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing the directory failed.
    #[error("certificate store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate could not be encoded.
    #[error("certificate encoding: {0}")]
    Der(#[from] der::Error),
    /// No home directory to put the store in.
    #[error("no certificate store: set SMIME_CERT_STORE or HOME")]
    NoLocation,
}

/// A directory of certificates.
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl CertStore {
    /// The store at `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store at its default location.
    ///
    /// # Errors
    /// When neither `$SMIME_CERT_STORE`, `$XDG_DATA_HOME` nor `$HOME` is set.
    pub fn default_location() -> Result<Self, StoreError> {
        let env = |n| {
            std::env::var_os(n)
                .filter(|v: &std::ffi::OsString| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(d) = env("SMIME_CERT_STORE") {
            return Ok(Self::at(d));
        }
        let data = env("XDG_DATA_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".local/share")))
            .ok_or(StoreError::NoLocation)?;
        Ok(Self::at(data.join("smime/certs")))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a certificate; returns whether it was new.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn add(&self, cert: &Certificate) -> Result<bool, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self
            .dir
            .join(format!("{}.pem", hex_fingerprint(&cert.to_der()?)));
        if path.exists() {
            return Ok(false);
        }
        let pem = cert.to_pem(LineEnding::LF)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
        std::io::Write::write_all(&mut tmp, pem.as_bytes()).map_err(io(&path))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(true)
    }

    /// Every certificate in the store. Unreadable files are skipped.
    ///
    /// # Errors
    /// When the directory exists but cannot be read.
    pub fn all(&self) -> Result<Vec<Certificate>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            match Certificate::load_pem_chain(&bytes) {
                Ok(c) => out.extend(c),
                Err(_) => out.extend(Certificate::from_der(&bytes).ok()),
            }
        }
        Ok(out)
    }

    /// Certificates whose SAN or subject e-mail equals `email` (case-insensitive).
    ///
    /// # Errors
    /// As for [`CertStore::all`].
    pub fn find_email(&self, email: &str) -> Result<Vec<Certificate>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|c| {
                certificate_emails(c)
                    .iter()
                    .any(|e| e.eq_ignore_ascii_case(email))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_is_idempotent_and_lookup_by_email_works() {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
            ])
            .arg(dir.path().join("k"))
            .arg("-out")
            .arg(dir.path().join("c.pem"))
            .args([
                "-subj",
                "/CN=Bob",
                "-addext",
                "subjectAltName=email:Bob@Example.org",
                "-days",
                "2",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let cert = Certificate::load_pem_chain(&std::fs::read(dir.path().join("c.pem")).unwrap())
            .unwrap()
            .remove(0);
        let store = CertStore::at(dir.path().join("store"));
        assert!(store.find_email("bob@example.org").unwrap().is_empty());
        assert!(store.add(&cert).unwrap());
        assert!(!store.add(&cert).unwrap());
        assert_eq!(store.all().unwrap().len(), 1);
        assert_eq!(store.find_email("bob@example.ORG").unwrap(), vec![cert]);
        assert!(store.find_email("carol@example.org").unwrap().is_empty());
    }
}
