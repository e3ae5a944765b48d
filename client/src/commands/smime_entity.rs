//! S/MIME entities on the command line: the MIME side of encrypt, sign and verify.

use std::io::{BufReader, Read, Seek, Write};

use anyhow::anyhow;

use super::Failure;
use crate::cms::envelope::ContentCipher;
use crate::mime;

/// The encryption step, as `smime encrypt` configured it.
pub(super) type EncryptFn<'a> = dyn Fn(&mut dyn Read, &mut dyn Write) -> Result<(), Failure> + 'a;

fn read_message(input: &mut super::Rereadable) -> Result<mime::PreparedFile, Failure> {
    mime::prepare_file(&mut input.file)
        .map_err(|e| Failure::Usage(anyhow!(e).context("the input is not a well-formed message")))
}

fn write_err(e: std::io::Error) -> Failure {
    Failure::Other(anyhow!(e).context("writing the S/MIME entity"))
}

/// Encrypts a message as `application/pkcs7-mime`: its mail headers (From, To, Subject,
/// …) stay outside, the MIME entity (Content-* headers and body) goes inside.
pub(super) fn encrypt_entity(
    mut input: super::Rereadable,
    out: &mut dyn Write,
    cipher: ContentCipher,
    encrypt: &EncryptFn<'_>,
) -> Result<(), Failure> {
    let prep = read_message(&mut input)?;
    let mut der = super::spool()?;
    encrypt(&mut BufReader::new(input.progress(&prep.inner)?), &mut der)?;
    der.rewind().map_err(|e| Failure::Other(e.into()))?;
    mime::write_pkcs7_mime(&prep.outer_headers, cipher.smime_type(), der, out).map_err(write_err)
}

/// Signs a message as `multipart/signed` (`clear`) or opaque `application/pkcs7-mime`.
pub(super) fn sign_entity(
    signer: &mut super::sign::Signer,
    mut input: super::Rereadable,
    out: &mut dyn Write,
    clear: bool,
) -> Result<(), Failure> {
    let mut prep = read_message(&mut input)?;
    let detached = signer.sign_reader(BufReader::new(input.progress(&prep.inner)?))?;
    prep.inner.rewind().map_err(|e| Failure::Other(e.into()))?;
    if clear {
        return mime::write_multipart_signed(
            &prep.outer_headers,
            BufReader::new(prep.inner),
            &detached,
            signer.hash().micalg(),
            out,
        )
        .map_err(write_err);
    }
    let mut der = super::spool()?;
    crate::cms::opaque::write_attached(&detached, BufReader::new(prep.inner), &mut der)
        .map_err(|e| Failure::Other(anyhow!(e)))?;
    der.rewind().map_err(|e| Failure::Other(e.into()))?;
    mime::write_pkcs7_mime(&prep.outer_headers, "signed-data", der, out).map_err(write_err)
}
