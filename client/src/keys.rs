//! The agent's keys as a user sees them, and key selection.

use std::fmt::Write as _;

use const_oid::db::rfc3280;
use der::Encode;
use serde::Serialize;
use sha2::{Digest, Sha256};
use smime_proto::{KeyAlgorithm, KeyInfo, Operation};
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// A key with what its certificate says. Serializes to the `smime keys --json` object;
/// scripts depend on the field names.
#[derive(Debug, Clone, Serialize)]
pub struct KeySummary {
    /// Stable key id (token serial + CKA_ID).
    pub id: String,
    /// Token label.
    pub token: String,
    /// Key label.
    pub label: String,
    /// `rsa-2048`, `ec-p256`, `ec-p384`.
    pub algorithm: String,
    /// Certificate subject (RFC 4514), empty without certificate.
    pub subject: String,
    /// First e-mail address of the certificate (SAN rfc822Name, else emailAddress).
    pub email: Option<String>,
    /// All e-mail addresses of the certificate.
    pub emails: Vec<String>,
    /// Certificate validity start, RFC 3339.
    pub not_before: Option<String>,
    /// Certificate validity end, RFC 3339.
    pub not_after: Option<String>,
    /// SHA-256 fingerprint of the certificate DER, lowercase hex.
    pub sha256: Option<String>,
    /// Operations the key allows.
    pub operations: Vec<String>,
    /// The parsed certificate.
    #[serde(skip)]
    pub certificate: Option<Certificate>,
    /// What the agent reported.
    #[serde(skip)]
    pub info: KeyInfo,
}

/// The e-mail addresses of a certificate: SAN rfc822Name entries, then emailAddress in
/// the subject.
pub fn certificate_emails(cert: &Certificate) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.tbs_certificate().get_extension::<SubjectAltName>() {
        for n in san.1.0 {
            if let GeneralName::Rfc822Name(e) = n {
                out.push(e.to_string());
            }
        }
    }
    for atv in cert.tbs_certificate().subject().iter() {
        if atv.oid == rfc3280::EMAIL_ADDRESS
            && let Ok(s) = der::asn1::Ia5StringRef::try_from(&atv.value)
        {
            out.push(s.to_string());
        }
    }
    out.dedup();
    out
}

/// Hex with no separators.
pub fn hex_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl KeySummary {
    /// Parses the certificate the agent sent with the key.
    pub fn new(info: KeyInfo) -> Self {
        // A certificate dated before 1970 decodes from a copy (`trust::pre1970`); its
        // fingerprint and dates come from the encoding as sent.
        let der = info.certificate.as_deref().map(|c| c.as_slice());
        let cert = der.and_then(|c| crate::trust::pre1970::decode(c).ok());
        let algorithm = match info.algorithm {
            KeyAlgorithm::Rsa => format!("rsa-{}", info.bits),
            KeyAlgorithm::EcP256 => "ec-p256".into(),
            KeyAlgorithm::EcP384 => "ec-p384".into(),
            _ => "unknown".into(),
        };
        let (subject, emails, not_before, not_after, sha256) = match (&cert, der) {
            (Some(c), Some(der)) => {
                let v = c.tbs_certificate().validity();
                let [nb, na] = crate::trust::pre1970::pre1970_validity(der);
                let time = |pre: Option<std::time::SystemTime>, t: &x509_cert::time::Time| {
                    pre.map_or_else(|| t.to_date_time().to_string(), crate::cms::fmt_time)
                };
                (
                    c.tbs_certificate().subject().to_string(),
                    certificate_emails(c),
                    Some(time(nb, &v.not_before)),
                    Some(time(na, &v.not_after)),
                    Some(hex_fingerprint(der)),
                )
            }
            _ => (String::new(), vec![], None, None, None),
        };
        let operations = info
            .operations
            .iter()
            .map(|o| match o {
                Operation::Sign => "sign",
                Operation::Decrypt => "decrypt",
                Operation::Ecdh => "ecdh",
                _ => "unknown",
            })
            .map(str::to_owned)
            .collect();
        Self {
            id: info.id.0.clone(),
            token: info.token.clone(),
            label: info.label.clone(),
            algorithm,
            subject,
            email: emails.first().cloned(),
            emails,
            not_before,
            not_after,
            sha256,
            operations,
            certificate: cert,
            info,
        }
    }

    /// A summary of a certificate alone (no key behind it), for verdicts.
    /// A summary of the certificate encoded as `der` (its fingerprint is that of `der`).
    pub fn from_der(der: &[u8]) -> Self {
        Self::new(KeyInfo {
            id: smime_proto::KeyId(String::new()),
            token: String::new(),
            token_serial: String::new(),
            label: String::new(),
            algorithm: KeyAlgorithm::Unknown,
            bits: 0,
            certificate: Some(serde_bytes::ByteBuf::from(der.to_vec())),
            operations: vec![],
            always_authenticate: false,
        })
    }

    pub fn from_certificate(cert: &Certificate) -> Self {
        Self::new(KeyInfo {
            id: smime_proto::KeyId(String::new()),
            token: String::new(),
            token_serial: String::new(),
            label: String::new(),
            algorithm: KeyAlgorithm::Unknown,
            bits: 0,
            certificate: cert.to_der().ok().map(serde_bytes::ByteBuf::from),
            operations: vec![],
            always_authenticate: false,
        })
    }

    /// Whether `sel` names this key: its id, label, an e-mail address of its certificate,
    /// or its certificate fingerprint (hex, colons allowed, at least 8 digits of prefix).
    pub fn matches(&self, sel: &str) -> bool {
        if sel == self.id || sel == self.label {
            return true;
        }
        if sel.contains('@') {
            let addr = sel
                .rsplit_once('<')
                .map_or(sel, |(_, a)| a.trim_end_matches('>'))
                .trim();
            return self.emails.iter().any(|e| e.eq_ignore_ascii_case(addr));
        }
        let hexsel: String = sel
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        hexsel.len() >= 8
            && hexsel.chars().all(|c| c.is_ascii_hexdigit())
            && self
                .sha256
                .as_deref()
                .is_some_and(|f| f.starts_with(&hexsel))
    }

    /// Whether the key has a certificate and can unwrap content keys (RSA decryption or
    /// ECDH): what encryption to "self" and decryption need.
    pub fn can_decrypt(&self) -> bool {
        self.certificate.is_some()
            && (self.info.operations.contains(&Operation::Decrypt)
                || self.info.operations.contains(&Operation::Ecdh))
    }

    /// One line for humans.
    pub fn line(&self) -> String {
        format!(
            "{}  {}  {} [{}] {}{}",
            self.id,
            self.algorithm,
            self.label,
            self.token,
            self.subject,
            self.email
                .as_deref()
                .map(|e| format!(" <{e}>"))
                .unwrap_or_default()
        )
    }
}

