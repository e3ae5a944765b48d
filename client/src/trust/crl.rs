//! RFC 5280 §6.3 CRL processing, for the certificates whose status certval cannot settle.
//!
//! Path validation and ordinary CRL checking stay certval's. certval 0.2.0-rc.1 has no
//! support for:
//!
//! * CRLs signed with another key than the one that signed the certificate (§6.3.3 (f)):
//!   a separate CRL-signing certificate, or the CA's other key around a key rollover
//!   (self-issued certificates). certval verifies a CRL only with the certificate issuer's
//!   key;
//! * indirect CRLs: a distribution point's `cRLIssuer`, the IssuingDistributionPoint's
//!   `indirectCRL`, and the `certificateIssuer` entry extension (§5.3.3) that scopes the
//!   entries after it (certval discards such CRLs);
//! * delta CRLs (§5.2.4, §6.3.3 (c), (h), (i)): `deltaCRLIndicator`, base CRL numbers, and
//!   `removeFromCRL` releasing a `certificateHold`;
//! * distribution points named relative to the CRL issuer (`nameRelativeToCRLIssuer`);
//! * CRLs partitioned by reason: the `onlySomeReasons` and distribution point `reasons` masks,
//!   accumulated over several CRLs until all reasons are covered (§6.3.3 (d), (e), (l)).
//!
//! [`status`] runs the whole §6.3.3 algorithm for one certificate over the CRLs at hand (the
//! local CRL cache of step (a) is simply the available CRLs; nothing is fetched here). It
//! is used for the certificates certval leaves undetermined, and for those of an issuer
//! with a delta CRL, which certval would judge on the base CRL alone.
//!
//! A CRL issuer other than the certificate issuer's own key must have a certificate among
//! those available, with keyUsage cRLSign, whose path validates (by certval) to the same
//! trust anchor and whose own revocation status is good: the caller supplies that check
//! ([`Env::issuer_ok`]).
//!
//! Deviations, all on the cautious side or harmless: a CRL without nextUpdate is not used;
//! a CRL issuer certificate without keyUsage is not accepted (as certval does); when a delta
//! CRL is announced (freshestCRL) but none is available, the complete CRL is used alone
//! (what certval does for every CRL).

use certval::{
    DeferDecodeSigned, PDVCertificate, PkiEnvironment, SubjectNameAndKey, compare_names,
};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS, ID_CE_CERTIFICATE_ISSUER,
    ID_CE_CRL_DISTRIBUTION_POINTS, ID_CE_CRL_NUMBER, ID_CE_CRL_REASONS, ID_CE_DELTA_CRL_INDICATOR,
    ID_CE_FRESHEST_CRL, ID_CE_HOLD_INSTRUCTION_CODE, ID_CE_INVALIDITY_DATE,
    ID_CE_ISSUING_DISTRIBUTION_POINT,
};
use der::Decode as _;
use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::dp::{DistributionPoint, IssuingDistributionPoint, Reasons};
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName, GeneralNames};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BaseCrlNumber, BasicConstraints, CrlDistributionPoints, CrlNumber,
    CrlReason, KeyUsages,
};
use x509_cert::name::{Name, RdnSequence};
use x509_cert::serial_number::SerialNumber;

/// The reasons a CRL can cover (§6.3.2: all-reasons; `unused` is not one).
fn all_reasons() -> der::flagset::FlagSet<Reasons> {
    Reasons::KeyCompromise
        | Reasons::CaCompromise
        | Reasons::AffiliationChanged
        | Reasons::Superseded
        | Reasons::CessationOfOperation
        | Reasons::CertificateHold
        | Reasons::PrivilegeWithdrawn
        | Reasons::AaCompromise
}

type ReasonFlags = der::flagset::FlagSet<Reasons>;

/// A CRL, decoded once, with what §6.3.3 asks of it.
pub(super) struct Crl {
    list: CertificateList<Raw>,
    signed: DeferDecodeSigned,
    idp: Option<IssuingDistributionPoint>,
    /// The IssuingDistributionPoint as encoded (a delta CRL's scope must be the same).
    idp_der: Option<Vec<u8>>,
    /// cRLNumber, big-endian without leading zeros.
    number: Option<Vec<u8>>,
    /// deltaCRLIndicator (BaseCRLNumber): this is a delta CRL.
    delta_base: Option<Vec<u8>>,
    akid: Option<Vec<u8>>,
    /// Why the CRL must not be used at all (an unrecognised critical extension, §5.2, §5.3).
    unusable: Option<String>,
}

