//! `smime encrypt` and `smime import`.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use x509_cert::Certificate;

use super::{Failure, connect, key_list, load_certs};
use crate::cli::{Cipher, Cli, EncryptArgs, KeyTransport, OutForm};
use crate::cms::envelope::{self, ContentCipher, Recipient, RsaKeyTransport};
use crate::keys::{KeySummary, certificate_emails, select};
use crate::output::Output;
use crate::store::CertStore;

fn valid_now(c: &Certificate) -> bool {
    let v = c.tbs_certificate().validity();
    let now = SystemTime::now();
    v.not_before.to_system_time() <= now && now <= v.not_after.to_system_time()
}

fn describe(c: &Certificate) -> String {
    let emails = certificate_emails(c);
    format!("{} <{}>", c.tbs_certificate().subject(), emails.join(", "))
}

/// A `--to` value: a certificate file, or an address in the store.
fn recipient_certs(to: &str, store: Option<&CertStore>) -> Result<Vec<Certificate>, Failure> {
    if Path::new(to).exists() {
        return load_certs(&[to.into()]);
    }
    if !to.contains('@') {
        return Err(Failure::Usage(anyhow!(
            "{to:?} is neither a certificate file nor an e-mail address"
        )));
    }
    let addr = to
        .rsplit_once('<')
        .map_or(to, |(_, a)| a.trim_end_matches('>'))
        .trim();
    let store =
        store.ok_or_else(|| Failure::Usage(anyhow!("no certificate store to look up {addr}")))?;
    let found = store
        .find_email(addr)
        .map_err(|e| Failure::Other(e.into()))?;
    if found.is_empty() {
        return Err(Failure::Usage(anyhow!(
            "no certificate for {addr} in {}; add one with `smime import CERT`",
            store.dir().display()
        )));
    }
    // The newest currently valid certificate; an address may have had several.
    let newest = found
        .into_iter()
        .filter(valid_now)
        .max_by_key(|c| c.tbs_certificate().validity().not_before.to_system_time())
        .ok_or_else(|| {
            Failure::Usage(anyhow!(
                "every certificate for {addr} in the store has expired"
            ))
        })?;
    Ok(vec![newest])
}

/// The user's own certificate from the agent, for `--self`.
fn own_cert(cli: &Cli, sel: Option<&str>) -> Result<Certificate, Failure> {
    let mut client = connect(cli)?;
    let keys = key_list(&mut client)?;
    let can_decrypt = KeySummary::can_decrypt;
    let key = match sel {
        Some(s) => select(&keys, s, can_decrypt).map_err(|e| Failure::Usage(e.into()))?,
        None => {
            let usable: Vec<&KeySummary> = keys.iter().filter(|k| can_decrypt(k)).collect();
            match usable.as_slice() {
                [k] => *k,
                [] => {
                    return Err(Failure::Usage(anyhow!(
                        "--self: the agent has no key that can decrypt"
                    )));
                }
                many => {
                    let list: Vec<String> = many.iter().map(|k| k.line()).collect();
                    return Err(Failure::Usage(anyhow!(
                        "--self: several keys can decrypt; pick one with --key:\n{}",
                        list.join("\n")
                    )));
                }
            }
        }
    };
    key.certificate
        .clone()
        .ok_or_else(|| Failure::Usage(anyhow!("the key has no certificate")))
}

pub(super) fn encrypt(cli: &Cli, a: &EncryptArgs) -> Result<(), Failure> {
    let input = super::rereadable(a.input.as_deref())?;
    let mut out = Output::create(a.output.as_deref())
        .context("creating the output")
        .map_err(Failure::Usage)?;
    encrypt_to(cli, a, input, &mut out)?;
    out.commit()
        .context("writing the output")
        .map_err(Failure::Other)
}

/// Encrypts `input` as `a` says (recipients, cipher, form) into `out`.
pub(super) fn encrypt_to(
    cli: &Cli,
    a: &EncryptArgs,
    input: super::Rereadable,
    out: &mut Output,
) -> Result<(), Failure> {
    let store = CertStore::default_location().ok();
    let mut certs = Vec::new();
    for to in &a.to {
        certs.extend(recipient_certs(to, store.as_ref())?);
    }
    if a.self_ {
        certs.push(own_cert(cli, a.key.as_deref())?);
    }
    if let Some(c) = certs.iter().find(|c| !valid_now(c)) {
        return Err(Failure::Usage(anyhow!(
            "the certificate of {} is not valid now",
            describe(c)
        )));
    }
    let rsa = match a.rsa {
        KeyTransport::Pkcs1 => RsaKeyTransport::Pkcs1v15,
        KeyTransport::Oaep => RsaKeyTransport::OaepSha256,
        KeyTransport::OaepSha1 => RsaKeyTransport::OaepSha1,
    };
    let cipher = match a.cipher {
        Cipher::Aes128Gcm => ContentCipher::Aes128Gcm,
        Cipher::Aes256Gcm => ContentCipher::Aes256Gcm,
        Cipher::Aes128Cbc => ContentCipher::Aes128Cbc,
        Cipher::Aes256Cbc => ContentCipher::Aes256Cbc,
    };
    let recipients: Vec<Recipient> = certs
        .into_iter()
        .map(|cert| Recipient { cert, rsa })
        .collect();
    let encrypt: &super::smime_entity::EncryptFn<'_> =
        &|input: &mut dyn Read, out: &mut dyn Write| {
            envelope::encrypt(input, out, &recipients, cipher).map_err(|e| match e {
                crate::cms::Error::Io(e) => Failure::Other(anyhow!(e).context("encrypting")),
                e => Failure::Usage(anyhow!(e)),
            })
        };
    match a.outform() {
        OutForm::Der => encrypt(
            &mut std::io::BufReader::new(input.progress(&input.file)?),
            out,
        )?,
        OutForm::Pem => {
            let mut der = super::spool()?;
            encrypt(
                &mut std::io::BufReader::new(input.progress(&input.file)?),
                &mut der,
            )?;
            der.rewind().map_err(|e| Failure::Other(e.into()))?;
            crate::cms::write_pem(&mut der, out).map_err(|e| Failure::Other(e.into()))?;
        }
        OutForm::Smime => super::smime_entity::encrypt_entity(input, out, cipher, encrypt)?,
    }
    Ok(())
}

pub(super) fn import(certs: &[std::path::PathBuf]) -> Result<(), Failure> {
    let store = CertStore::default_location().map_err(|e| Failure::Usage(e.into()))?;
    for c in load_certs(certs)? {
        let new = store.add(&c).map_err(|e| Failure::Other(e.into()))?;
        eprintln!(
            "{} {}",
            if new { "imported" } else { "already present:" },
            describe(&c)
        );
    }
    Ok(())
}
