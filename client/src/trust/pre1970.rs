//! Certificates dated before 1970 (NIST PKITS 4.2.3: notBefore 1950, UTCTime `500101120100Z`).
//!
//! RFC 5280 §4.1.2.5.1 gives UTCTime years 50–99 to the 1900s, but `der` 0.8's `DateTime`
//! starts at 1970, so `x509-cert` refuses to decode such a certificate at all. Nothing in
//! path validation needs more than "before every time we can be asked about", so:
//!
//! * for *decoding*, a copy of the certificate gets each pre-1970 validity time replaced
//!   by 1970-01-01T00:00:00Z, in the same encoding and length ([`decodable`]);
//! * for *signatures*, the original encoding stays authoritative: [`Originals`] maps the
//!   copy's TBSCertificate back to the original one, and [`Verifier`], the only signature
//!   callback of the validation environment, verifies every certificate signature over the
//!   original bytes. A tampered original fails, and a signature that happens to fit the
//!   copy's TBSCertificate does not count. Two originals that differ only in pre-1970 dates
//!   make the same copy; with both at hand neither signature is taken.
//!
//! The validity semantics are unchanged for every time `SystemTime` can express after the
//! epoch: a notBefore before 1970 is before all of them either way; a notAfter before 1970
//! becomes the epoch itself, so the certificate has expired at every later instant, as it
//! had. Only the two validity times are touched, never another field.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certval::{PkiEnvironment, VerifySignatureMessage, verify_signature_message_rust_crypto};
use der::Decode as _;
use der::asn1::BitString;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;

use crate::cms::ber::{TAG_SEQUENCE, Tlv};

const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// 1970-01-01T00:00:00Z in each encoding's DER form (RFC 5280 §4.1.2.5.1/.2).
const EPOCH_UTC: &[u8; 13] = b"700101000000Z";
const EPOCH_GENERALIZED: &[u8; 15] = b"19700101000000Z";

/// A validity time as found: its tag and the range of its contents in the certificate.
#[derive(Debug, Clone)]
struct TimeField {
    tag: u8,
    range: std::ops::Range<usize>,
}

/// The notBefore and notAfter fields of a DER certificate.
fn validity_fields(der: &[u8]) -> Option<[TimeField; 2]> {
    let cert = Tlv::parse_exact(der).ok()?.expect(TAG_SEQUENCE, "").ok()?;
    let tbs = *cert.children().ok()?.first()?;
    let fields = tbs.children().ok()?;
    // [0] version is optional; then serialNumber, signature, issuer, validity.
    let skip = usize::from(fields.first()?.tag == 0xA0);
    let validity = fields.get(skip + 3)?.expect(TAG_SEQUENCE, "").ok()?;
    let times = validity.children().ok()?;
    let field = |t: &Tlv<'_>| {
        let start = (t.value.as_ptr() as usize).checked_sub(der.as_ptr() as usize)?;
        Some(TimeField {
            tag: t.tag,
            range: start..start + t.value.len(),
        })
    };
    match times.as_slice() {
        [nb, na] => Some([field(nb)?, field(na)?]),
        _ => None,
    }
}

/// The year of a DER UTCTime (`YYMMDDhhmmssZ`) or GeneralizedTime (`YYYYMMDDhhmmssZ`).
fn year(f: &TimeField, contents: &[u8]) -> Option<u32> {
    let digits = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    };
    match (f.tag, contents.len()) {
        // RFC 5280 §4.1.2.5.1: YY >= 50 is 19YY, YY < 50 is 20YY.
        (TAG_UTC_TIME, 13) => {
            digits(&contents[..2]).map(|y| if y >= 50 { 1900 + y } else { 2000 + y })
        }
        (TAG_GENERALIZED_TIME, 15) => digits(&contents[..4]),
        _ => None,
    }
}

/// A copy of `der` with each validity time before 1970 replaced by 1970-01-01T00:00:00Z
/// (same encoding, same length), or `None` if it has none.
pub(crate) fn rewrite(der: &[u8]) -> Option<Vec<u8>> {
    let fields = validity_fields(der)?;
    let mut out = der.to_vec();
    let mut changed = false;
    for f in &fields {
        let contents = der.get(f.range.clone())?;
        if year(f, contents).is_none_or(|y| y >= 1970) {
            continue;
        }
        let epoch: &[u8] = match f.tag {
            TAG_UTC_TIME => EPOCH_UTC,
            _ => EPOCH_GENERALIZED,
        };
        out.get_mut(f.range.clone())?.copy_from_slice(epoch);
        changed = true;
    }
    changed.then_some(out)
}

/// The encoding to decode `der` from: `der` itself, or, for a certificate that only fails
/// to decode because of a pre-1970 validity time, the [`rewrite`]n copy.
pub(crate) fn decodable(der: &[u8]) -> Option<Vec<u8>> {
    if Certificate::from_der(der).is_ok() {
        return None;
    }
    rewrite(der).filter(|copy| Certificate::from_der(copy).is_ok())
}

/// Decodes a certificate, from the [`rewrite`]n copy if it is dated before 1970.
pub(crate) fn decode(der: &[u8]) -> der::Result<Certificate> {
    Certificate::from_der(der).or_else(|e| match decodable(der) {
        Some(copy) => Certificate::from_der(&copy),
        None => Err(e),
    })
}