/// Why a selector did not pick exactly one key.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Nothing matched.
    #[error("no key matches {sel:?}; available keys:\n{}", .available.join("\n"))]
    NotFound {
        /// The selector.
        sel: String,
        /// One line per usable key.
        available: Vec<String>,
    },
    /// More than one key matched.
    #[error("{sel:?} matches several keys; use one of the ids:\n{}", .candidates.join("\n"))]
    Ambiguous {
        /// The selector.
        sel: String,
        /// One line per matching key.
        candidates: Vec<String>,
    },
}

/// Picks the one key `sel` names among those that `usable` accepts.
///
/// # Errors
/// When none or several keys match; the error lists them.
pub fn select<'a>(
    keys: &'a [KeySummary],
    sel: &str,
    usable: impl Fn(&KeySummary) -> bool,
) -> Result<&'a KeySummary, SelectError> {
    let usable: Vec<&KeySummary> = keys.iter().filter(|k| usable(k)).collect();
    // An exact id wins over everything else.
    if let Some(k) = usable.iter().find(|k| k.id == sel) {
        return Ok(k);
    }
    let found: Vec<&&KeySummary> = usable.iter().filter(|k| k.matches(sel)).collect();
    match found.as_slice() {
        [k] => Ok(k),
        [] => Err(SelectError::NotFound {
            sel: sel.into(),
            available: usable.iter().map(|k| k.line()).collect(),
        }),
        many => Err(SelectError::Ambiguous {
            sel: sel.into(),
            candidates: many.iter().map(|k| k.line()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smime_proto::KeyId;

    fn key(id: &str, label: &str, emails: &[&str], fp: &str) -> KeySummary {
        let info = KeyInfo {
            id: KeyId(id.into()),
            token: "t".into(),
            token_serial: "s".into(),
            label: label.into(),
            algorithm: KeyAlgorithm::Rsa,
            bits: 2048,
            certificate: None,
            operations: vec![Operation::Sign],
            always_authenticate: false,
        };
        let mut k = KeySummary::new(info);
        k.emails = emails.iter().map(|e| (*e).to_owned()).collect();
        k.sha256 = Some(fp.into());
        k
    }

    #[test]
    fn selectors() {
        let keys = vec![
            key(
                "s:01",
                "alice-rsa",
                &["alice@example.org"],
                "aabbccddeeff0011",
            ),
            key(
                "s:02",
                "alice-ec",
                &["alice@example.org"],
                "1122334455667788",
            ),
            key("s:03", "bob-rsa", &["bob@example.org"], "99aabbccddeeff00"),
        ];
        let any = |_: &KeySummary| true;
        assert_eq!(select(&keys, "s:02", any).unwrap().label, "alice-ec");
        assert_eq!(select(&keys, "bob-rsa", any).unwrap().id, "s:03");
        assert_eq!(select(&keys, "Bob@Example.org", any).unwrap().id, "s:03");
        assert_eq!(
            select(&keys, "Bob Example <bob@example.org>", any)
                .unwrap()
                .id,
            "s:03"
        );
        assert_eq!(select(&keys, "AA:BB:CC:DD", any).unwrap().id, "s:01");
        let err = select(&keys, "alice@example.org", any)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alice-rsa") && err.contains("alice-ec") && !err.contains("bob"),
            "{err}"
        );
        assert!(matches!(
            select(&keys, "carol", any),
            Err(SelectError::NotFound { .. })
        ));
        assert!(
            matches!(
                select(&keys, "aabb", any),
                Err(SelectError::NotFound { .. })
            ),
            "short prefixes do not count"
        );
    }
}
