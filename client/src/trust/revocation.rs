//! Revocation status of a validated path: local CRLs, the CRL cache, OCSP and CRL
//! distribution points, in that order, certificate by certificate.
//!
//! certval does the checking ([`check_revocation_local`]: CRL processing, and OCSP response
//! processing: the responder must be the issuing CA or a delegated responder certificate
//! issued by it with id-kp-OCSPSigning; the signature, the CertID, thisUpdate (5 minutes of
//! clock skew) and nextUpdate are checked). This module fetches what it needs: it asks the
//! OCSP responder (`--ocsp-url`, else the certificate's AIA) with a nonce, checks that the
//! nonce comes back when the responder echoes one, and hands the response to certval as if
//! it had been stapled; it fetches CRLs from http distribution points into the cache.
//!
//! Each stage only runs for the certificates whose status is still undetermined, and the
//! source of each determination is recorded for the verdict.
//!
//! After certval, each stage runs our RFC 5280 §6.3 CRL processing ([`super::crl`]) for
//! the certificates certval left undetermined and for those whose issuer has a delta CRL:
//! that covers what certval's CRL handling lacks (delta and indirect CRLs, CRLs signed by a
//! CRL issuer other than the certificate's issuer key, reason-partitioned CRLs, distribution
//! points named relative to the CRL issuer). A CRL issuer's own path is validated by
//! certval to the same trust anchor, and its revocation status checked the same way.

use std::time::SystemTime;

use certval::ocsp::{BasicOcspResponse, OcspResponse};
use certval::{
    CertificationPath, CertificationPathResults, CertificationPathSettings, CrlSource as _,
    MemoryCrlSource, PDVCertificate, PathValidationStatus, PkiEnvironment,
    RevocationSource as CvSource, SubjectNameAndKey, build_ocsp_request, check_revocation_local,
};
use const_oid::db::rfc5280::ID_AD_OCSP;
use der::Decode as _;
use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, CrlDistributionPoints};

use super::RevocationStatus;
use super::crl::{self, Crl};
use super::fetch::{self, CrlCache};

/// How deep CRL issuers' own paths are checked (a CRL issuer whose CRL is signed by another
/// CRL issuer, ...).
const MAX_CRL_ISSUER_DEPTH: usize = 3;

/// What the CRL processing of [`crl`] needs to judge CRL issuers other than the
/// certificate's issuer.
pub(super) struct Issuers<'a> {
    /// Certificates that may belong to CRL issuers (the message's, `--certs`).
    pub pool: &'a [PDVCertificate],
    /// Candidate certification paths for a certificate.
    pub paths: &'a dyn Fn(&PDVCertificate) -> Vec<CertificationPath>,
    /// Settings for validating a CRL issuer's path: the signer's, without its
    /// extendedKeyUsage and policy requirements.
    pub cps: &'a CertificationPathSettings,
    /// The CRL issuers' certificates whose paths are being checked, outermost first: one
    /// of them may sign the CRL that covers itself when its distribution point names it as
    /// the cRLIssuer (PKITS 4.14.30), and is then accepted as the signer (its path is
    /// validated by the check in progress).
    pub validating: Vec<Vec<u8>>,
}

/// Where revocation data may come from besides the local CRLs.
#[derive(Debug, Clone, Default)]
pub struct Retrieval {
    /// Whether to use the network (OCSP, CRL distribution points) at all.
    pub fetch: bool,
    /// The OCSP responder for every certificate of the path, instead of its AIA.
    pub ocsp_url: Option<String>,
    /// Where fetched CRLs are kept; `None`: not cached.
    pub cache: Option<CrlCache>,
}

/// The revocation status of one certificate of the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRevocation {
    /// Index into the chain (signer first).
    pub index: usize,
    /// Subject of the certificate.
    pub subject: String,
    /// Good, revoked or unknown.
    pub status: RevocationStatus,
    /// What settled it: `crl` (the message's or `--crl`), `crl-cache URL`, `crl URL`,
    /// `ocsp URL`.
    pub source: Option<String>,
    /// For unknown status: what was tried and why it did not settle the status.
    pub notes: Vec<String>,
}

