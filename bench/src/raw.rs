//! The raw limit: cryptoki → SoftHSM in this process, one session per thread, logged in once.

use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::measure::{Stats, run_threads};
use crate::{Env, Op};

/// A logged-in module with the benchmark keys found.
pub(crate) struct Raw {
    p11: Pkcs11,
    slot: Slot,
    /// Holds the login for the whole application.
    _login: Session,
    rsa: ObjectHandle,
    ec: ObjectHandle,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

struct Worker {
    session: Session,
    key: ObjectHandle,
    op: Op,
    input: Vec<u8>,
}

impl Raw {
    pub(crate) fn open(env: &Env) -> anyhow::Result<Self> {
        let p11 = Pkcs11::new(&env.module).context("loading the PKCS#11 module")?;
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .context("C_Initialize")?;
        let slot = p11
            .get_slots_with_token()?
            .into_iter()
            .find(|s| {
                p11.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim() == crate::TOKEN_LABEL)
            })
            .ok_or_else(|| anyhow!("no token labelled {}", crate::TOKEN_LABEL))?;
        let login = p11.open_ro_session(slot)?;
        login
            .login(UserType::User, Some(&AuthPin::from(env.pin.clone())))
            .context("C_Login")?;
        let find = |label: &str| -> anyhow::Result<ObjectHandle> {
            login
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])?
                .first()
                .copied()
                .ok_or_else(|| anyhow!("private key {label} not found"))
        };
        let (rsa, ec) = (find("alice-rsa")?, find("alice-ec")?);
        Ok(Self {
            p11,
            slot,
            _login: login,
            rsa,
            ec,
        })
    }

    /// A new session of the logged-in application (C_Login holds for all of them).
    pub(crate) fn session(&self) -> anyhow::Result<Session> {
        Ok(self.p11.open_ro_session(self.slot)?)
    }

    /// The key and the exact input of C_Sign / C_Decrypt for `op`: CKM_RSA_PKCS signs
    /// DigestInfo || hash, CKM_ECDSA signs the bare hash, decrypt takes the ciphertext.
    pub(crate) fn input(&self, op: Op, ct: &[u8]) -> (ObjectHandle, Vec<u8>) {
        match op {
            Op::RsaSign => (
                self.rsa,
                [crate::SHA256_DIGEST_INFO, &crate::DIGEST].concat(),
            ),
            Op::EcdsaSign => (self.ec, crate::DIGEST.to_vec()),
            Op::RsaDecrypt => (self.rsa, ct.to_vec()),
        }
    }

    /// `threads` threads doing `op` back to back, each in its own session.
    pub(crate) fn bench(
        &self,
        op: Op,
        threads: usize,
        ct: &[u8],
        warm: Duration,
        dur: Duration,
    ) -> anyhow::Result<Stats> {
        let (key, input) = self.input(op, ct);
        let workers = (0..threads)
            .map(|_| {
                Ok(Worker {
                    session: self.session()?,
                    key,
                    op,
                    input: input.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        run_threads(workers, warm, dur, &|w: &mut Worker| {
            check(w.op, &private_op(&w.session, w.key, w.op, &w.input)?)
        })
    }
}

/// One C_Sign or C_Decrypt: the operation every phase measures.
pub(crate) fn private_op(
    session: &Session,
    key: ObjectHandle,
    op: Op,
    input: &[u8],
) -> anyhow::Result<Vec<u8>> {
    Ok(match op {
        Op::RsaDecrypt => session.decrypt(&Mechanism::RsaPkcs, key, input)?,
        Op::RsaSign => session.sign(&Mechanism::RsaPkcs, key, input)?,
        Op::EcdsaSign => session.sign(&Mechanism::Ecdsa, key, input)?,
    })
}

/// The result has the size it must have, so a benchmark cannot time nothing: a 2048-bit
/// RSA signature, a P-256 r || s, the 32-byte content key.
pub(crate) fn check(op: Op, out: &[u8]) -> anyhow::Result<()> {
    let want = match op {
        Op::RsaSign => 256,
        Op::EcdsaSign => 64,
        Op::RsaDecrypt => 32,
    };
    ensure!(
        out.len() == want,
        "{}: {} bytes, want {want}",
        op.name(),
        out.len()
    );
    Ok(())
}
