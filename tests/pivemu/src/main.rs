//! `pivemu`: a virtual PIV card for the end-to-end tests. **A test fixture only — never
//! put real keys on it.**
//!
//! It runs Nitrokey's `piv-authenticator` applet (crates.io) on trussed's virtual platform
//! (`trussed::virt`) and plugs it into the `vsmartcard-vpcd` reader driver of `pcscd` with
//! the `vpicc` protocol (TCP, `127.0.0.1:35963` by default). To every PC/SC client —
//! OpenSC's PIV driver and `opensc-pkcs11.so`, `yubico-piv-tool`, the `yubikey` crate — it
//! looks like a PIV card in the reader "Virtual PCD 00 00". Starting the process inserts
//! the card; killing it removes the card.
//!
//! Why: the agent's smart-card paths (PC/SC events, OpenSC PKCS#11, native PIV) must be
//! tested in CI without hardware. See `../shared/notes/piv-emulator.md` for how this route
//! was checked, and `tests/support/pcsc.rs` for the harness that starts `pcscd` and this
//! program.
//!
//! **Insecure by design:** trussed's virtual platform seeds its RNG with a constant
//! (`[42; 32]`), so two fresh cards given the same commands generate the same keys. That
//! makes the tests reproducible and the card worthless for anything else. Card defaults:
//! PIN `123456`, PUK `12345678`, 3DES management key `010203040506070801020304050607080102030405060708`.
//!
//! Usage: `pivemu [--port PORT]` (or `PIVEMU_PORT`; default 35963, vpcd's first reader).
//! Environment:
//! - `PIVEMU_STATE=<dir>`: keep the card's flash (littlefs images `internal.bin`,
//!   `external.bin`) in `<dir>`, so keys, certificates and PINs survive a restart — a
//!   removed card that is inserted again. Without it the card lives in RAM and every start
//!   is a factory-fresh card.
//! - `PIVEMU_YK_VERSION=a.b.c`: the firmware version answered to YubiKey's GET VERSION
//!   (default 5.4.3, see the shims below).
//! - `PIVEMU_RESET_LOGOUT=1`: a card reset (SCardDisconnect or SCardReconnect with
//!   SCARD_RESET_CARD, power off) also ends the PIN verification, as on a real card (the
//!   applet's own `deselect` keeps it). Tests use it to catch clients that reset the card.
//!
//! Besides the applet, this program adds what a card reader's firmware and a YubiKey would:
//! - ISO 7816 command chaining (CLA bit 0x10) and GET RESPONSE / `61xx` for long answers;
//! - five shims: 1–4 for Yubico's clients (`yubico-piv-tool`, the `yubikey` crate), which
//!   OpenSC does not need, and 5 to play a YubiKey's other applets:
//!   1. SELECT with the 5-byte PIV RID `A0 00 00 03 08` is expanded to the 9-byte AID
//!      the applet matches (it otherwise answers 6A82);
//!   2. a command without Le gets up to 256 bytes of answer directly instead of a bare
//!      `61xx` (ykpiv's SELECT does not follow `61xx`);
//!   3. GET VERSION (INS 0xFD) answers `PIVEMU_YK_VERSION`: the applet says 6.6.6, and the
//!      `yubikey` crate reads the serial only for major 4 or 5, and picks an AES-192
//!      management key from 5.7 on where the applet's default is 3DES;
//!   4. GET METADATA (INS 0xF7): the applet's empty `9000` is answered `6D00` (not
//!      supported), so the `yubikey` crate falls back to its defaults instead of failing
//!      to parse;
//!   5. SELECT of a YubiKey's OTP or management applet (`A0 00 00 05 27 20 01`,
//!      `A0 00 00 05 27 47 11 17`) deselects PIV as on the real card: other commands
//!      answer `6D00` until PIV is selected again, and PIV has forgotten the verified
//!      PIN then. Tests use it to play "another application selected another applet".
//!
//! Any panic in the applet aborts the process, which clients see as a card removal.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iso7816::command::CommandView;
use piv_authenticator::{Authenticator, Options};
use trussed::Platform;
use trussed::backend::{Backend as _, BackendId};
use trussed::serde_extensions::{ExtensionDispatch, ExtensionId, ExtensionImpl};
use trussed::service::ServiceResources;
use trussed::types::Context;
use trussed::virt::{StorageConfig, StoreConfig};
use trussed_auth::AuthExtension;
use trussed_auth_backend::{AuthBackend, AuthContext, FilesystemLayout};
use trussed_chunked::ChunkedExtension;
use trussed_core::Error;
use trussed_core::api::{Reply, Request, reply, request};
use trussed_core::types::{Bytes, Location};
use trussed_hpke::HpkeExtension;
use trussed_rsa_alloc::SoftwareRsa;
use trussed_staging::{StagingBackend, StagingContext};
use trussed_wrap_key_to_file::WrapKeyToFileExtension;

