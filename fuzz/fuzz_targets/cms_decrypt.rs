//! `smime decrypt` parsing: streamed EnvelopedData/AuthEnvelopedData never panics. The
//! unwrapper answers every request with a fixed key, so the content paths run too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smime::cms::decrypt::{KeyUnwrapper, decrypt};
use smime_proto::{DecryptAlgorithm, SecretBytes};

struct Fixed;

#[derive(Debug)]
struct Never;
impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}
impl std::error::Error for Never {}

impl KeyUnwrapper for Fixed {
    type Error = Never;
    fn decrypt_key(&self, _: usize, _: DecryptAlgorithm, _: &[u8]) -> Result<SecretBytes, Never> {
        Ok(SecretBytes::new(vec![7; 16]))
    }
    fn ecdh(&self, _: usize, _: &[u8]) -> Result<SecretBytes, Never> {
        Ok(SecretBytes::new(vec![7; 32]))
    }
}

// A recipient certificate so that recipient matching has something to compare with.
const CERT: &str = include_str!("recipient.pem");

fuzz_target!(|data: &[u8]| {
    use der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(CERT).expect("test certificate");
    let _ = decrypt(data, std::io::sink(), &[cert], &Fixed);
});
