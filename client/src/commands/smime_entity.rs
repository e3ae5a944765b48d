//! S/MIME entities on the command line: the MIME side of encrypt, sign and verify.

use std::io::{Read, Write};

use anyhow::anyhow;

use super::Failure;
use crate::cms::envelope::ContentCipher;

/// Encrypts a message as `application/pkcs7-mime`: its mail headers (From, To, Subject,
/// …) stay outside, the MIME entity (Content-* headers and body) goes inside.
pub(super) fn encrypt_entity(
    mut input: Box<dyn Read>,
    out: &mut dyn Write,
    cipher: ContentCipher,
    encrypt: &dyn Fn(&mut dyn Read, &mut dyn Write) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut raw = Vec::new();
    input
        .read_to_end(&mut raw)
        .map_err(|e| Failure::Usage(anyhow!(e).context("reading the message")))?;
    // WIP: wired to the mime module once it lands.
    let _ = (out, cipher, encrypt, raw);
    Err(Failure::Usage(anyhow!(
        "S/MIME output is not available yet: use --der or --pem"
    )))
}
