//! `smime sign`: detached, opaque and clear-signed (multipart/signed) signatures.

use std::io::{self, BufReader, Read, Seek, Write};

use anyhow::{Context, anyhow};
use smime_proto::Operation;
use x509_cert::Certificate;

use super::{Failure, connect, key_list, load_certs, open_input, rereadable};
use crate::agent::{AgentClient, AgentError};
use crate::cli::{Cli, Digest, SignArgs};
use crate::cms::{self, HashAlg};
use crate::keys::{KeySummary, select};
use crate::output::Output;
use crate::signer::RemoteSigner;

/// A key chosen for signing, with its certificate and the chain to include.
pub(crate) struct Signer {
    client: AgentClient,
    key: smime_proto::KeyId,
    cert: Certificate,
    extra: Vec<Certificate>,
    hash: HashAlg,
    pss: bool,
}

impl Signer {
    /// Connects, selects the key, and checks the options fit it.
    pub(super) fn new(cli: &Cli, a: &SignArgs) -> Result<Self, Failure> {
        let hash = match a.digest {
            Digest::Sha256 => HashAlg::Sha256,
            Digest::Sha384 => HashAlg::Sha384,
            Digest::Sha512 => HashAlg::Sha512,
        };
        let extra = load_certs(&a.certfile)?;
        let mut client = connect(cli)?;
        let keys = key_list(&mut client)?;
        let key = select(&keys, &a.key, can_sign).map_err(|e| Failure::Usage(e.into()))?;
        if a.pss && !key.algorithm.starts_with("rsa") {
            return Err(Failure::Usage(anyhow!(
                "--pss needs an RSA key; {} is {}",
                key.label,
                key.algorithm
            )));
        }
        Self::with_key(client, &keys, key, hash, a.pss, extra)
    }

    /// A signer for `key`, one of `keys` (the agent's list, which also supplies
    /// intermediate certificates), reached through `client`. `extra` certificates are
    /// included besides the chain found.
    pub(crate) fn with_key(
        client: AgentClient,
        keys: &[KeySummary],
        key: &KeySummary,
        hash: HashAlg,
        pss: bool,
        extra: Vec<Certificate>,
    ) -> Result<Self, Failure> {
        let cert = key
            .certificate
            .clone()
            .ok_or_else(|| Failure::Usage(anyhow!("key has no certificate")))?;
        // The chain up to (not including) a root, from the certificate store and the
        // agent's other certificates, so recipients can validate without fetching.
        let mut pool: Vec<Certificate> =
            keys.iter().filter_map(|k| k.certificate.clone()).collect();
        if let Ok(store) = crate::store::CertStore::default_location() {
            pool.extend(store.all().unwrap_or_default());
        }
        let mut extra = extra;
        extra.extend(intermediates(&cert, &pool));
        Ok(Self {
            key: key.info.id.clone(),
            client,
            cert,
            extra,
            hash,
            pss,
        })
    }

    /// A detached SignedData over content with this digest.
    pub(crate) fn sign_digest(&mut self, digest: &[u8]) -> Result<Vec<u8>, Failure> {
        let signer = RemoteSigner::new(&mut self.client, self.key.clone());
        let req = cms::sign::SignRequest {
            content_digest: digest,
            hash: self.hash,
            pss: self.pss,
            signer_cert: &self.cert,
            extra_certs: &self.extra,
        };
        match cms::sign::sign_detached(&req, &signer) {
            Ok(d) => Ok(d),
            Err(cms::Error::Signer(e)) => Err(match e.downcast::<AgentError>() {
                Ok(agent) => anyhow::Error::from(*agent)
                    .context("the agent could not sign")
                    .into(),
                Err(other) => Failure::Other(anyhow!(other)),
            }),
            Err(e) => Err(Failure::Other(anyhow!(e).context("building the signature"))),
        }
    }

