//! `smime card`: provisioning a PIV card (YubiKey or another PIV card) directly over
//! PC/SC with the `yubikey` crate, without the agent.
//!
//! The card is shared: connections are in shared mode, and every connection ends with
//! `disconnect(LeaveCard)` ([`Card`]'s `Drop`), never a reset (a dropped `YubiKey` or a
//! `reconnect()` resets the card, which logs out every other application, the agent's
//! OpenSC session included). A wrong PIN or PUK is reported with the tries left, never
//! retried.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use der::asn1::Ia5String;
use der::pem::LineEnding;
use der::referenced::OwnedToRef;
use der::{Encode, EncodePem};
use serde::Serialize;
use spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder, RequestBuilder};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use yubikey::certificate::yubikey_signer::{KeyType, Rsa2048, Signer, YubiRsa};
use yubikey::certificate::{CertInfo, Certificate as CardCert};
use yubikey::piv::{self, AlgorithmId, ManagementSlotId, SlotAlgorithmId, SlotId};
use yubikey::{MgmAlgorithmId, MgmKey, PinPolicy, TouchPolicy, YubiKey};
use zeroize::Zeroizing;

use super::Failure;
use crate::cli::{
    CardAlg, CardArgs, CardCommand, CardGenerateArgs, CardPinPolicy, CardTouchPolicy, MgmtAlg,
};
use crate::output::Output;

/// The key slots `smime card` works with: 9a, 9c, 9d, 9e and the retired 82-95.
const KEY_SLOTS: [u8; 24] = [
    0x9a, 0x9c, 0x9d, 0x9e, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d,
    0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95,
];

/// What to do about a locked PIN.
const UNBLOCK_FIX: &str = "unblock it with the PUK: smime card unblock";

pub(crate) fn card(args: &CardArgs) -> Result<(), Failure> {
    match &args.command {
        CardCommand::List { json } => list(args, *json),
        CardCommand::Generate(g) => generate(args, g),
        CardCommand::ImportCert { slot, cert } => import_cert(args, *slot, cert),
        CardCommand::Attest { slot, output } => attest(args, *slot, output.as_deref()),
        CardCommand::ChangePin => change_pin(args),
        CardCommand::ChangePuk => change_puk(args),
        CardCommand::Unblock => unblock(args),
        CardCommand::SetMgmtKey {
            protected,
            generate,
            algorithm,
        } => set_mgmt_key(args, *protected, *generate, *algorithm),
    }
}

// ---------------------------------------------------------------------------------------
// The connection

/// An open PIV card. Dropping it disconnects with `LeaveCard`: the card is never reset.
struct Card {
    yk: Option<YubiKey>,
    reader: String,
    /// False once the card answered GET METADATA with "not supported".
    metadata: bool,
}

impl Card {
    fn yk(&mut self) -> &mut YubiKey {
        self.yk
            .as_mut()
            .unwrap_or_else(|| unreachable!("a Card holds its YubiKey until dropped"))
    }

    fn serial(&self) -> u32 {
        self.yk.as_ref().map_or(0, |y| y.serial().0)
    }

    /// GET METADATA (YubiKey 5.3+) for `slot`; asked of a card without it only once.
    fn metadata(&mut self, slot: SlotId) -> Option<piv::SlotMetadata> {
        if !self.metadata {
            return None;
        }
        match piv::metadata(self.yk(), slot) {
            Ok(m) => Some(m),
            Err(yubikey::Error::NotSupported) => {
                self.metadata = false;
                None
            }
            Err(_) => None,
        }
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        if let Some(yk) = self.yk.take() {
            leave(yk);
        }
    }
}

/// Disconnects without resetting the card. Should that fail, the handle is leaked rather
/// than dropped (a drop would reset the card); pcscd releases it when we exit.
fn leave(yk: YubiKey) {
    if let Err((yk, _)) = yk.disconnect(pcsc::Disposition::LeaveCard) {
        std::mem::forget(yk);
    }
}

/// The PC/SC error inside a `yubikey` error, if any.
fn pcsc_error(e: &yubikey::Error) -> Option<pcsc::Error> {
    match e {
        yubikey::Error::PcscError { inner } => *inner,
        _ => None,
    }
}

/// pcscd cannot be reached (exit 3).
fn pcsc_unavailable(e: &yubikey::Error) -> Failure {
    Failure::Unavailable(anyhow!(
        "cannot use PC/SC ({}): is pcscd running? (e.g. systemctl enable --now pcscd.socket)",
        describe(e)
    ))
}

/// A `yubikey` error in words, with the PC/SC cause.
fn describe(e: &yubikey::Error) -> String {
    match pcsc_error(e) {
        Some(p) => format!("PC/SC: {p}"),
        None => e.to_string(),
    }
}

/// Why a reader has no usable card.
fn describe_open_error(e: &yubikey::Error) -> String {
    match (e, pcsc_error(e)) {
        (_, Some(pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard)) => "no card".into(),
        (yubikey::Error::AppletNotFound { .. }, _) => "a card without a PIV application".into(),
        (yubikey::Error::NotSupported, _) => "a PIV card that does not answer YubiKey's \
                                              version and serial commands (smime card \
                                              drives YubiKey-compatible cards only)"
            .into(),
        _ => format!("a card that cannot be used ({})", describe(e)),
    }
}

/// A reader's name, and its PIV card or why there is none.
type ReaderCard = (String, Result<Card, yubikey::Error>);

