//! Fetching revocation data over plain HTTP: OCSP (RFC 6960 appendix A, POST) and CRLs
//! from distribution points (RFC 5280 §4.2.1.13), with an on-disk CRL cache.
//!
//! Only `http:` URLs are followed (OCSP and CRL distribution points are plain HTTP by
//! design: the data is signed). Every request has a timeout and a size limit.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use der::Decode as _;
use sha2::{Digest as _, Sha256};
use x509_cert::certificate::Raw;
use x509_cert::crl::CertificateList;

/// Whole-request timeout (connect, send, receive).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest OCSP response accepted.
const MAX_OCSP: u64 = 64 * 1024;
/// Largest CRL accepted.
const MAX_CRL: u64 = 32 * 1024 * 1024;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(3)
        .user_agent(concat!("smime/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

fn check_url(url: &str) -> Result<(), String> {
    if url.len() > 7 && url[..7].eq_ignore_ascii_case("http://") {
        Ok(())
    } else {
        Err(format!("{url}: only http:// URLs are fetched"))
    }
}

fn read(
    mut resp: ureq::http::Response<ureq::Body>,
    url: &str,
    max: u64,
) -> Result<Vec<u8>, String> {
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    resp.body_mut()
        .with_config()
        .limit(max)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))
}

/// POSTs a DER OCSP request to `url` and returns the response body.
///
/// # Errors
/// A one-line reason: not http, unreachable, timeout, HTTP error status, too large.
pub fn post_ocsp(url: &str, request: &[u8]) -> Result<Vec<u8>, String> {
    check_url(url)?;
    let resp = agent()
        .post(url)
        .header("Content-Type", "application/ocsp-request")
        .header("Accept", "application/ocsp-response")
        .send(request)
        .map_err(|e| format!("{url}: {e}"))?;
    read(resp, url, MAX_OCSP)
}

/// GETs the CRL at `url` (DER, or PEM as some servers publish).
///
/// # Errors
/// As [`post_ocsp`], and when the body is not a CRL.
pub fn get_crl(url: &str) -> Result<Vec<u8>, String> {
    check_url(url)?;
    let resp = agent().get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let body = read(resp, url, MAX_CRL)?;
    let der = if body.first() == Some(&0x30) {
        body
    } else {
        pem_crl(&body).ok_or_else(|| format!("{url}: not a CRL"))?
    };
    CertificateList::<Raw>::from_der(&der).map_err(|e| format!("{url}: not a CRL: {e}"))?;
    Ok(der)
}

fn pem_crl(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("-----BEGIN X509 CRL-----")? + "-----BEGIN X509 CRL-----".len();
    let end = text[start..].find("-----END X509 CRL-----")? + start;
    crate::cms::pem::decode(&text.as_bytes()[start..end]).ok()
}

/// The CRL cache: one file per distribution point URL, named by the URL's SHA-256,
/// reused until the CRL's nextUpdate.
#[derive(Debug, Clone)]
pub struct CrlCache {
    dir: Option<PathBuf>,
}

impl CrlCache {
    /// The cache at `$SMIME_CRL_CACHE`, else `$XDG_CACHE_HOME/smime/crls`, else
    /// `~/.cache/smime/crls`; without any of these, nothing is cached.
    pub fn default_location() -> Self {
        let dir = std::env::var_os("SMIME_CRL_CACHE")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .filter(|d| !d.is_empty())
                    .map(|d| PathBuf::from(d).join("smime/crls"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|d| PathBuf::from(d).join(".cache/smime/crls"))
            });
        CrlCache { dir }
    }

    /// A cache in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        CrlCache {
            dir: Some(dir.into()),
        }
    }

    fn file(&self, url: &str) -> Option<PathBuf> {
        let name = hex::encode(Sha256::digest(url.as_bytes()));
        self.dir.as_ref().map(|d| d.join(format!("{name}.crl")))
    }

    /// The cached CRL for `url`, if there is one whose nextUpdate is after `now`.
    pub fn get_fresh(&self, url: &str, now: SystemTime) -> Option<Vec<u8>> {
        let der = std::fs::read(self.file(url)?).ok()?;
        fresh(&der, now).then_some(der)
    }

    /// Stores `der` as the CRL of `url` (atomically; failures are ignored: the cache is
    /// an optimisation).
    pub fn put(&self, url: &str, der: &[u8]) {
        let (Some(file), Some(dir)) = (self.file(url), self.dir.as_deref()) else {
            return;
        };
        let _ = write_atomic(dir, &file, der);
    }
}

fn write_atomic(dir: &Path, file: &Path, der: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, der)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// Whether the CRL has a nextUpdate after `now` (a CRL without nextUpdate is never
/// reused from the cache).
pub fn fresh(der: &[u8], now: SystemTime) -> bool {
    CertificateList::<Raw>::from_der(der)
        .ok()
        .and_then(|c| c.tbs_cert_list.next_update)
        .is_some_and(|t| t.to_system_time() > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_fetched() {
        assert!(post_ocsp("https://example.invalid/", b"x").is_err());
        assert!(get_crl("ldap://example.invalid/cn=x").is_err());
        assert!(check_url("HTTP://127.0.0.1:1/").is_ok());
    }

    #[test]
    fn unreachable_responder_is_an_error_not_a_hang() {
        // Port 1 on loopback: connection refused at once.
        let e = post_ocsp("http://127.0.0.1:1/", b"x").unwrap_err();
        assert!(e.contains("127.0.0.1:1"), "{e}");
    }

    #[test]
    fn cache_ignores_garbage_and_keys_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CrlCache::at(dir.path());
        cache.put("http://a/", b"not a crl");
        assert!(cache.get_fresh("http://a/", SystemTime::now()).is_none());
        assert_ne!(cache.file("http://a/"), cache.file("http://b/"));
    }
}