impl Crl {
    /// Decodes a CRL; `None` if it does not decode.
    pub(super) fn parse(der: &[u8]) -> Option<Crl> {
        let list = CertificateList::<Raw>::from_der(der).ok()?;
        let signed = DeferDecodeSigned::from_der(der).ok()?;
        let mut crl = Crl {
            list,
            signed,
            idp: None,
            idp_der: None,
            number: None,
            delta_base: None,
            akid: None,
            unusable: None,
        };
        let exts = crl.list.tbs_cert_list.crl_extensions.clone();
        for e in exts.iter().flatten() {
            let v = e.extn_value.as_bytes();
            match e.extn_id {
                ID_CE_ISSUING_DISTRIBUTION_POINT => match IssuingDistributionPoint::from_der(v) {
                    Ok(idp) => {
                        crl.idp = Some(idp);
                        crl.idp_der = Some(v.to_vec());
                    }
                    Err(_) => {
                        crl.unusable = Some("its issuingDistributionPoint does not decode".into())
                    }
                },
                ID_CE_CRL_NUMBER => {
                    crl.number = CrlNumber::from_der(v).ok().map(|n| trim(n.0.as_bytes()))
                }
                ID_CE_DELTA_CRL_INDICATOR => match BaseCrlNumber::from_der(v) {
                    Ok(n) => crl.delta_base = Some(trim(n.0.as_bytes())),
                    Err(_) => crl.unusable = Some("its deltaCRLIndicator does not decode".into()),
                },
                ID_CE_AUTHORITY_KEY_IDENTIFIER => {
                    crl.akid = AuthorityKeyIdentifier::from_der(v)
                        .ok()
                        .and_then(|a| a.key_identifier)
                        .map(|k| k.as_bytes().to_vec());
                }
                ID_CE_FRESHEST_CRL => {}
                other if e.critical => {
                    crl.unusable = Some(format!("unrecognised critical CRL extension {other}"));
                }
                _ => {}
            }
        }
        const ENTRY_KNOWN: [ObjectIdentifier; 4] = [
            ID_CE_CRL_REASONS,
            ID_CE_INVALIDITY_DATE,
            ID_CE_HOLD_INSTRUCTION_CODE,
            ID_CE_CERTIFICATE_ISSUER,
        ];
        let bad_entry = crl
            .list
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .flat_map(|rc| rc.crl_entry_extensions.iter().flatten())
            .find(|e| e.critical && !ENTRY_KNOWN.contains(&e.extn_id))
            .map(|e| e.extn_id);
        if let Some(oid) = bad_entry {
            crl.unusable = Some(format!("unrecognised critical CRL entry extension {oid}"));
        }
        Some(crl)
    }

    fn issuer(&self) -> &Name {
        &self.list.tbs_cert_list.issuer
    }

    /// Whether the CRL is current at `toi` (thisUpdate <= toi <= nextUpdate).
    fn current(&self, toi: u64) -> bool {
        let tbs = &self.list.tbs_cert_list;
        tbs.this_update.to_unix_duration().as_secs() <= toi
            && tbs
                .next_update
                .is_some_and(|n| n.to_unix_duration().as_secs() >= toi)
    }

    fn indirect(&self) -> bool {
        self.idp.as_ref().is_some_and(|i| i.indirect_crl)
    }

    /// The entry for the certificate `serial` of `cert_issuer`, if listed: its reason
    /// (unspecified when it has none). Entries belong to the CRL issuer until a
    /// certificateIssuer extension says otherwise; that issuer then holds for the entries
    /// that follow (§5.3.3).
    fn entry(&self, serial: &SerialNumber<Raw>, cert_issuer: &Name) -> Option<CrlReason> {
        let mut entry_issuer = self.issuer().clone();
        for rc in self
            .list
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
        {
            let exts = rc.crl_entry_extensions.iter().flatten();
            let mut reason = CrlReason::Unspecified;
            for e in exts {
                match e.extn_id {
                    ID_CE_CERTIFICATE_ISSUER => {
                        if let Some(n) = GeneralNames::from_der(e.extn_value.as_bytes())
                            .ok()
                            .and_then(|g| directory_names(&g).next().cloned())
                        {
                            entry_issuer = n;
                        }
                    }
                    ID_CE_CRL_REASONS => {
                        if let Ok(r) = CrlReason::from_der(e.extn_value.as_bytes()) {
                            reason = r;
                        }
                    }
                    _ => {}
                }
            }
            if rc.serial_number.as_bytes() == serial.as_bytes()
                && compare_names(&entry_issuer, cert_issuer)
            {
                return Some(reason);
            }
        }
        None
    }
}