/// Every reader (filtered by `--reader`), with its PIV card or why there is none.
fn scan(sel: &CardArgs) -> Result<Vec<ReaderCard>, Failure> {
    let mut ctx = match yubikey::reader::Context::open() {
        Ok(c) => c,
        Err(e) if pcsc_error(&e) == Some(pcsc::Error::NoReadersAvailable) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(pcsc_unavailable(&e)),
    };
    let readers = match ctx.iter() {
        Ok(r) => r,
        Err(e) if pcsc_error(&e) == Some(pcsc::Error::NoReadersAvailable) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(pcsc_unavailable(&e)),
    };
    let readers: Vec<_> = readers.collect();
    let names: Vec<String> = readers.iter().map(|r| r.name().into_owned()).collect();
    let exact = sel
        .reader
        .as_ref()
        .is_some_and(|want| names.iter().any(|n| n == want));
    let wanted = |name: &str| match &sel.reader {
        None => true,
        Some(want) if exact => name == want,
        Some(want) => name.to_lowercase().contains(&want.to_lowercase()),
    };
    let mut out = Vec::new();
    for (reader, name) in readers.iter().zip(names) {
        if !wanted(&name) {
            continue;
        }
        let card = reader.open().map(|yk| Card {
            yk: Some(yk),
            reader: name.clone(),
            metadata: true,
        });
        out.push((name, card));
    }
    Ok(out)
}