/// Largest command after chaining, and largest answer (the applet's own limit).
const BUF: usize = 7609;

// ---------------------------------------------------------------------------------------
// trussed: the backends piv-authenticator needs besides the core one.

/// Dispatches requests to the auth (PIN), staging (chunked, HPKE, wrapped keys) and
/// software-RSA backends.
struct Dispatch {
    auth: AuthBackend,
    staging: StagingBackend,
}

enum BackendIds {
    Auth,
    Staging,
    Rsa,
}

enum ExtensionIds {
    Auth,
    Chunked,
    WrapKeyToFile,
    Hpke,
}

#[derive(Default)]
struct DispatchContext {
    auth: AuthContext,
    staging: StagingContext,
}

/// The order in which the service offers a request to the backends.
const BACKENDS: &[BackendId<BackendIds>] = &[
    BackendId::Custom(BackendIds::Auth),
    BackendId::Custom(BackendIds::Staging),
    BackendId::Custom(BackendIds::Rsa),
    BackendId::Core,
];

impl From<ExtensionIds> for u8 {
    fn from(id: ExtensionIds) -> u8 {
        match id {
            ExtensionIds::Auth => 0,
            ExtensionIds::Chunked => 1,
            ExtensionIds::WrapKeyToFile => 2,
            ExtensionIds::Hpke => 3,
        }
    }
}

impl TryFrom<u8> for ExtensionIds {
    type Error = Error;
    fn try_from(id: u8) -> Result<Self, Error> {
        match id {
            0 => Ok(Self::Auth),
            1 => Ok(Self::Chunked),
            2 => Ok(Self::WrapKeyToFile),
            3 => Ok(Self::Hpke),
            _ => Err(Error::InternalError),
        }
    }
}

impl ExtensionId<AuthExtension> for Dispatch {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Auth;
}
impl ExtensionId<ChunkedExtension> for Dispatch {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Chunked;
}
impl ExtensionId<WrapKeyToFileExtension> for Dispatch {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::WrapKeyToFile;
}
impl ExtensionId<HpkeExtension> for Dispatch {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Hpke;
}

impl ExtensionDispatch for Dispatch {
    type BackendId = BackendIds;
    type Context = DispatchContext;
    type ExtensionId = ExtensionIds;

    fn core_request<P: Platform>(
        &mut self,
        backend: &BackendIds,
        ctx: &mut Context<DispatchContext>,
        request: &Request,
        resources: &mut ServiceResources<P>,
    ) -> Result<Reply, Error> {
        match backend {
            BackendIds::Auth => {
                self.auth
                    .request(&mut ctx.core, &mut ctx.backends.auth, request, resources)
            }
            BackendIds::Staging => {
                self.staging
                    .request(&mut ctx.core, &mut ctx.backends.staging, request, resources)
            }
            BackendIds::Rsa => SoftwareRsa.request(&mut ctx.core, &mut (), request, resources),
        }
    }

    fn extension_request<P: Platform>(
        &mut self,
        backend: &BackendIds,
        extension: &ExtensionIds,
        ctx: &mut Context<DispatchContext>,
        request: &request::SerdeExtension,
        resources: &mut ServiceResources<P>,
    ) -> Result<reply::SerdeExtension, Error> {
        let core = &mut ctx.core;
        match (backend, extension) {
            (BackendIds::Auth, ExtensionIds::Auth) => {
                ExtensionImpl::<AuthExtension>::extension_request_serialized(
                    &mut self.auth,
                    core,
                    &mut ctx.backends.auth,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::Chunked) => {
                ExtensionImpl::<ChunkedExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::WrapKeyToFile) => {
                ExtensionImpl::<WrapKeyToFileExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::Hpke) => {
                ExtensionImpl::<HpkeExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            _ => Err(Error::RequestNotAvailable),
        }
    }
}

// ---------------------------------------------------------------------------------------
// vpicc: the card as vpcd sees it.

/// The PIV RID, as Yubico's clients select it.
const PIV_RID: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x08];
/// The (truncated) PIV AID the applet matches.
const PIV_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00];

/// Two other applets of a YubiKey: OTP and management. Selecting one deselects PIV.
const OTHER_AIDS: [&[u8]; 2] = [
    &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01],
    &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17],
];