/// A big-endian unsigned number without its leading zero bytes.
fn trim(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

/// Compares two trimmed big-endian unsigned numbers.
fn cmp_num(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn directory_names(g: &GeneralNames) -> impl Iterator<Item = &Name> {
    g.iter().filter_map(|n| match n {
        GeneralName::DirectoryName(d) => Some(d),
        _ => None,
    })
}

/// The names of a distribution point; a name relative to the CRL issuer is appended to
/// `base` (§4.2.1.13).
fn dp_names(dpn: &DistributionPointName, base: &Name) -> Vec<GeneralName> {
    match dpn {
        DistributionPointName::FullName(names) => names.clone(),
        DistributionPointName::NameRelativeToCRLIssuer(rdn) => {
            let mut seq: RdnSequence = base.clone().into();
            seq.push(rdn.clone());
            vec![GeneralName::DirectoryName(Name::hazmat_from_rdn_sequence(
                seq,
            ))]
        }
    }
}

fn same_general_name(a: &GeneralName, b: &GeneralName) -> bool {
    match (a, b) {
        (GeneralName::DirectoryName(x), GeneralName::DirectoryName(y)) => compare_names(x, y),
        _ => a == b,
    }
}

fn any_common(a: &[GeneralName], b: &[GeneralName]) -> bool {
    a.iter().any(|x| b.iter().any(|y| same_general_name(x, y)))
}

/// The revocation status of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Status {
    /// Every reason is covered by CRLs that do not list it.
    Good,
    /// Listed (certificateHold included), with the reason.
    Revoked(CrlReason),
    /// Not settled; why.
    Unknown(String),
}

/// What [`status`] works with.
pub(super) struct Env<'a> {
    pub pe: &'a PkiEnvironment,
    /// The time of interest (Unix seconds).
    pub toi: u64,
    /// The available CRLs.
    pub crls: &'a [Crl],
    /// The trust anchor's name and key, when it may sign CRLs itself.
    pub anchor: &'a dyn SubjectNameAndKey,
    /// Certificates that may belong to a CRL issuer (the message's, `--certs`).
    pub pool: &'a [PDVCertificate],
    /// Whether a CRL issuer's certificate from `pool` has a valid path to the same trust
    /// anchor, with a good revocation status.
    pub issuer_ok: &'a dyn Fn(&PDVCertificate) -> bool,
}

/// Whether the certificate is a CA (basicConstraints cA).
fn is_ca(cert: &CertificateInner<Raw>) -> bool {
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id == ID_CE_BASIC_CONSTRAINTS)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|b| b.ca)
}

fn distribution_points(cert: &CertificateInner<Raw>) -> Vec<DistributionPoint> {
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id == ID_CE_CRL_DISTRIBUTION_POINTS)
        .and_then(|e| CrlDistributionPoints::from_der(e.extn_value.as_bytes()).ok())
        .map(|d| d.0)
        .unwrap_or_default()
}

/// RFC 5280 §6.3.3 for `cert`, issued by `issuer`, over the CRLs of `env`.
pub(super) fn status(
    env: &Env<'_>,
    cert: &CertificateInner<Raw>,
    issuer: &dyn SubjectNameAndKey,
) -> Status {
    let cert_issuer = cert.tbs_certificate().issuer();
    let mut dps = distribution_points(cert);
    // Last, the CRLs issued by the certificate issuer, as if from a distribution point
    // named by the issuer's name, with neither reasons nor cRLIssuer.
    dps.push(DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::DirectoryName(cert_issuer.clone()),
        ])),
        reasons: None,
        crl_issuer: None,
    });
    let ca = is_ca(cert);
    let mut mask = ReasonFlags::default();
    let mut why: Vec<String> = Vec::new();
    for dp in &dps {
        for crl in env.crls.iter().filter(|c| c.delta_base.is_none()) {
            if mask == all_reasons() {
                return Status::Good;
            }
            match apply(env, cert, issuer, ca, dp, crl, mask) {
                Ok((interim, None)) => mask |= interim,
                Ok((_, Some(reason))) => return Status::Revoked(reason),
                Err(Some(w)) => {
                    let w = format!("CRL of \"{}\": {w}", crl.issuer());
                    if !why.contains(&w) {
                        why.push(w);
                    }
                }
                Err(None) => {}
            }
        }
    }
    if mask == all_reasons() {
        return Status::Good;
    }
    if mask.is_empty() && why.is_empty() {
        return Status::Unknown("no CRL in scope".to_owned());
    }
    if !mask.is_empty() {
        why.push(format!(
            "the CRLs in scope cover only some reasons ({:?})",
            mask
        ));
    }
    Status::Unknown(why.join("; "))
}