/// The one PIV card `--reader`/`--serial` choose; an error when there is none or
/// several.
fn open(sel: &CardArgs) -> Result<Card, Failure> {
    let found = scan(sel)?;
    let mut cards = Vec::new();
    let mut others = Vec::new();
    for (name, card) in found {
        match card {
            Ok(c) if sel.serial.is_none_or(|s| s == c.serial()) => cards.push(c),
            Ok(c) => others.push(format!("{name}: card {}", c.serial())),
            Err(e) => others.push(format!("{name}: {}", describe_open_error(&e))),
        }
    }
    let wanted = match (&sel.reader, sel.serial) {
        (None, None) => String::new(),
        (Some(r), None) => format!(" in a reader matching {r:?}"),
        (None, Some(s)) => format!(" with serial {s}"),
        (Some(r), Some(s)) => format!(" with serial {s} in a reader matching {r:?}"),
    };
    match cards.len() {
        1 => Ok(cards.remove(0)),
        0 => {
            let seen = if others.is_empty() {
                "no card readers".to_owned()
            } else {
                others.join("; ")
            };
            Err(Failure::Unavailable(anyhow!(
                "no PIV card found{wanted} ({seen}): insert the card, or choose it with \
                 --reader NAME or --serial N"
            )))
        }
        _ => {
            let list: Vec<String> = cards
                .iter()
                .map(|c| format!("serial {} in {}", c.serial(), c.reader))
                .collect();
            Err(Failure::Usage(anyhow!(
                "several PIV cards ({}): choose one with --serial N or --reader NAME",
                list.join("; ")
            )))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Secrets

/// Where PINs, PUKs and management keys come from: prompts on the terminal, else one
/// line of standard input each. Never argv.
struct Secrets {
    tty: bool,
}

impl Secrets {
    fn new() -> Self {
        Secrets {
            tty: io::stdin().is_terminal(),
        }
    }

    /// The current value of `what`.
    fn current(&self, what: &str) -> Result<Zeroizing<String>, Failure> {
        if self.tty {
            prompt(&format!("{what}: "))
        } else {
            self.line(what)
        }
    }

    /// A new value of `what`: asked twice on a terminal.
    fn new_value(&self, what: &str) -> Result<Zeroizing<String>, Failure> {
        if !self.tty {
            return self.line(&format!("new {what}"));
        }
        let first = prompt(&format!("New {what}: "))?;
        let again = prompt(&format!("New {what} again: "))?;
        if first != again {
            return Err(Failure::Usage(anyhow!(
                "the two new {what}s differ; nothing was changed"
            )));
        }
        Ok(first)
    }

    fn line(&self, what: &str) -> Result<Zeroizing<String>, Failure> {
        let mut line = Zeroizing::new(String::new());
        let n = io::stdin()
            .read_line(&mut line)
            .context("reading standard input")
            .map_err(Failure::Usage)?;
        if n == 0 {
            return Err(Failure::Usage(anyhow!(
                "standard input ended before the {what} (without a terminal, smime card \
                 reads each secret from its own line of standard input)"
            )));
        }
        let len = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(len);
        Ok(line)
    }
}

fn prompt(text: &str) -> Result<Zeroizing<String>, Failure> {
    rpassword::prompt_password(text)
        .map(Zeroizing::new)
        .context("reading from the terminal")
        .map_err(Failure::Usage)
}

/// A PIN or PUK must have 6 to 8 characters (PIV); checked before the card sees it, so a
/// typo costs no try.
fn check_pin(value: &str, what: &str) -> Result<(), Failure> {
    if (6..=8).contains(&value.len()) {
        Ok(())
    } else {
        Err(Failure::Usage(anyhow!(
            "a {what} has 6 to 8 characters; nothing was sent to the card"
        )))
    }
}

/// A card error for a PIN (`what`: "PIN") or PUK operation, in words, with the exit
/// status it deserves.
fn pin_failure(e: &yubikey::Error, what: &str) -> Failure {
    match e {
        yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked if what == "PIN" => {
            Failure::Unavailable(anyhow!("PIN locked: {UNBLOCK_FIX}"))
        }
        yubikey::Error::WrongPin { tries: 0 } | yubikey::Error::PinLocked => {
            Failure::Unavailable(anyhow!(
                "PUK blocked: the PIN can no longer be unblocked (only a reset of the PIV \
                 application helps, and it erases every key)"
            ))
        }
        yubikey::Error::WrongPin { tries } => Failure::Unavailable(anyhow!(
            "wrong {what}: {tries} {} left (smime never retries)",
            if *tries == 1 { "try" } else { "tries" }
        )),
        e => card_failure(e, &format!("checking the {what}")),
    }
}

/// Any other card error.
fn card_failure(e: &yubikey::Error, doing: &str) -> Failure {
    match pcsc_error(e) {
        Some(
            pcsc::Error::RemovedCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::ResetCard
            | pcsc::Error::NoService
            | pcsc::Error::ServiceStopped,
        ) => Failure::Unavailable(anyhow!("{doing}: {}", describe(e))),
        _ => Failure::Other(anyhow!("{doing}: the card said: {}", describe(e))),
    }
}

/// What the card says about its PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinStatus {
    /// Tries left (0: locked).
    Left(u8),
    /// Verified now: a PIV card does not tell the tries left then.
    Verified,
    Unknown,
}

/// The PIN's tries left: from GET METADATA, else an empty VERIFY (which costs no try and,
/// unlike `get_pin_retries`, does not select the application again, which would log out
/// the other applications using the card, nor take "verified" for "locked").
fn pin_status(card: &mut Card) -> PinStatus {
    if let Some(m) = card.metadata(SlotId::Management(ManagementSlotId::Pin))
        && let Some(r) = m.retries
    {
        return PinStatus::Left(r.remaining_count);
    }
    match card.yk().verify_pin(&[]) {
        Ok(()) => PinStatus::Verified,
        Err(yubikey::Error::WrongPin { tries }) => PinStatus::Left(tries),
        Err(_) => PinStatus::Unknown,
    }
}

/// Asks for the PIN and verifies it (once).
fn verify_pin(card: &mut Card, secrets: &Secrets) -> Result<Zeroizing<String>, Failure> {
    let pin = secrets.current("PIN")?;
    check_pin(&pin, "PIN")?;
    card.yk()
        .verify_pin(pin.as_bytes())
        .map_err(|e| pin_failure(&e, "PIN"))?;
    Ok(pin)
}

// ---------------------------------------------------------------------------------------
// The management key

/// Authenticates with the management key: the PIN-protected one stored on the card (the
/// PIN must be verified), else the factory default (with a warning), else one asked for.
fn authenticate(card: &mut Card, secrets: &Secrets) -> Result<MgmKey, Failure> {
    if let Ok(key) = MgmKey::get_protected(card.yk())
        && card.yk().authenticate(&key).is_ok()
    {
        return Ok(key);
    }
    if let Ok(key) = MgmKey::get_default(card.yk())
        && card.yk().authenticate(&key).is_ok()
    {
        eprintln!(
            "smime: warning: the card uses the default management key, which is public: \
             change it with `smime card set-mgmt-key --protected`"
        );
        return Ok(key);
    }
    let hex_key = secrets.current("Management key (hex)")?;
    let bytes = Zeroizing::new(
        hex::decode(hex_key.trim())
            .map_err(|_| Failure::Usage(anyhow!("the management key is not hex")))?,
    );
    let alg = match mgm_algorithm(card) {
        Some(a) => a,
        None => match bytes.len() {
            16 => MgmAlgorithmId::Aes128,
            32 => MgmAlgorithmId::Aes256,
            _ => MgmAlgorithmId::ThreeDes,
        },
    };
    let key = MgmKey::from_bytes(&bytes[..], Some(alg)).map_err(|_| {
        Failure::Usage(anyhow!(
            "the management key has {} bytes, not the size of a {alg:?} key",
            bytes.len()
        ))
    })?;
    card.yk().authenticate(&key).map_err(|e| match e {
        yubikey::Error::AuthenticationError => {
            Failure::Unavailable(anyhow!("the card rejected the management key"))
        }
        e => card_failure(&e, "authenticating with the management key"),
    })?;
    Ok(key)
}

/// The algorithm of the card's management key, if the card tells (GET METADATA).
fn mgm_algorithm(card: &mut Card) -> Option<MgmAlgorithmId> {
    match card
        .metadata(SlotId::Management(ManagementSlotId::Management))?
        .algorithm
    {
        SlotAlgorithmId::Management(a) => Some(a),
        _ => None,
    }
}

/// Whether the management key is the factory default: from GET METADATA, else by trying
/// it (as `ykman piv info` does; a wrong management key costs no try). `None`: unknown.
fn default_mgm_key(card: &mut Card) -> Option<bool> {
    if let Some(m) = card.metadata(SlotId::Management(ManagementSlotId::Management))
        && let Some(d) = m.default
    {
        return Some(d);
    }
    let key = MgmKey::get_default(card.yk()).ok()?;
    match card.yk().authenticate(&key) {
        Ok(()) => Some(true),
        Err(yubikey::Error::AuthenticationError) => Some(false),
        Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------
// Slots and algorithms

fn slot_id(slot: u8) -> SlotId {
    SlotId::try_from(slot).unwrap_or_else(|_| unreachable!("clap accepts key slots only"))
}

fn slot_name(slot: u8) -> &'static str {
    match slot {
        0x9a => "PIV authentication",
        0x9c => "digital signature",
        0x9d => "key management",
        0x9e => "card authentication",
        _ => "retired key management",
    }
}

/// yubico-piv-tool's name of an algorithm.
fn alg_name(a: AlgorithmId) -> &'static str {
    match a {
        AlgorithmId::Rsa1024 => "RSA1024",
        AlgorithmId::Rsa2048 => "RSA2048",
        AlgorithmId::Rsa3072 => "RSA3072",
        AlgorithmId::Rsa4096 => "RSA4096",
        AlgorithmId::EccP256 => "ECCP256",
        AlgorithmId::EccP384 => "ECCP384",
        AlgorithmId::Ed25519 => "ED25519",
        AlgorithmId::X25519 => "X25519",
    }
}

/// The PIV algorithm of a public key, if it is one.
fn spki_algorithm(spki: &SubjectPublicKeyInfoRef<'_>) -> Option<AlgorithmId> {
    use const_oid::db::rfc5912::{ID_EC_PUBLIC_KEY, RSA_ENCRYPTION, SECP_256_R_1, SECP_384_R_1};
    let oid = spki.algorithm.oid;
    if oid == RSA_ENCRYPTION {
        let key = rsa::RsaPublicKey::try_from(spki.clone()).ok()?;
        return match rsa::traits::PublicKeyParts::size(&key) * 8 {
            1024 => Some(AlgorithmId::Rsa1024),
            2048 => Some(AlgorithmId::Rsa2048),
            3072 => Some(AlgorithmId::Rsa3072),
            4096 => Some(AlgorithmId::Rsa4096),
            _ => None,
        };
    }
    if oid == ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters?
            .decode_as::<const_oid::ObjectIdentifier>();
        return match curve.ok()? {
            c if c == SECP_256_R_1 => Some(AlgorithmId::EccP256),
            c if c == SECP_384_R_1 => Some(AlgorithmId::EccP384),
            _ => None,
        };
    }
    if oid == const_oid::db::rfc8410::ID_ED_25519 {
        return Some(AlgorithmId::Ed25519);
    }
    None
}

// ---------------------------------------------------------------------------------------
// list

#[derive(Serialize)]
struct ReaderInfo {
    reader: String,
    /// The PIV card, or null.
    card: Option<CardInfo>,
    /// Why there is no PIV card.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct CardInfo {
    serial: u32,
    version: String,
    /// PIN tries left (null: the card cannot tell, e.g. while the PIN is verified).
    pin_tries: Option<u8>,
    /// Whether the PIN is verified now (by any application using the card).
    pin_verified: bool,
    /// PUK tries left (null: the card cannot tell).
    puk_tries: Option<u8>,
    /// Whether the management key is the factory default (null: unknown).
    default_management_key: Option<bool>,
    /// True when the management key is the public factory default.
    management_key_insecure: bool,
    /// Slots with a key or a certificate.
    slots: Vec<SlotInfo>,
}

#[derive(Serialize)]
struct SlotInfo {
    slot: String,
    name: &'static str,
    /// Key algorithm (yubico-piv-tool's names: ECCP256, RSA2048, ...), null if unknown.
    algorithm: Option<&'static str>,
    /// The certificate's subject, null without a certificate.
    subject: Option<String>,
    issuer: Option<String>,
    not_after: Option<String>,
    /// SHA-256 of the certificate (DER), hex.
    sha256: Option<String>,
}

fn list(sel: &CardArgs, json: bool) -> Result<(), Failure> {
    let mut infos = Vec::new();
    for (reader, card) in scan(sel)? {
        match card {
            Ok(mut c) => {
                if sel.serial.is_some_and(|s| s != c.serial()) {
                    continue;
                }
                infos.push(ReaderInfo {
                    reader,
                    card: Some(card_info(&mut c)),
                    error: None,
                });
            }
            Err(e) if sel.serial.is_none() => infos.push(ReaderInfo {
                reader,
                card: None,
                error: Some(describe_open_error(&e)),
            }),
            Err(_) => {}
        }
    }
    let mut out = io::stdout().lock();
    let w = |out: &mut io::StdoutLock<'_>| -> io::Result<()> {
        if json {
            serde_json::to_writer_pretty(&mut *out, &infos)?;
            return writeln!(out);
        }
        if infos.is_empty() {
            writeln!(out, "no card readers")?;
        }
        for r in &infos {
            let Some(c) = &r.card else {
                writeln!(
                    out,
                    "reader {}: {}",
                    r.reader,
                    r.error.as_deref().unwrap_or("")
                )?;
                continue;
            };
            writeln!(
                out,
                "reader {}: PIV card, serial {}, version {}",
                r.reader, c.serial, c.version
            )?;
            let tries = |t: Option<u8>| match t {
                Some(0) => "LOCKED (0 tries left)".to_owned(),
                Some(n) => format!("{n} tries left"),
                None => "unknown tries left (the card cannot tell)".to_owned(),
            };
            if c.pin_verified {
                writeln!(
                    out,
                    "  PIN: verified now (tries left unknown: the card does not tell while \
                     the PIN is verified)"
                )?;
            } else {
                writeln!(out, "  PIN: {}", tries(c.pin_tries))?;
            }
            writeln!(out, "  PUK: {}", tries(c.puk_tries))?;
            let mgm = match c.default_management_key {
                Some(true) => {
                    "DEFAULT, INSECURE: anyone can replace the card's keys; change it with \
                     `smime card set-mgmt-key --protected`"
                }
                Some(false) => "not the default",
                None => "unknown",
            };
            writeln!(out, "  management key: {mgm}")?;
            for s in &c.slots {
                let what = match (&s.algorithm, &s.subject) {
                    (Some(a), Some(subj)) => format!("{a}, {subj}"),
                    (Some(a), None) => format!("{a} key, no certificate"),
                    (None, Some(subj)) => format!("unknown key, {subj}"),
                    (None, None) => "no certificate (key unknown)".to_owned(),
                };
                writeln!(out, "  slot {} ({}): {what}", s.slot, s.name)?;
            }
        }
        Ok(())
    };
    w(&mut out).map_err(|e| Failure::Other(e.into()))
}