/// What revocation checking found for a path.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub status: RevocationStatus,
    /// One per certificate below the anchor, signer first.
    pub certs: Vec<CertRevocation>,
    /// certval's failure index (anchor = 0) and status, when not good.
    pub failure: Option<(u32, PathValidationStatus)>,
}

/// One run of certval's local check over what has been gathered so far.
enum Run {
    Good,
    Revoked(usize),
    Undetermined,
}

struct Checker<'a> {
    pe: &'a PkiEnvironment,
    cps: &'a CertificationPathSettings,
    crls: &'a MemoryCrlSource,
    path: CertificationPath,
    /// Per position (anchor-side first, target last): the source that settled it.
    settled: Vec<Option<String>>,
    notes: Vec<Vec<String>>,
    retrieval: &'a Retrieval,
    now: SystemTime,
    issuers: &'a Issuers<'a>,
}

impl Checker<'_> {
    fn certs(&self) -> Vec<&CertificateInner<Raw>> {
        self.path
            .intermediates
            .iter()
            .chain(std::iter::once(&self.path.target))
            .map(|c| c.decoded())
            .collect()
    }

    /// Runs certval over the current CRLs and stapled responses, then this module's CRL
    /// processing ([`crl::status`]) for the positions certval left open and for those whose
    /// issuer has a delta CRL (which certval would judge on the base CRL alone); positions
    /// settled that were not settled before get `source(pos)`.
    fn run(&mut self, source: &dyn Fn(usize) -> Option<String>) -> Run {
        // Our CRL decoding is only needed for positions certval leaves open, or when a
        // delta CRL may be among the CRLs (certval ignores them).
        let raw = self.crls.get_all_crls().unwrap_or_default();
        let parse = || -> Vec<Crl> { raw.iter().filter_map(|d| Crl::parse(d)).collect() };
        let mut parsed: Option<Vec<Crl>> = None;
        let owned: Vec<bool> = if raw.iter().any(|d| crl::may_be_delta(d)) {
            let p = parse();
            let o = self
                .certs()
                .iter()
                .map(|c| crl::has_delta_for(&p, c))
                .collect();
            parsed = Some(p);
            o
        } else {
            vec![false; self.settled.len()]
        };
        let mut cpr = CertificationPathResults::new();
        let r = check_revocation_local(self.pe, self.cps, &self.path, &mut cpr);
        let sources = cpr.get_revocation_source().unwrap_or_default();
        // certval's CRL-based answers for the owned positions are set aside (its OCSP
        // answers stand).
        let owned: Vec<bool> = owned
            .iter()
            .enumerate()
            .map(|(pos, o)| {
                *o && !matches!(
                    sources.get(pos),
                    Some(
                        CvSource::StapledOcsp | CvSource::OcspFromAia | CvSource::NoCheckExtension
                    )
                )
            })
            .collect();
        let record = |pos: usize, settled: &mut Vec<Option<String>>| {
            if settled[pos].is_none() {
                settled[pos] = source(pos).or_else(|| Some("crl (message or --crl)".to_owned()));
            }
        };
        match r {
            Ok(()) => {
                for (pos, _) in owned.iter().enumerate().filter(|(_, o)| !**o) {
                    record(pos, &mut self.settled);
                }
            }
            Err(certval::Error::PathValidation(
                PathValidationStatus::CertificateRevoked
                | PathValidationStatus::CertificateRevokedEndEntity
                | PathValidationStatus::CertificateRevokedIntermediateCa,
            )) => {
                let pos = cpr
                    .get_failure_index()
                    .map(|i| (i as usize).saturating_sub(1))
                    .unwrap_or(self.settled.len() - 1)
                    .min(self.settled.len() - 1);
                if !owned[pos] {
                    self.settled[pos] = None;
                    record(pos, &mut self.settled);
                    return Run::Revoked(pos);
                }
                // certval stopped at an entry that a delta CRL may release: the positions
                // before it were settled, the rest are this module's.
                for (p, _) in owned.iter().enumerate().take(pos).filter(|(_, o)| !**o) {
                    record(p, &mut self.settled);
                }
            }
            Err(_) => {
                for (pos, s) in sources.iter().enumerate().take(self.settled.len()) {
                    if !matches!(s, CvSource::None) && !owned[pos] {
                        record(pos, &mut self.settled);
                    }
                }
            }
        }
        if self.open().is_empty() {
            return Run::Good;
        }
        let crls = parsed.unwrap_or_else(parse);
        let toi = self.cps.get_time_of_interest().as_unix_secs();
        let certs: Vec<CertificateInner<Raw>> = self.certs().into_iter().cloned().collect();
        let issuer_ok = |c: &PDVCertificate| self.crl_issuer_ok(c);
        let env = crl::Env {
            pe: self.pe,
            toi,
            crls: &crls,
            anchor: self.path.trust_anchor.decoded(),
            pool: self.issuers.pool,
            issuer_ok: &issuer_ok,
        };
        let mut found: Vec<(usize, Option<String>)> = Vec::new();
        for pos in 0..certs.len() {
            if self.settled[pos].is_some() {
                continue;
            }
            let issuer: &dyn SubjectNameAndKey = if pos == 0 {
                self.path.trust_anchor.decoded()
            } else {
                &certs[pos - 1]
            };
            match crl::status(&env, &certs[pos], issuer) {
                crl::Status::Good => found.push((pos, None)),
                crl::Status::Revoked(_) => {
                    for (p, why) in &found {
                        if why.is_none() {
                            record(*p, &mut self.settled);
                        }
                    }
                    record(pos, &mut self.settled);
                    return Run::Revoked(pos);
                }
                crl::Status::Unknown(why) => found.push((pos, Some(why))),
            }
        }
        for (pos, why) in found {
            match why {
                None => record(pos, &mut self.settled),
                Some(w) => {
                    if !self.notes[pos].contains(&w) {
                        self.notes[pos].push(w);
                    }
                }
            }
        }
        if self.open().is_empty() {
            Run::Good
        } else {
            Run::Undetermined
        }
    }

    /// Whether a CRL issuer's certificate has a valid path (by certval) to the trust anchor
    /// of this path, and a good revocation status.
    fn crl_issuer_ok(&self, c: &PDVCertificate) -> bool {
        if self.issuers.validating.iter().any(|v| v == c.as_bytes()) {
            // Its status is being checked and depends on a CRL it signed: acceptable only
            // when it says so itself, by a distribution point naming it as the cRLIssuer.
            return crl::names_itself_as_crl_issuer(c.decoded());
        }
        if self.issuers.validating.len() >= MAX_CRL_ISSUER_DEPTH {
            return false;
        }
        let anchor = self.path.trust_anchor.as_bytes();
        let mut validating = self.issuers.validating.clone();
        validating.push(c.as_bytes().to_vec());
        let deeper = Issuers {
            pool: self.issuers.pool,
            paths: self.issuers.paths,
            cps: self.issuers.cps,
            validating,
        };
        (self.issuers.paths)(c)
            .iter()
            .filter(|p| p.trust_anchor.as_bytes() == anchor)
            .any(|p| {
                let mut cpr = CertificationPathResults::new();
                self.pe
                    .validate_path(self.pe, self.issuers.cps, p, &mut cpr)
                    .is_ok()
                    && check(
                        self.pe,
                        self.issuers.cps,
                        self.crls,
                        p,
                        self.retrieval,
                        self.now,
                        &deeper,
                    )
                    .status
                        == RevocationStatus::Good
            })
    }

    fn open(&self) -> Vec<usize> {
        (0..self.settled.len())
            .filter(|p| self.settled[*p].is_none())
            .collect()
    }
}

