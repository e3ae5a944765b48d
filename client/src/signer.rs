//! The agent as a [`DigestSigner`] and as a key unwrapper. The CMS builder hands the signer the digest of the signed
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

/// Unwraps content-encryption keys through an agent connection: RSA decryption or ECDH
/// with the keys the agent holds.
#[derive(Debug)]
pub struct RemoteUnwrapper<'a> {
    client: RefCell<&'a mut AgentClient>,
    keys: Vec<KeyId>,
}

impl<'a> RemoteUnwrapper<'a> {
    /// An unwrapper for `keys` (in the order of the certificates given to
    /// [`crate::cms::decrypt::decrypt`]).
    pub fn new(client: &'a mut AgentClient, keys: Vec<KeyId>) -> Self {
        Self {
            client: RefCell::new(client),
            keys,
        }
    }

    fn key(&self, index: usize) -> Result<&KeyId, AgentError> {
        self.keys
            .get(index)
            .ok_or_else(|| AgentError::Unexpected(format!("no key #{index}")))
    }
}

impl crate::cms::decrypt::KeyUnwrapper for RemoteUnwrapper<'_> {
    type Error = AgentError;

    fn decrypt_key(
        &self,
        key: usize,
        alg: smime_proto::DecryptAlgorithm,
        wrapped: &[u8],
    ) -> Result<smime_proto::SecretBytes, AgentError> {
        self.client
            .borrow_mut()
            .decrypt(self.key(key)?, alg, wrapped)
    }

    fn ecdh(&self, key: usize, peer_point: &[u8]) -> Result<smime_proto::SecretBytes, AgentError> {
        self.client.borrow_mut().ecdh(self.key(key)?, peer_point)
    }
}