/// Steps (b) to (k) for one distribution point and one complete CRL: the reasons the CRL
/// covered and, if the certificate is listed, the reason. `Err(None)`: out of scope (not
/// worth a note); `Err(Some(why))`: in scope but unusable.
fn apply(
    env: &Env<'_>,
    cert: &CertificateInner<Raw>,
    issuer: &dyn SubjectNameAndKey,
    ca: bool,
    dp: &DistributionPoint,
    crl: &Crl,
    mask: ReasonFlags,
) -> Result<(ReasonFlags, Option<CrlReason>), Option<String>> {
    let cert_issuer = cert.tbs_certificate().issuer();
    // (b)(1) The CRL issuer.
    match &dp.crl_issuer {
        Some(ci) => {
            if !directory_names(ci).any(|n| compare_names(n, crl.issuer())) {
                return Err(None);
            }
            if !crl.indirect() {
                return Err(Some("named as cRLIssuer, but not an indirect CRL".into()));
            }
        }
        None => {
            if !compare_names(crl.issuer(), cert_issuer) {
                return Err(None);
            }
        }
    }
    // (b)(2) The scope.
    if let Some(idp) = &crl.idp {
        if let Some(idp_dpn) = &idp.distribution_point {
            let idp_names = dp_names(idp_dpn, crl.issuer());
            let matches = match &dp.distribution_point {
                Some(dpn) => {
                    let base = dp
                        .crl_issuer
                        .as_ref()
                        .and_then(|ci| directory_names(ci).next())
                        .unwrap_or(cert_issuer);
                    any_common(&idp_names, &dp_names(dpn, base))
                }
                None => dp
                    .crl_issuer
                    .as_ref()
                    .is_some_and(|ci| any_common(&idp_names, ci)),
            };
            if !matches {
                return Err(None);
            }
        }
        if (idp.only_contains_user_certs && ca)
            || (idp.only_contains_ca_certs && !ca)
            || idp.only_contains_attribute_certs
        {
            return Err(None);
        }
    }
    if let Some(u) = &crl.unusable {
        return Err(Some(u.clone()));
    }
    // (d), (e) The reasons.
    let idp_reasons = crl
        .idp
        .as_ref()
        .and_then(|i| i.only_some_reasons)
        .unwrap_or_else(all_reasons);
    let dp_reasons = dp.reasons.unwrap_or_else(all_reasons);
    let interim = idp_reasons & dp_reasons & all_reasons();
    if (interim & !mask).is_empty() {
        return Err(None);
    }
    if crl.list.signature_algorithm != crl.list.tbs_cert_list.signature {
        return Err(Some(
            "signatureAlgorithm differs from the signature in tbsCertList".into(),
        ));
    }
    // (f), (g) The CRL issuer's key, and the signature.
    let Some(key) = crl_key(env, cert_issuer, issuer, crl) else {
        return Err(Some(
            "its signature does not verify with the key of a valid CRL issuer (with cRLSign)"
                .into(),
        ));
    };
    // (c), (h) A delta CRL for it, current, signed with the same key.
    let delta = deltas(env, crl)
        .into_iter()
        .find(|d| verifies(env.pe, d, key));
    if !crl.current(env.toi) && delta.is_none() {
        return Err(Some("out of date (thisUpdate/nextUpdate)".into()));
    }
    // (i), (j), (k) The entries.
    let serial = cert.tbs_certificate().serial_number();
    let mut reason = delta.and_then(|d| d.entry(serial, cert_issuer));
    if reason.is_none() {
        reason = crl.entry(serial, cert_issuer);
    }
    if reason == Some(CrlReason::RemoveFromCRL) {
        reason = None;
    }
    Ok((interim, reason))
}

fn verifies(pe: &PkiEnvironment, crl: &Crl, key: &spki::SubjectPublicKeyInfoOwned) -> bool {
    pe.verify_signature_message(
        pe,
        &crl.signed.tbs_field,
        &crl.signed.signature,
        &crl.signed.signature_algorithm,
        key,
    )
    .is_ok()
}

/// Whether a key usage allows signing CRLs (an anchor may have none).
fn crl_sign_ok(k: &dyn SubjectNameAndKey) -> bool {
    match k.key_usage() {
        Some(ku) => ku.0.contains(KeyUsages::CRLSign),
        None => k.is_implicitly_trusted(),
    }
}