/// Checks the revocation status of every certificate of `path` below the anchor. The
/// local CRLs are already in `crls` (which `pe` reads); fetched CRLs are added to it.
pub(super) fn check(
    pe: &PkiEnvironment,
    cps: &CertificationPathSettings,
    crls: &MemoryCrlSource,
    path: &CertificationPath,
    retrieval: &Retrieval,
    now: SystemTime,
    issuers: &Issuers<'_>,
) -> Outcome {
    let n = path.intermediates.len() + 1;
    let mut ck = Checker {
        pe,
        cps,
        crls,
        path: path.clone(),
        settled: vec![None; n],
        notes: vec![Vec::new(); n],
        retrieval,
        now,
        issuers,
    };
    // 1. The message's CRLs and --crl.
    let mut run = ck.run(&|_| Some("crl (message or --crl)".to_owned()));
    // 2. Cached CRLs of the open certificates' distribution points.
    if matches!(run, Run::Undetermined)
        && let Some(cache) = &retrieval.cache
    {
        let mut used: Vec<(usize, String)> = Vec::new();
        let certs = ck.certs();
        for pos in ck.open() {
            for url in crl_urls(certs[pos]) {
                if let Some(der) = cache.get_fresh(&url, now) {
                    ck.crls.add(&der);
                    used.push((pos, url));
                }
            }
        }
        if !used.is_empty() {
            run = ck.run(&|pos| {
                used.iter()
                    .find(|(p, _)| *p == pos)
                    .map(|(_, u)| format!("crl-cache {u}"))
            });
        }
    }
    // 3. OCSP.
    if matches!(run, Run::Undetermined) && retrieval.fetch {
        let mut asked: Vec<(usize, String)> = Vec::new();
        for pos in ck.open() {
            if let Some(url) = ask_ocsp(&mut ck, pos, retrieval) {
                asked.push((pos, url));
            }
        }
        if !asked.is_empty() {
            run = ck.run(&|pos| {
                asked
                    .iter()
                    .find(|(p, _)| *p == pos)
                    .map(|(_, u)| format!("ocsp {u}"))
            });
            // A response that certval did not accept leaves the position open: say so.
            for (pos, url) in &asked {
                if ck.settled[*pos].is_none() {
                    ck.notes[*pos].push(format!(
                        "OCSP {url}: the response was not acceptable (signer not authorised, signature, certificate ID, or not fresh) or said \"unknown\""
                    ));
                }
            }
            // Unusable responses must not shadow the CRLs of the next stage.
            for pos in ck.open() {
                if let Some(slot) = ck.path.ocsp_responses.get_mut(pos) {
                    *slot = None;
                }
            }
        }
    }
    // 4. CRL distribution points.
    if matches!(run, Run::Undetermined) && retrieval.fetch {
        let mut fetched: Vec<(usize, String)> = Vec::new();
        let certs: Vec<CertificateInner<Raw>> = ck.certs().into_iter().cloned().collect();
        for pos in ck.open() {
            let urls = crl_urls(&certs[pos]);
            if urls.is_empty() {
                ck.notes[pos].push("no http CRL distribution point".to_owned());
            }
            for url in urls {
                match fetch::get_crl(&url) {
                    Ok(der) => {
                        if let Some(cache) = &retrieval.cache {
                            cache.put(&url, &der);
                        }
                        ck.crls.add(&der);
                        fetched.push((pos, url));
                        break;
                    }
                    Err(e) => ck.notes[pos].push(format!("CRL {e}")),
                }
            }
        }
        if !fetched.is_empty() {
            run = ck.run(&|pos| {
                fetched
                    .iter()
                    .find(|(p, _)| *p == pos)
                    .map(|(_, u)| format!("crl {u}"))
            });
            for (pos, url) in &fetched {
                if ck.settled[*pos].is_none() {
                    ck.notes[*pos].push(format!(
                        "CRL {url}: not usable (not signed by the issuer, out of date, or not covering this certificate)"
                    ));
                }
            }
        }
    }
    let open = ck.open();
    let (status, failure) = match run {
        Run::Good => (RevocationStatus::Good, None),
        Run::Revoked(pos) => (
            RevocationStatus::Revoked,
            Some((
                pos as u32 + 1,
                if pos == n - 1 {
                    PathValidationStatus::CertificateRevokedEndEntity
                } else {
                    PathValidationStatus::CertificateRevokedIntermediateCa
                },
            )),
        ),
        Run::Undetermined => (
            RevocationStatus::Unknown,
            Some((
                open.first().map(|p| *p as u32 + 1).unwrap_or(n as u32),
                PathValidationStatus::RevocationStatusNotDetermined,
            )),
        ),
    };
    let certs = ck.certs();
    let revoked = match run {
        Run::Revoked(p) => Some(p),
        _ => None,
    };
    let out = (0..n)
        .rev()
        .map(|pos| CertRevocation {
            index: n - 1 - pos,
            subject: certs[pos].tbs_certificate().subject().to_string(),
            status: if revoked == Some(pos) {
                RevocationStatus::Revoked
            } else if ck.settled[pos].is_some() {
                RevocationStatus::Good
            } else {
                RevocationStatus::Unknown
            },
            source: ck.settled[pos].clone(),
            notes: if ck.settled[pos].is_some() {
                vec![]
            } else {
                ck.notes[pos].clone()
            },
        })
        .collect();
    Outcome {
        status,
        certs: out,
        failure,
    }
}