const SW_OK: [u8; 2] = [0x90, 0x00];
const SW_WRONG_LENGTH: [u8; 2] = [0x67, 0x00];
const SW_INS_NOT_SUPPORTED: [u8; 2] = [0x6D, 0x00];
const SW_NO_CHAIN: [u8; 2] = [0x68, 0x83];

struct Card<T: piv_authenticator::Client> {
    piv: Authenticator<T>,
    /// The chained command so far (CLA bit 0x10 set on all but the last part).
    chain: Option<iso7816::Command<BUF>>,
    /// Answer bytes still to be fetched with GET RESPONSE.
    pending: Vec<u8>,
    yk_version: [u8; 3],
    /// Another applet is selected (shim 5): PIV commands are not understood.
    other_applet: bool,
    /// `PIVEMU_RESET_LOGOUT`: a reset also logs the PIN out.
    reset_logout: bool,
}

impl<T: piv_authenticator::Client> Card<T> {
    fn apdu(&mut self, raw: &[u8]) -> Vec<u8> {
        let Ok(view) = CommandView::try_from(raw) else {
            return SW_WRONG_LENGTH.to_vec();
        };
        let ins = u8::from(view.instruction());
        // GET RESPONSE: the next part of a long answer.
        if ins == 0xC0 && self.chain.is_none() {
            return self.answer(Vec::new(), view.expected());
        }
        self.pending.clear();

        // Command chaining: collect the parts, answer 9000 until the last one.
        let chained = view.class().chain().not_the_last();
        if chained || self.chain.is_some() {
            let part = match self.chain.as_mut() {
                Some(cmd) => cmd.extend_from_command_view(view).is_ok(),
                None => match view.to_owned::<BUF>() {
                    Ok(cmd) => {
                        self.chain = Some(cmd);
                        true
                    }
                    Err(_) => false,
                },
            };
            if !part {
                self.chain = None;
                return SW_WRONG_LENGTH.to_vec();
            }
            if chained {
                return SW_OK.to_vec();
            }
            let Some(whole) = self.chain.take() else {
                return SW_NO_CHAIN.to_vec();
            };
            return self.command(whole.as_view());
        }
        self.command(view)
    }

    fn command(&mut self, view: CommandView<'_>) -> Vec<u8> {
        let ins = u8::from(view.instruction());
        // Shim 3: GET VERSION answers what the YubiKey clients expect.
        if ins == 0xFD {
            let mut out = self.yk_version.to_vec();
            out.extend_from_slice(&SW_OK);
            return out;
        }
        // Shim 5: another applet of a YubiKey (OTP, management). Selecting it deselects
        // PIV, as on the real card: PIV commands answer 6D00 until PIV is selected again,
        // and PIV has forgotten the verified PIN then (a VERIFY logout is passed to the
        // applet, whose own deselect does nothing).
        if ins == 0xA4 && view.p1 == 0x04 && OTHER_AIDS.contains(&view.data()) {
            self.other_applet = true;
            return SW_OK.to_vec();
        }
        if self.other_applet {
            if ins != 0xA4 {
                return SW_INS_NOT_SUPPORTED.to_vec();
            }
            if view.p1 == 0x04 && view.data().starts_with(&PIV_RID) {
                self.other_applet = false;
                let logout = CommandView::try_from(&[0x00, 0x20, 0xFF, 0x80][..]).expect("VERIFY");
                let mut reply = heapless::Vec::<u8, BUF>::new();
                let _ = self.piv.respond(logout, reply.as_mut_view());
            }
        }
        // Shim 1: SELECT by the 5-byte PIV RID.
        if ins == 0xA4 && view.p1 == 0x04 && view.data() == PIV_RID {
            let mut raw = vec![view.class().into_inner(), ins, view.p1, view.p2, 9];
            raw.extend_from_slice(&PIV_AID);
            if view.expected() > 0 {
                raw.push(0);
            }
            let full = CommandView::try_from(raw.as_slice()).expect("a valid SELECT");
            return self.respond(full, view.expected());
        }
        self.respond(view, view.expected())
    }

    fn respond(&mut self, view: CommandView<'_>, le: usize) -> Vec<u8> {
        let ins = u8::from(view.instruction());
        let mut reply = heapless::Vec::<u8, BUF>::new();
        match self.piv.respond(view, reply.as_mut_view()) {
            Ok(()) => {
                // Shim 4: GET METADATA is a stub in the applet.
                if ins == 0xF7 && reply.is_empty() {
                    return SW_INS_NOT_SUPPORTED.to_vec();
                }
                self.answer(reply.to_vec(), le)
            }
            Err(status) => <[u8; 2]>::from(status).to_vec(),
        }
    }