    /// A detached SignedData over `content`, hashed as a stream.
    pub(crate) fn sign_reader(&mut self, content: impl Read) -> Result<Vec<u8>, Failure> {
        let digest = cms::digest_reader(self.hash, content)
            .context("reading the content")
            .map_err(Failure::Usage)?;
        self.sign_digest(&digest)
    }

    /// The digest algorithm (for `micalg`).
    pub(super) fn hash(&self) -> HashAlg {
        self.hash
    }
}

/// Whether a key can make signatures: it has a certificate and allows signing.
pub(crate) fn can_sign(k: &KeySummary) -> bool {
    k.certificate.is_some() && k.info.operations.contains(&Operation::Sign)
}

/// Issuer certificates of `cert` found in `pool` by name, nearest first, stopping at a
/// self-signed root (not included) or after 8 steps.
fn intermediates(cert: &Certificate, pool: &[Certificate]) -> Vec<Certificate> {
    let mut chain = Vec::new();
    let mut current = cert.clone();
    for _ in 0..8 {
        let tbs = current.tbs_certificate();
        if tbs.issuer() == tbs.subject() {
            break;
        }
        let Some(issuer) = pool
            .iter()
            .find(|c| c.tbs_certificate().subject() == tbs.issuer())
        else {
            break;
        };
        let itbs = issuer.tbs_certificate();
        if itbs.issuer() == itbs.subject() || chain.contains(issuer) {
            break;
        }
        chain.push(issuer.clone());
        current = issuer.clone();
    }
    chain
}

pub(super) fn sign(cli: &Cli, a: &SignArgs) -> Result<(), Failure> {
    let mut signer = Signer::new(cli, a)?;
    let mut out = Output::create(a.output.as_deref())
        .context("creating the output")
        .map_err(Failure::Usage)?;
    let io_err = |e: io::Error| Failure::Other(anyhow!(e).context("writing the output"));
    if !a.encrypt_to.is_empty() {
        // Sign, then encrypt the signed message (RFC 8551 §3.7: sign first, so the
        // signature is inside and protected).
        let mut signed = super::spool()?;
        super::smime_entity::sign_entity(
            &mut signer,
            rereadable(a.input.as_deref())?,
            &mut signed,
            !a.opaque,
        )?;
        signed.rewind().map_err(|e| Failure::Other(e.into()))?;
        let enc = crate::cli::EncryptArgs {
            to: a.encrypt_to.clone(),
            ..Default::default()
        };
        let signed = super::Rereadable {
            file: signed,
            name: "signed message".to_owned(),
        };
        super::encrypt::encrypt_to(cli, &enc, signed, &mut out)?;
    } else if a.mime || (a.opaque && !a.der && !a.pem) {
        super::smime_entity::sign_entity(
            &mut signer,
            rereadable(a.input.as_deref())?,
            &mut out,
            a.mime,
        )?;
    } else if a.opaque {
        let input = rereadable(a.input.as_deref())?;
        let detached = signer.sign_reader(BufReader::new(input.progress(&input.file)?))?;
        let mut content = input.file;
        content.rewind().map_err(|e| Failure::Other(e.into()))?;
        if a.pem {
            let mut der = super::spool()?;
            cms::opaque::write_attached(&detached, BufReader::new(content), &mut der)
                .map_err(|e| Failure::Other(anyhow!(e)))?;
            der.rewind().map_err(|e| Failure::Other(e.into()))?;
            cms::write_pem(&mut der, &mut out).map_err(io_err)?;
        } else {
            cms::opaque::write_attached(&detached, BufReader::new(content), &mut out)
                .map_err(|e| Failure::Other(anyhow!(e)))?;
        }
    } else {
        let der =
            signer.sign_reader(super::crlf::maybe(a.crlf, open_input(a.input.as_deref())?))?;
        if a.pem {
            out.write_all(cms::sign::to_pem(&der).as_bytes())
                .map_err(io_err)?;
        } else {
            out.write_all(&der).map_err(io_err)?;
        }
    }
    out.commit()
        .context("writing the output")
        .map_err(Failure::Other)
}