/// The key that signed `crl`, from a valid CRL issuer: the certificate issuer (for its own
/// CRLs), the trust anchor, or a certificate of the pool named as the CRL issuer, with
/// cRLSign, that [`Env::issuer_ok`] accepts.
fn crl_key<'e>(
    env: &'e Env<'_>,
    cert_issuer: &Name,
    issuer: &'e dyn SubjectNameAndKey,
    crl: &Crl,
) -> Option<&'e spki::SubjectPublicKeyInfoOwned> {
    let named = |k: &dyn SubjectNameAndKey| {
        k.subject_name()
            .is_ok_and(|n| compare_names(n, crl.issuer()))
    };
    if compare_names(crl.issuer(), cert_issuer)
        && named(issuer)
        && crl_sign_ok(issuer)
        && verifies(env.pe, crl, issuer.spki())
    {
        return Some(issuer.spki());
    }
    if named(env.anchor) && crl_sign_ok(env.anchor) && verifies(env.pe, crl, env.anchor.spki()) {
        return Some(env.anchor.spki());
    }
    env.pool.iter().find_map(|c| {
        let d = c.decoded();
        (named(d)
            && d.key_usage()
                .is_some_and(|ku| ku.0.contains(KeyUsages::CRLSign))
            && verifies(env.pe, crl, d.spki())
            && (env.issuer_ok)(c))
        .then(|| d.spki())
    })
}

/// The delta CRLs that may update `base` (§5.2.4): same issuer, same scope, same
/// authority key, base number at most the complete CRL's number, own number greater; and
/// current, usable. Newest first.
fn deltas<'c>(env: &'c Env<'_>, base: &Crl) -> Vec<&'c Crl> {
    let Some(number) = &base.number else {
        return Vec::new();
    };
    let mut out: Vec<&Crl> = env
        .crls
        .iter()
        .filter(|d| {
            d.delta_base.as_ref().is_some_and(|b| {
                cmp_num(number, b).is_ge()
                    && d.number
                        .as_ref()
                        .is_some_and(|n| cmp_num(n, number).is_gt())
            }) && compare_names(d.issuer(), base.issuer())
                && d.idp_der == base.idp_der
                && (base.akid.is_none() || d.akid == base.akid)
                && d.unusable.is_none()
                && d.current(env.toi)
        })
        .collect();
    out.sort_by(|a, b| {
        cmp_num(
            b.number.as_deref().unwrap_or_default(),
            a.number.as_deref().unwrap_or_default(),
        )
    });
    out
}

/// Whether one of the certificate's distribution points names the certificate's own
/// subject as its cRLIssuer: its status is on a CRL it signs itself.
pub(super) fn names_itself_as_crl_issuer(cert: &CertificateInner<Raw>) -> bool {
    let subject = cert.tbs_certificate().subject();
    distribution_points(cert).iter().any(|dp| {
        dp.crl_issuer
            .as_ref()
            .is_some_and(|ci| directory_names(ci).any(|n| compare_names(n, subject)))
    })
}

/// Whether the DER of a CRL may hold a deltaCRLIndicator (its OID's encoding occurs):
/// a cheap test before decoding.
pub(super) fn may_be_delta(der: &[u8]) -> bool {
    const OID: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x1b];
    der.windows(OID.len()).any(|w| w == OID)
}

/// Whether a delta CRL of the certificate's issuer is among `crls`: certval ignores delta
/// CRLs, so such certificates are judged here.
pub(super) fn has_delta_for(crls: &[Crl], cert: &CertificateInner<Raw>) -> bool {
    let issuer = cert.tbs_certificate().issuer();
    crls.iter()
        .any(|c| c.delta_base.is_some() && compare_names(c.issuer(), issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_compare_as_unsigned_integers() {
        assert!(cmp_num(&trim(&[0, 2]), &trim(&[1])).is_gt());
        assert!(cmp_num(&trim(&[1, 0]), &trim(&[0xff])).is_gt());
        assert!(cmp_num(&trim(&[5]), &trim(&[0, 0, 5])).is_eq());
        assert!(cmp_num(&trim(&[]), &trim(&[1])).is_lt());
    }

    #[test]
    fn delta_indicator_is_spotted_in_the_der() {
        let ext = x509_cert::ext::Extension {
            extn_id: ID_CE_DELTA_CRL_INDICATOR,
            critical: true,
            extn_value: der::asn1::OctetString::new(vec![2, 1, 5]).unwrap(),
        };
        use der::Encode as _;
        assert!(may_be_delta(&ext.to_der().unwrap()));
        assert!(!may_be_delta(&[0x06, 0x03, 0x55, 0x1d, 0x14, 0x1b]));
    }
}