/// Asks the OCSP responder about position `pos`; on an answer that passes the nonce
/// check, staples it into the path for certval and returns the URL.
fn ask_ocsp(ck: &mut Checker<'_>, pos: usize, retrieval: &Retrieval) -> Option<String> {
    let nonce: [u8; 16] = rand::random();
    let (urls, request) = {
        let certs = ck.certs();
        let target = certs[pos];
        let urls: Vec<String> = match &retrieval.ocsp_url {
            Some(u) => vec![u.clone()],
            None => ocsp_urls(target),
        };
        let issuer: &dyn SubjectNameAndKey = if pos == 0 {
            ck.path.trust_anchor.decoded()
        } else {
            certs[pos - 1]
        };
        (urls, build_ocsp_request(target, issuer, Some(&nonce)))
    };
    if urls.is_empty() {
        ck.notes[pos].push("no OCSP responder (no AIA OCSP URL and no --ocsp-url)".to_owned());
        return None;
    }
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            ck.notes[pos].push(format!("OCSP request: {e:?}"));
            return None;
        }
    };
    for url in urls {
        let answer = fetch::post_ocsp(&url, &request).and_then(|resp| {
            nonce_ok(&resp, &nonce).map_err(|e| format!("{url}: {e}"))?;
            Ok(resp)
        });
        match answer {
            Ok(resp) => {
                if let Some(slot) = ck.path.ocsp_responses.get_mut(pos) {
                    *slot = Some(resp);
                }
                return Some(url);
            }
            Err(e) => ck.notes[pos].push(format!("OCSP {e}")),
        }
    }
    None
}

