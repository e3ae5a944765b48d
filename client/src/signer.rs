//! The agent as a [`DigestSigner`]: the CMS builder hands it the digest of the signed
//! attributes, the agent signs it on the token.

use std::cell::RefCell;

use smime_proto::{KeyId, SignAlgorithm};

use crate::agent::{AgentClient, AgentError};
use crate::cms::sign::DigestSigner;

/// Signs digests with one key through an agent connection.
#[derive(Debug)]
pub struct RemoteSigner<'a> {
    client: RefCell<&'a mut AgentClient>,
    key: KeyId,
}

impl<'a> RemoteSigner<'a> {
    /// A signer for `key` over `client`.
    pub fn new(client: &'a mut AgentClient, key: KeyId) -> Self {
        Self {
            client: RefCell::new(client),
            key,
        }
    }
}

impl DigestSigner for RemoteSigner<'_> {
    type Error = AgentError;

    fn sign_digest(&self, algorithm: SignAlgorithm, digest: &[u8]) -> Result<Vec<u8>, AgentError> {
        self.client.borrow_mut().sign(&self.key, algorithm, digest)
    }
}
