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

    /// `threads` threads doing `op` back to back, each in its own session.
    pub(crate) fn bench(
        &self,
        op: Op,
        threads: usize,
        ct: &[u8],
        warm: Duration,
        dur: Duration,
    ) -> anyhow::Result<Stats> {
        // CKM_RSA_PKCS signs DigestInfo || hash; CKM_ECDSA signs the bare hash.
        let (key, input) = match op {
            Op::RsaSign => (
                self.rsa,
                [crate::SHA256_DIGEST_INFO, &crate::DIGEST].concat(),
            ),
            Op::EcdsaSign => (self.ec, crate::DIGEST.to_vec()),
            Op::RsaDecrypt => (self.rsa, ct.to_vec()),
        };
        let workers = (0..threads)
            .map(|_| {
                Ok(Worker {
                    session: self.p11.open_ro_session(self.slot)?,
                    key,
                    op,
                    input: input.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        run_threads(workers, warm, dur, &|w: &mut Worker| {
            match w.op {
                Op::RsaDecrypt => {
                    let pt = w.session.decrypt(&Mechanism::RsaPkcs, w.key, &w.input)?;
                    ensure!(pt.len() == 32, "decrypted {} bytes, want 32", pt.len());
                }
                Op::RsaSign | Op::EcdsaSign => {
                    let mech = if w.op == Op::RsaSign {
                        Mechanism::RsaPkcs
                    } else {
                        Mechanism::Ecdsa
                    };
                    let sig = w.session.sign(&mech, w.key, &w.input)?;
                    ensure!(!sig.is_empty(), "empty signature");
                }
            }
            Ok(())
        })
    }
}