/// A response that echoes a nonce must echo ours (a responder that ignores nonces, as
/// RFC 6960 allows, passes).
fn nonce_ok(resp: &[u8], sent: &[u8]) -> Result<(), String> {
    let or = OcspResponse::from_der(resp).map_err(|e| format!("not an OCSP response: {e}"))?;
    let Some(rb) = or.response_bytes else {
        return Err(format!(
            "the responder answered {:?} without a response",
            or.response_status
        ));
    };
    let bor = BasicOcspResponse::from_der(rb.response.as_bytes())
        .map_err(|e| format!("not a basic OCSP response: {e}"))?;
    match bor.nonce() {
        Some(n) if n.0.as_bytes() != sent => {
            Err("the response's nonce is not the one sent (replayed response?)".to_owned())
        }
        _ => Ok(()),
    }
}

/// The http OCSP responder URLs of the certificate's authorityInfoAccess.
pub(super) fn ocsp_urls(c: &CertificateInner<Raw>) -> Vec<String> {
    let Ok(Some((_, aia))) = c
        .tbs_certificate()
        .get_extension::<AuthorityInfoAccessSyntax>()
    else {
        return vec![];
    };
    aia.0
        .iter()
        .filter(|ad| ad.access_method == ID_AD_OCSP)
        .filter_map(|ad| match &ad.access_location {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .filter(|u| u.to_ascii_lowercase().starts_with("http://"))
        .collect()
}

/// The http URLs of the certificate's CRL distribution points (full names only).
pub(super) fn crl_urls(c: &CertificateInner<Raw>) -> Vec<String> {
    let Ok(Some((_, dps))) = c.tbs_certificate().get_extension::<CrlDistributionPoints>() else {
        return vec![];
    };
    dps.0
        .iter()
        .filter(|dp| dp.crl_issuer.is_none())
        .filter_map(|dp| match &dp.distribution_point {
            Some(DistributionPointName::FullName(names)) => Some(names),
            _ => None,
        })
        .flatten()
        .filter_map(|n| match n {
            GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
            _ => None,
        })
        .filter(|u| u.to_ascii_lowercase().starts_with("http://"))
        .collect()
}