    /// Sends up to `le` bytes of `data` (then of what is pending), announcing the rest
    /// with `61xx`. Shim 2: no Le means up to 256 bytes.
    fn answer(&mut self, data: Vec<u8>, le: usize) -> Vec<u8> {
        if !data.is_empty() {
            self.pending = data;
        }
        let n = self.pending.len().min(if le == 0 { 256 } else { le });
        let mut out: Vec<u8> = self.pending.drain(..n).collect();
        match self.pending.len() {
            0 => out.extend_from_slice(&SW_OK),
            rest => out.extend_from_slice(&[0x61, u8::try_from(rest.min(256) % 256).unwrap_or(0)]),
        }
        out
    }
}

impl<T: piv_authenticator::Client> vpicc::VSmartCard for Card<T> {
    fn power_off(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        self.chain = None;
        self.pending.clear();
        self.piv.deselect();
        self.other_applet = false;
        if self.reset_logout {
            // VERIFY with P1 = FF: reset the PIN's security status (SP 800-73-4).
            if let Ok(logout) = CommandView::try_from(&[0x00, 0x20, 0xFF, 0x80][..]) {
                let _ = self.respond(logout, 0);
                eprintln!("pivemu: reset: PIN logged out");
            }
            self.pending.clear();
        }
    }

    fn execute(&mut self, msg: &[u8]) -> Vec<u8> {
        self.apdu(msg)
    }
}

// ---------------------------------------------------------------------------------------

fn usage() -> ! {
    eprintln!(
        "usage: pivemu [--port PORT]\n\
         A virtual PIV card for tests (insecure: fixed RNG seed), attached to vsmartcard-vpcd\n\
         on 127.0.0.1:PORT (default $PIVEMU_PORT, else 35963).\n\
         PIVEMU_STATE=<dir> keeps the card's flash in <dir>; PIVEMU_YK_VERSION=5.4.3 is the\n\
         version answered to YubiKey's GET VERSION."
    );
    std::process::exit(2)
}

fn parse_version(s: &str) -> Option<[u8; 3]> {
    let parts: Vec<u8> = s
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

fn main() {
    let mut port: u16 = std::env::var("PIVEMU_PORT")
        .ok()
        .map(|p| p.parse().unwrap_or_else(|_| usage()))
        .unwrap_or(vpicc::DEFAULT_PORT);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let yk_version = match std::env::var("PIVEMU_YK_VERSION") {
        Ok(v) => parse_version(&v).unwrap_or_else(|| {
            eprintln!("pivemu: PIVEMU_YK_VERSION must look like 5.4.3");
            std::process::exit(2)
        }),
        Err(_) => [5, 4, 3],
    };
    let store = match std::env::var_os("PIVEMU_STATE") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("pivemu: {}: {e}", dir.display());
                std::process::exit(1)
            }
            StoreConfig {
                internal: StorageConfig::filesystem(dir.join("internal.bin")),
                external: StorageConfig::filesystem(dir.join("external.bin")),
                volatile: StorageConfig::ram(),
            }
        }
        None => StoreConfig::ram(),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    let dispatch = Dispatch {
        // The hardware key is a constant too: this card has no secrets worth keeping.
        auth: AuthBackend::with_hw_key(
            Location::Internal,
            {
                let mut key = Bytes::new();
                key.extend_from_slice(&[0x42; 32]).expect("32 bytes fit");
                key
            },
            FilesystemLayout::V0,
        ),
        staging: StagingBackend::new(),
    };
    let result = trussed::virt::with_platform(store, |platform| {
        platform.run_client_with_backends("piv", dispatch, BACKENDS, |client| {
            let mut card = Card {
                piv: Authenticator::new(client, Options::default()),
                chain: None,
                pending: Vec::new(),
                yk_version,
                other_applet: false,
                reset_logout: std::env::var_os("PIVEMU_RESET_LOGOUT").is_some(),
            };
            // vpcd may not be listening yet (pcscd starting): retry for 10 s.
            let start = Instant::now();
            let conn = loop {
                match vpicc::connect_socket(addr) {
                    Ok(conn) => break conn,
                    Err(e) if start.elapsed() > Duration::from_secs(10) => {
                        return Err(format!("cannot connect to vpcd at {addr}: {e}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            eprintln!("pivemu: card inserted in the vpcd reader at {addr}");
            // Runs until vpcd closes the connection (pcscd stopped).
            conn.run(&mut card)
                .map_err(|e| format!("vpcd connection closed: {e}"))
        })
    });
    if let Err(e) = result {
        eprintln!("pivemu: {e}");
        std::process::exit(1)
    }
}