/// The true notBefore / notAfter of `der` where they are before 1970 (which
/// `x509_cert::time::Time` cannot hold), for showing them as they are.
pub(crate) fn pre1970_validity(der: &[u8]) -> [Option<SystemTime>; 2] {
    let Some(fields) = validity_fields(der) else {
        return [None, None];
    };
    fields.map(|f| {
        let c = der.get(f.range.clone())?;
        let y = year(&f, c)?;
        if y >= 1970 {
            return None;
        }
        let rest = &c[c.len() - 11..c.len() - 1]; // MMDDhhmmss
        let n = |i: usize| -> Option<u64> {
            let s = rest.get(i..i + 2)?;
            s.iter()
                .all(u8::is_ascii_digit)
                .then(|| u64::from(s[0] - b'0') * 10 + u64::from(s[1] - b'0'))
        };
        let days_before = days_from_civil(1970, 1, 1) - days_from_civil(i64::from(y), n(0)?, n(2)?);
        let secs_into_day = n(4)? * 3600 + n(6)? * 60 + n(8)?;
        let before = u64::try_from(days_before).ok()? * 86_400 - secs_into_day;
        UNIX_EPOCH.checked_sub(Duration::from_secs(before))
    })
}

/// Days since 0000-03-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let (m, d) = (m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe
}

/// RFC 3339 text (`YYYY-MM-DDThh:mm:ssZ`, like `der::DateTime`'s) of a time before the
/// epoch, which `der::DateTime` cannot hold; `None` for later times.
pub(crate) fn fmt_before_epoch(t: SystemTime) -> Option<String> {
    let before = UNIX_EPOCH.duration_since(t).ok()?.as_secs();
    let secs = -i64::try_from(before).ok()?;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // H. Hinnant's `civil_from_days`, from days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// The TBSCertificate element of a DER certificate, as encoded.
fn tbs(der: &[u8]) -> Option<&[u8]> {
    let cert = Tlv::parse_exact(der).ok()?;
    Some(cert.children().ok()?.first()?.raw)
}

/// What is kept of an original certificate whose rewritten copy goes to the validator.
#[derive(Debug, Clone)]
struct Original {
    /// Its TBSCertificate as encoded: what the issuer signed.
    tbs: Vec<u8>,
    /// Its true validity times, where before 1970.
    validity: [Option<SystemTime>; 2],
}

/// Rewritten copies' TBSCertificates, mapped to what is kept of their originals; `None`
/// when two different originals make the same copy (they differ only in pre-1970 dates):
/// then neither signature is taken.
#[derive(Debug, Clone, Default)]
pub(crate) struct Originals(HashMap<Vec<u8>, Option<Original>>);

impl Originals {
    /// The encoding to hand the validator for `der`: `der`, or its decodable copy, whose
    /// TBSCertificate is then remembered with the original's.
    pub(crate) fn prepare(&mut self, der: &[u8]) -> Vec<u8> {
        let Some(copy) = decodable(der) else {
            return der.to_vec();
        };
        if let (Some(t_copy), Some(t_orig)) = (tbs(&copy), tbs(der)) {
            let original = Original {
                tbs: t_orig.to_vec(),
                validity: pre1970_validity(der),
            };
            self.0
                .entry(t_copy.to_vec())
                .and_modify(|o| {
                    if o.as_ref().is_some_and(|o| o.tbs != original.tbs) {
                        *o = None;
                    }
                })
                .or_insert(Some(original));
        }
        copy
    }

    /// The true notBefore / notAfter (where before 1970) of the certificate whose
    /// rewritten copy is `copy_der`.
    pub(crate) fn true_validity(&self, copy_der: &[u8]) -> [Option<SystemTime>; 2] {
        tbs(copy_der)
            .and_then(|t| self.0.get(t))
            .and_then(Option::as_ref)
            .map_or([None, None], |o| o.validity)
    }
}

/// The validation environment's signature callback: RustCrypto (via certval) and DSA
/// ([`super::dsa::CertvalDsa`]), over the original TBSCertificate of a rewritten copy.
pub(crate) struct Verifier {
    pub(crate) originals: Originals,
    pub(crate) dsa: super::dsa::CertvalDsa,
}

impl VerifySignatureMessage for Verifier {
    fn verify_signature_message(
        &self,
        pe: &PkiEnvironment,
        message_to_verify: &[u8],
        signature: &BitString,
        signature_alg: &AlgorithmIdentifierOwned,
        spki: &SubjectPublicKeyInfoOwned,
    ) -> certval::Result<()> {
        let message = match self.originals.0.get(message_to_verify) {
            None => message_to_verify,
            Some(Some(o)) => o.tbs.as_slice(),
            Some(None) => {
                return Err(certval::Error::PathValidation(
                    certval::PathValidationStatus::SignatureVerificationFailure,
                ));
            }
        };
        verify_signature_message_rust_crypto(pe, message, signature, signature_alg, spki).or_else(
            |e| match self
                .dsa
                .verify_signature_message(pe, message, signature, signature_alg, spki)
            {
                Err(certval::Error::Unrecognized) => Err(e),
                r => r,
            },
        )
    }
}