fn card_info(c: &mut Card) -> CardInfo {
    let yk = c.yk();
    let version = yk.version().to_string();
    let serial = yk.serial().0;
    let default_management_key = default_mgm_key(c);
    let pin = pin_status(c);
    let puk_tries = c
        .metadata(SlotId::Management(ManagementSlotId::Puk))
        .and_then(|m| m.retries)
        .map(|r| r.remaining_count);
    let mut slots = Vec::new();
    for slot in KEY_SLOTS {
        let id = slot_id(slot);
        let cert = CardCert::read(c.yk(), id).ok();
        let meta_alg = c.metadata(id).and_then(|m| match m.algorithm {
            SlotAlgorithmId::Asymmetric(a) => Some(a),
            _ => None,
        });
        let cert_alg = cert.as_ref().and_then(|k| spki_algorithm(&k.subject_pki()));
        if cert.is_none() && meta_alg.is_none() && !matches!(slot, 0x9a | 0x9c | 0x9d | 0x9e) {
            continue;
        }
        let tbs = cert.as_ref().map(|k| k.cert.tbs_certificate());
        slots.push(SlotInfo {
            slot: format!("{slot:02x}"),
            name: slot_name(slot),
            algorithm: meta_alg.or(cert_alg).map(alg_name),
            subject: tbs.map(|t| t.subject().to_string()),
            issuer: tbs.map(|t| t.issuer().to_string()),
            not_after: tbs.map(|t| t.validity().not_after.to_string()),
            sha256: cert.as_ref().and_then(|k| k.cert.to_der().ok()).map(|d| {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(d))
            }),
        });
    }
    CardInfo {
        serial,
        version,
        pin_tries: match pin {
            PinStatus::Left(n) => Some(n),
            _ => None,
        },
        pin_verified: pin == PinStatus::Verified,
        puk_tries,
        default_management_key,
        management_key_insecure: default_management_key == Some(true),
        slots,
    }
}

// ---------------------------------------------------------------------------------------
// generate

/// The extensions of a request or self-signed certificate for `slot`.
fn extensions(
    slot: u8,
    alg: CardAlg,
    subject: &Name,
    emails: &[String],
) -> Result<Vec<Extension>, Failure> {
    let usage = match (slot, alg) {
        (0x9c, _) => KeyUsages::DigitalSignature | KeyUsages::NonRepudiation,
        (0x9a | 0x9e, _) => KeyUsages::DigitalSignature.into(),
        (_, CardAlg::Rsa2048) => KeyUsages::KeyEncipherment.into(),
        (_, _) => KeyUsages::KeyAgreement.into(),
    };
    let der = |e: der::Error| Failure::Other(anyhow!(e).context("encoding an extension"));
    let mut out = vec![
        (&BasicConstraints {
            ca: false,
            path_len_constraint: None,
        })
            .to_extension(subject, &[])
            .map_err(der)?,
        (&KeyUsage(usage)).to_extension(subject, &[]).map_err(der)?,
    ];
    if !emails.is_empty() {
        let names = emails
            .iter()
            .map(|e| {
                Ia5String::new(e)
                    .map(GeneralName::Rfc822Name)
                    .map_err(|_| Failure::Usage(anyhow!("{e:?} is not an e-mail address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(
            (&ExtendedKeyUsage(vec![const_oid::db::rfc5280::ID_KP_EMAIL_PROTECTION]))
                .to_extension(subject, &[])
                .map_err(der)?,
        );
        out.push(
            (&SubjectAltName(names))
                .to_extension(subject, &[])
                .map_err(der)?,
        );
    }
    Ok(out)
}

/// A self-signed certificate with fixed extensions.
struct SelfSigned {
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for SelfSigned {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// What `generate` makes.
enum Made {
    Csr(Box<x509_cert::request::CertReq>),
    Cert(Box<x509_cert::Certificate>),
}

fn build<KT: KeyType>(
    yk: &mut YubiKey,
    slot: SlotId,
    spki: &SubjectPublicKeyInfoOwned,
    subject: Name,
    extensions: Vec<Extension>,
    csr: bool,
    days: u32,
) -> Result<Made, Failure> {
    let signer = Signer::<KT>::new(yk, slot, spki.owned_to_ref())
        .map_err(|e| card_failure(&e, "reading the new public key"))?;
    let signing = |e: x509_cert::builder::Error| {
        Failure::Other(anyhow!(
            "signing with the new key on the card: {e} (touch the card if it blinks)"
        ))
    };
    if csr {
        let mut b = RequestBuilder::new(subject)
            .map_err(|e| Failure::Other(anyhow!("making the request: {e}")))?;
        for e in extensions {
            b.add_extension(e)
                .map_err(|e| Failure::Other(anyhow!("making the request: {e}")))?;
        }
        return b
            .build::<_, KT::Signature>(&signer)
            .map(|r| Made::Csr(Box::new(r)))
            .map_err(signing);
    }
    let validity = Validity::from_now(Duration::from_secs(u64::from(days) * 86_400))
        .map_err(|e| Failure::Usage(anyhow!("--days {days}: {e}")))?;
    let serial = SerialNumber::generate(&mut rand::rng());
    let b = CertificateBuilder::new(
        SelfSigned {
            subject,
            extensions,
        },
        serial,
        validity,
        spki.clone(),
    )
    .map_err(|e| Failure::Other(anyhow!("making the certificate: {e}")))?;
    b.build::<_, KT::Signature>(&signer)
        .map(|c| Made::Cert(Box::new(c)))
        .map_err(signing)
}

fn generate(sel: &CardArgs, g: &CardGenerateArgs) -> Result<(), Failure> {
    let subject = match (&g.subject, g.email.first()) {
        (Some(s), _) => Name::from_str(s)
            .map_err(|e| Failure::Usage(anyhow!("--subject {s:?} is not a name: {e}")))?,
        (None, Some(e)) => Name::from_str(&format!("CN={e}"))
            .map_err(|_| Failure::Usage(anyhow!("{e:?} is not an e-mail address")))?,
        (None, None) => {
            return Err(Failure::Usage(anyhow!(
                "give the certificate's --subject or --email"
            )));
        }
    };
    let exts = extensions(g.slot, g.alg, &subject, &g.email)?;
    // The output files' temporary siblings, before the card is touched: an unwritable
    // directory fails here, with the card unchanged.
    let out_path = g.csr.as_deref().or(g.output.as_deref());
    let mut out = out_path
        .map(|p| {
            Output::create(Some(p))
                .with_context(|| format!("creating {}", p.display()))
                .map_err(Failure::Usage)
        })
        .transpose()?;
    let slot = slot_id(g.slot);
    let mut card = open(sel)?;
    if !g.force && CardCert::read(card.yk(), slot).is_ok() {
        return Err(Failure::Usage(anyhow!(
            "slot {:02x} holds a certificate, so probably a key: --force replaces that key \
             (it is lost for good)",
            g.slot
        )));
    }
    let secrets = Secrets::new();
    let pin = verify_pin(&mut card, &secrets)?;
    authenticate(&mut card, &secrets)?;
    let (alg, pin_policy, touch_policy) = (
        match g.alg {
            CardAlg::P256 => AlgorithmId::EccP256,
            CardAlg::P384 => AlgorithmId::EccP384,
            CardAlg::Rsa2048 => AlgorithmId::Rsa2048,
        },
        match g.pin_policy {
            None => PinPolicy::Default,
            Some(CardPinPolicy::Never) => PinPolicy::Never,
            Some(CardPinPolicy::Once) => PinPolicy::Once,
            Some(CardPinPolicy::Always) => PinPolicy::Always,
        },
        match g.touch_policy {
            None => TouchPolicy::Default,
            Some(CardTouchPolicy::Never) => TouchPolicy::Never,
            Some(CardTouchPolicy::Always) => TouchPolicy::Always,
            Some(CardTouchPolicy::Cached) => TouchPolicy::Cached,
        },
    );
    eprintln!(
        "smime: generating a new {} key in slot {:02x} of card {}...",
        alg_name(alg),
        g.slot,
        card.serial()
    );
    let spki =
        piv::generate(card.yk(), slot, alg, pin_policy, touch_policy).map_err(|e| match e {
            yubikey::Error::AlgorithmError => Failure::Usage(anyhow!(
                "the card cannot make a {} key with these PIN and touch policies",
                alg_name(alg)
            )),
            e => card_failure(&e, "generating the key"),
        })?;
    // The old certificate belonged to the key just replaced.
    if CardCert::read(card.yk(), slot).is_ok() {
        CardCert::delete(card.yk(), slot)
            .map_err(|e| card_failure(&e, "removing the old certificate"))?;
    }
    // A key with PIN policy "always" wants the PIN right before each signature.
    card.yk()
        .verify_pin(pin.as_bytes())
        .map_err(|e| pin_failure(&e, "PIN"))?;
    drop(pin);
    let yk = card.yk();
    let made = match g.alg {
        CardAlg::P256 => {
            build::<p256::NistP256>(yk, slot, &spki, subject, exts, g.csr.is_some(), g.days)
        }
        CardAlg::P384 => {
            build::<p384::NistP384>(yk, slot, &spki, subject, exts, g.csr.is_some(), g.days)
        }
        CardAlg::Rsa2048 => {
            build::<YubiRsa<Rsa2048>>(yk, slot, &spki, subject, exts, g.csr.is_some(), g.days)
        }
    }?;
    let pem = match &made {
        Made::Csr(r) => r.to_pem(LineEnding::LF),
        Made::Cert(c) => c.to_pem(LineEnding::LF),
    }
    .map_err(|e| Failure::Other(anyhow!("encoding: {e}")))?;
    if let Made::Cert(c) = made {
        CardCert { cert: *c }
            .write(card.yk(), slot, CertInfo::Uncompressed)
            .map_err(|e| card_failure(&e, "writing the certificate to the card"))?;
        eprintln!(
            "smime: slot {:02x} now holds a new {} key and a self-signed certificate",
            g.slot,
            alg_name(alg)
        );
    } else {
        eprintln!(
            "smime: slot {:02x} now holds a new {} key; have a CA sign the request, then run \
             `smime card import-cert --slot {:02x} CERT`",
            g.slot,
            alg_name(alg),
            g.slot
        );
    }
    if let (Some(mut o), Some(p)) = (out.take(), out_path) {
        o.write_all(pem.as_bytes())
            .and_then(|()| o.commit())
            .with_context(|| format!("writing {}", p.display()))
            .map_err(Failure::Other)?;
    } else if g.csr.is_none() && g.output.is_none() {
        // A self-signed certificate without --out: print it, as it is also on the card.
        print!("{pem}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// import-cert

/// Whether the key in `slot` signs for `spki`: a test signature of a random message,
/// checked with the certificate's key.
fn signs_for<KT: KeyType>(
    yk: &mut YubiKey,
    slot: SlotId,
    spki: SubjectPublicKeyInfoRef<'_>,
) -> Result<bool, Failure>
where
    KT::VerifyingKey: signature::Verifier<KT::Signature>,
{
    use signature::{Keypair as _, Signer as _, Verifier as _};
    let signer = Signer::<KT>::new(yk, slot, spki)
        .map_err(|_| Failure::Usage(anyhow!("the certificate's public key cannot be read")))?;
    let mut msg = [0u8; 32];
    rand::RngExt::fill(&mut rand::rng(), &mut msg);
    let sig = signer.try_sign(&msg).map_err(|e| {
        Failure::Usage(anyhow!(
            "slot {:02x} has no key of the certificate's type that signs ({e}); refusing the \
             certificate",
            u8::from(slot)
        ))
    })?;
    Ok(signer.verifying_key().verify(&msg, &sig).is_ok())
}

fn import_cert(sel: &CardArgs, slot: u8, path: &Path) -> Result<(), Failure> {
    let certs = super::load_certs(&[path.to_owned()])?;
    let cert = match certs.as_slice() {
        [c] => c.clone(),
        [] => {
            return Err(Failure::Usage(anyhow!(
                "{} holds no certificate",
                path.display()
            )));
        }
        _ => {
            return Err(Failure::Usage(anyhow!(
                "{} holds {} certificates: give a file with the slot's certificate only",
                path.display(),
                certs.len()
            )));
        }
    };
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .owned_to_ref();
    let alg = spki_algorithm(&spki).ok_or_else(|| {
        Failure::Usage(anyhow!(
            "{}: the certificate's key ({}) is not one a PIV card holds",
            path.display(),
            spki.algorithm.oid
        ))
    })?;
    let id = slot_id(slot);
    let mut card = open(sel)?;
    let secrets = Secrets::new();
    // The key check: by the card's metadata, or by a test signature right after the PIN
    // (a key with PIN policy "always" wants nothing in between).
    let meta = card
        .metadata(id)
        .and_then(|m| m.public)
        .and_then(|p| p.to_der().ok());
    let _pin = verify_pin(&mut card, &secrets)?;
    let matches = match meta {
        Some(public) => spki.to_der().ok().is_some_and(|c| c == public),
        None => match alg {
            AlgorithmId::EccP256 => signs_for::<p256::NistP256>(card.yk(), id, spki.clone())?,
            AlgorithmId::EccP384 => signs_for::<p384::NistP384>(card.yk(), id, spki.clone())?,
            AlgorithmId::Rsa2048 => signs_for::<YubiRsa<Rsa2048>>(card.yk(), id, spki)?,
            other => {
                return Err(Failure::Usage(anyhow!(
                    "cannot check a {} certificate against the card's key",
                    alg_name(other)
                )));
            }
        },
    };
    if !matches {
        return Err(Failure::Usage(anyhow!(
            "{}: the certificate's public key is not the key in slot {slot:02x}; refusing it",
            path.display()
        )));
    }
    authenticate(&mut card, &secrets)?;
    CardCert { cert: cert.clone() }
        .write(card.yk(), id, CertInfo::Uncompressed)
        .map_err(|e| card_failure(&e, "writing the certificate to the card"))?;
    eprintln!(
        "smime: slot {slot:02x} of card {} now holds the certificate of {}",
        card.serial(),
        cert.tbs_certificate().subject()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// attest

fn attest(sel: &CardArgs, slot: u8, output: Option<&Path>) -> Result<(), Failure> {
    let mut out = Output::create(output)
        .context("creating the output file")
        .map_err(Failure::Usage)?;
    let mut card = open(sel)?;
    let der = piv::attest(card.yk(), slot_id(slot)).map_err(|e| match e {
        yubikey::Error::NotSupported | yubikey::Error::GenericError => Failure::Other(anyhow!(
            "card {} cannot attest slot {slot:02x}: attestation needs a YubiKey (4.3 or \
                 later) and a key generated on it (the card answered: {})",
            card.serial(),
            describe(&e)
        )),
        e => card_failure(&e, "attesting the key"),
    })?;
    let cert = <x509_cert::Certificate as der::Decode>::from_der(&der)
        .map_err(|e| Failure::Other(anyhow!("the card's attestation is not a certificate: {e}")))?;
    let pem = cert
        .to_pem(LineEnding::LF)
        .map_err(|e| Failure::Other(anyhow!("encoding: {e}")))?;
    out.write_all(pem.as_bytes())
        .and_then(|()| out.commit())
        .context("writing the certificate")
        .map_err(Failure::Other)
}

// ---------------------------------------------------------------------------------------
// PIN, PUK and management key

/// Refuses to ask for the PIN when the card says it is locked.
fn refuse_locked_pin(card: &mut Card) -> Result<(), Failure> {
    if pin_status(card) == PinStatus::Left(0) {
        return Err(Failure::Unavailable(anyhow!("PIN locked: {UNBLOCK_FIX}")));
    }
    Ok(())
}

/// A failed PIN change: cards that answer a wrong PIN without the tries left (plain
/// 6300, as piv-authenticator does) are asked for them afterwards.
fn pin_change_failure(card: &mut Card, e: &yubikey::Error) -> Failure {
    if *e != yubikey::Error::GenericError {
        return pin_failure(e, "PIN");
    }
    match pin_status(card) {
        PinStatus::Left(tries) => pin_failure(&yubikey::Error::WrongPin { tries }, "PIN"),
        _ => Failure::Unavailable(anyhow!(
            "the card refused the current PIN (it does not tell the tries left now; \
             smime never retries)"
        )),
    }
}

/// A failed PUK operation; a PIV card cannot tell the PUK's tries left but in its answer.
fn puk_failure(e: &yubikey::Error) -> Failure {
    if *e == yubikey::Error::GenericError {
        return Failure::Unavailable(anyhow!(
            "the card refused the PUK (it does not tell the tries left; smime never retries)"
        ));
    }
    pin_failure(e, "PUK")
}

fn change_pin(sel: &CardArgs) -> Result<(), Failure> {
    let mut card = open(sel)?;
    refuse_locked_pin(&mut card)?;
    let secrets = Secrets::new();
    let old = secrets.current("Current PIN")?;
    check_pin(&old, "PIN")?;
    let new = secrets.new_value("PIN")?;
    check_pin(&new, "PIN")?;
    let r = card.yk().change_pin(old.as_bytes(), new.as_bytes());
    r.map_err(|e| pin_change_failure(&mut card, &e))?;
    eprintln!("smime: the PIN of card {} is changed", card.serial());
    Ok(())
}

fn change_puk(sel: &CardArgs) -> Result<(), Failure> {
    let mut card = open(sel)?;
    let secrets = Secrets::new();
    let old = secrets.current("Current PUK")?;
    check_pin(&old, "PUK")?;
    let new = secrets.new_value("PUK")?;
    check_pin(&new, "PUK")?;
    card.yk()
        .change_puk(old.as_bytes(), new.as_bytes())
        .map_err(|e| puk_failure(&e))?;
    eprintln!("smime: the PUK of card {} is changed", card.serial());
    Ok(())
}

fn unblock(sel: &CardArgs) -> Result<(), Failure> {
    let mut card = open(sel)?;
    let secrets = Secrets::new();
    let puk = secrets.current("PUK")?;
    check_pin(&puk, "PUK")?;
    let new = secrets.new_value("PIN")?;
    check_pin(&new, "PIN")?;
    card.yk()
        .unblock_pin(puk.as_bytes(), new.as_bytes())
        .map_err(|e| puk_failure(&e))?;
    eprintln!(
        "smime: the PIN of card {} is unblocked and set to the new value",
        card.serial()
    );
    Ok(())
}

fn set_mgmt_key(
    sel: &CardArgs,
    protected: bool,
    generate: bool,
    algorithm: Option<MgmtAlg>,
) -> Result<(), Failure> {
    let mut card = open(sel)?;
    let secrets = Secrets::new();
    // The PIN: to read a PIN-protected current key, and to store a new one.
    verify_pin(&mut card, &secrets)?;
    let current = authenticate(&mut card, &secrets)?;
    let alg = match algorithm {
        Some(MgmtAlg::TripleDes) => MgmAlgorithmId::ThreeDes,
        Some(MgmtAlg::Aes128) => MgmAlgorithmId::Aes128,
        Some(MgmtAlg::Aes192) => MgmAlgorithmId::Aes192,
        Some(MgmtAlg::Aes256) => MgmAlgorithmId::Aes256,
        None => current.algorithm_id(),
    };
    let new = if protected || generate {
        MgmKey::generate(alg, &mut rand::rng())
            .map_err(|e| Failure::Other(anyhow!("generating a key: {e}")))?
    } else {
        let hex_key = secrets.new_value("management key (hex)")?;
        let bytes = Zeroizing::new(
            hex::decode(hex_key.trim())
                .map_err(|_| Failure::Usage(anyhow!("the new management key is not hex")))?,
        );
        MgmKey::from_bytes(&bytes[..], Some(alg)).map_err(|_| {
            Failure::Usage(anyhow!(
                "the new management key has {} bytes, not the size of a {alg:?} key, or is \
                 weak; nothing was changed",
                bytes.len()
            ))
        })?
    };
    let r = if protected {
        new.set_protected(card.yk())
    } else {
        new.set_manual(card.yk(), false)
    };
    r.map_err(|e| card_failure(&e, "setting the management key"))?;
    if generate {
        let hex_key = Zeroizing::new(hex::encode(new.as_ref()));
        let mut out = io::stdout().lock();
        writeln!(out, "{}", hex_key.as_str()).map_err(|e| Failure::Other(e.into()))?;
    }
    eprintln!(
        "smime: the management key of card {} is changed{}",
        card.serial(),
        if protected {
            " and stored on the card, protected by the PIN"
        } else {
            ""
        }
    );
    Ok(())
}
