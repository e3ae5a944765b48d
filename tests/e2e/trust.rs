//! Certificate trust end to end: a CA hierarchy made with `openssl ca`, messages signed by
//! `openssl cms`, and `smime verify` judging them: validity periods, missing
//! intermediates, EKU, the From: check, cross-certification, and revocation by CRL (file,
//! distribution point over HTTP, cache) and by OCSP (`openssl ocsp` answering behind a
//! small HTTP server), with the responder down under `--revocation soft` and `hard`.
//!
//! Everything listens on 127.0.0.1 only: the HTTP server is a thread of the test bound to
//! loopback; it serves the CRL files and hands OCSP POSTs to `openssl ocsp -reqin`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use smime_tests::{built, openssl_in, run, s};

/// A loopback HTTP/1.0 server: `GET /NAME` serves `DIR/NAME`; `POST /ocsp` answers with
/// `openssl ocsp` as the responder of the CA `sub` in `DIR`. Counts requests by kind.
struct Server {
    port: u16,
    gets: Arc<AtomicUsize>,
    posts: Arc<AtomicUsize>,
    /// How OCSP is answered: one of the `OCSP_*` constants.
    mode: Arc<AtomicUsize>,
}

/// Responses signed by the delegated responder `ocsp.pem`.
const OCSP_DELEGATED: usize = 0;
/// Responses signed by the CA `sub` itself.
const OCSP_BY_CA: usize = 1;
/// Responses signed by `rogue.pem`: issued by `sub`, but without id-kp-OCSPSigning.
const OCSP_ROGUE: usize = 2;
/// The previous response again (its nonce is the previous request's).
const OCSP_REPLAY: usize = 3;
/// A response made three days ago, valid for one day (stale).
const OCSP_STALE: usize = 4;

impl Server {
    fn start(dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gets = Arc::new(AtomicUsize::new(0));
        let posts = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(AtomicUsize::new(OCSP_DELEGATED));
        let (g, p, m, dir) = (gets.clone(), posts.clone(), mode.clone(), dir.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = serve(conn, &dir, &g, &p, m.load(Ordering::SeqCst));
            }
        });
        Server {
            port,
            gets,
            posts,
            mode,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

fn serve(
    conn: TcpStream,
    dir: &Path,
    gets: &AtomicUsize,
    posts: &AtomicUsize,
    mode: usize,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':')
            && n.trim().eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let name = target.trim_start_matches('/');
    let (status, ctype, data) = if method == "POST" && name == "ocsp" {
        posts.fetch_add(1, Ordering::SeqCst);
        let id = posts.load(Ordering::SeqCst);
        let req = dir.join(format!("ocsp-{id}.req"));
        let resp = dir.join(format!("ocsp-{id}.resp"));
        std::fs::write(&req, &body)?;
        let (signer, key) = match mode {
            OCSP_BY_CA => ("sub.pem", "sub.key"),
            OCSP_ROGUE => ("rogue.pem", "rogue.key"),
            _ => ("ocsp.pem", "ocsp.key"),
        };
        let mut cmd = if mode == OCSP_STALE {
            let mut c = Command::new("faketime");
            c.args(["-f", "-3d", "openssl"]);
            c
        } else {
            Command::new("openssl")
        };
        let out = run(cmd
            .args([
                "ocsp",
                "-index",
                "sub.index",
                "-CA",
                "sub.pem",
                "-rsigner",
                signer,
            ])
            .args([
                "-rkey",
                key,
                "-ndays",
                "1",
                "-reqin",
                s(&req),
                "-respout",
                s(&resp),
            ])
            .current_dir(dir));
        let answer = if mode == OCSP_REPLAY {
            dir.join(format!("ocsp-{}.resp", id - 1))
        } else {
            resp
        };
        match std::fs::read(&answer) {
            Ok(d) if out.status.success() => ("200 OK", "application/ocsp-response", d),
            _ => ("500 Error", "text/plain", b"responder failed".to_vec()),
        }
    } else if method == "GET" && !name.contains('/') && dir.join(name).is_file() {
        gets.fetch_add(1, Ordering::SeqCst);
        (
            "200 OK",
            "application/pkix-crl",
            std::fs::read(dir.join(name))?,
        )
    } else {
        ("404 Not Found", "text/plain", b"no".to_vec())
    };
    let mut w = conn;
    write!(
        w,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )?;
    w.write_all(&data)?;
    w.flush()
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `date -u` shifted by `days`, as `openssl ca -startdate/-enddate` wants it.
fn date(days: i64) -> String {
    let out =
        run(Command::new("date").args(["-u", "-d", &format!("{days} days"), "+%y%m%d%H%M%SZ"]));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A CA made with `openssl ca` (P-256, index file, CRLs) in a shared directory.
struct Ca {
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn conf(dir: &Path, name: &str) {
        std::fs::create_dir_all(dir.join(format!("{name}.certs"))).unwrap();
        std::fs::write(dir.join(format!("{name}.index")), "").unwrap();
        std::fs::write(
            dir.join(format!("{name}.serial")),
            format!("{:02X}\n", 16 + name.len()),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{name}.crlnumber")), "01\n").unwrap();
        std::fs::write(
            dir.join(format!("{name}.cnf")),
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {name}.index\nnew_certs_dir = {name}.certs\n\
                 certificate = {name}.pem\nprivate_key = {name}.key\nserial = {name}.serial\n\
                 crlnumber = {name}.crlnumber\ndefault_md = sha256\ndefault_days = 30\n\
                 default_crl_days = 1\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n"
            ),
        )
        .unwrap();
    }

    /// A self-signed root `NAME.pem`.
    fn root(dir: &Path, name: &str) -> Self {
        Self::conf(dir, name);
        openssl_in(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "60",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Issues `FILE.pem` (key `FILE.key`, new unless it exists) to CN `cn` with the
    /// extensions `ext` (openssl extension-file lines); `dates` are optional
    /// -startdate/-enddate.
    fn issue(&self, file: &str, cn: &str, ext: &str, dates: Option<(String, String)>) -> PathBuf {
        let key = format!("{file}.key");
        let csr = format!("{file}.csr");
        if self.dir.join(&key).exists() {
            openssl_in(
                &self.dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
        } else {
            openssl_in(
                &self.dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
        }
        std::fs::write(self.dir.join(format!("{file}.ext")), ext).unwrap();
        let cnf = format!("{}.cnf", self.name);
        let extf = format!("{file}.ext");
        let out = format!("{file}.pem");
        let mut args = vec![
            "ca", "-batch", "-notext", "-config", &cnf, "-in", &csr, "-out", &out, "-extfile",
            &extf,
        ];
        let (sd, ed);
        if let Some((a, b)) = dates {
            (sd, ed) = (a, b);
            args.extend(["-startdate", &sd, "-enddate", &ed]);
        }
        openssl_in(&self.dir, &args);
        self.dir.join(out)
    }

    fn revoke(&self, cert: &Path) {
        let cnf = format!("{}.cnf", self.name);
        openssl_in(&self.dir, &["ca", "-config", &cnf, "-revoke", s(cert)]);
    }

    /// Writes the CRL `NAME.crl` (DER).
    fn crl(&self) -> PathBuf {
        let cnf = format!("{}.cnf", self.name);
        let pem = format!("{}.crl.pem", self.name);
        let der = format!("{}.crl", self.name);
        openssl_in(&self.dir, &["ca", "-config", &cnf, "-gencrl", "-out", &pem]);
        openssl_in(
            &self.dir,
            &["crl", "-in", &pem, "-outform", "DER", "-out", &der],
        );
        self.dir.join(der)
    }
}

/// The test PKI: `root` -> `sub` -> signers, a delegated OCSP responder for `sub`, and the
/// HTTP server with both CRLs.
struct Pki {
    dir: tempfile::TempDir,
    server: Server,
    root: Ca,
    sub: Ca,
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let root = Ca::root(dir.path(), "root");
        Ca::conf(dir.path(), "sub");
        root.issue(
            "sub",
            "sub",
            &format!(
                "{CA_EXT}crlDistributionPoints=URI:{}\n",
                server.url("root.crl")
            ),
            None,
        );
        let sub = Ca {
            dir: dir.path().to_owned(),
            name: "sub".into(),
        };
        sub.issue(
            "ocsp",
            "sub OCSP responder",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=OCSPSigning\nnoCheck=ignored\n",
            None,
        );
        sub.issue(
            "rogue",
            "sub rogue responder",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=emailProtection\n",
            None,
        );
        let pki = Pki {
            dir,
            server,
            root,
            sub,
        };
        pki.publish_crls();
        pki
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn publish_crls(&self) {
        self.root.crl();
        self.sub.crl();
    }

    /// Signer extensions: S/MIME with `email`, plus `extra` lines.
    fn signer_ext(email: &str, extra: &str) -> String {
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=emailProtection\nsubjectAltName=email:{email}\n{extra}"
        )
    }

    fn ocsp_aia(&self) -> String {
        format!("authorityInfoAccess=OCSP;URI:{}\n", self.server.url("ocsp"))
    }

    fn crl_dp(&self) -> String {
        format!("crlDistributionPoints=URI:{}\n", self.server.url("sub.crl"))
    }

    /// `openssl cms -sign`s a short mail From: `from` as `signer` (with `sub.pem` in the
    /// message unless `without_sub`); returns the S/MIME file.
    /// Issues `NAME` (an S/MIME signer for NAME@example.net; `ext` adds CRL DP / AIA
    /// lines) under the sub-CA and signs a message from NAME@example.net with it.
    /// Returns the certificate and the message.
    fn signed_by(&self, name: &str, ext: &str) -> (PathBuf, PathBuf) {
        let cert = self.sub.issue(
            name,
            name,
            &Pki::signer_ext(&format!("{name}@example.net"), ext),
            None,
        );
        (cert, self.sign(name, &format!("{name}@example.net"), false))
    }

    fn sign(&self, signer: &str, from: &str, without_sub: bool) -> PathBuf {
        std::fs::write(
            self.path("body.txt"),
            "Content-Type: text/plain\r\n\r\nhello\r\n",
        )
        .unwrap();
        let out = format!("{signer}-signed.eml");
        let cert = format!("{signer}.pem");
        let key = format!("{signer}.key");
        let mut args = vec![
            "cms",
            "-sign",
            "-in",
            "body.txt",
            "-signer",
            &cert,
            "-inkey",
            &key,
            "-from",
            from,
            "-to",
            "bob@example.net",
            "-subject",
            "trust",
            "-out",
            &out,
        ];
        if !without_sub {
            args.extend(["-certfile", "sub.pem"]);
        }
        openssl_in(self.dir.path(), &args);
        self.path(&out)
    }

    /// `smime verify --in MSG --trust root.pem --json ARGS`, with a private CRL cache and
    /// certificate store.
    fn verify(&self, msg: &Path, args: &[&str]) -> (Output, serde_json::Value) {
        let out = run(Command::new(built("smime"))
            .args(["verify", "--in", s(msg), "--json"])
            .args(args)
            .env("SMIME_CRL_CACHE", self.path("crl-cache"))
            .env("SMIME_CERT_STORE", self.path("store"))
            .env_remove("SMIME_TRUST")
            .env("XDG_CONFIG_HOME", self.path("no-config")));
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "verify printed no JSON ({e}): stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, json)
    }

    fn root_pem(&self) -> String {
        s(&self.path("root.pem")).to_owned()
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// The failed check and the time it was checked at, from a failure verdict.
fn failure(j: &serde_json::Value) -> (String, String, String) {
    let f = &j["failure"];
    (
        f["check"].as_str().unwrap_or_default().to_owned(),
        f["at"].as_str().unwrap_or_default().to_owned(),
        f["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Asserts that verification failed (exit 1, one line on stderr) at `check`, with every
/// one of `needles` in the detail; returns the time it was checked at.
fn rejected(out: &Output, j: &serde_json::Value, check: &str, needles: &[&str]) -> String {
    assert_eq!(code(out), Some(1), "{j}");
    let (got, at, detail) = failure(j);
    assert_eq!(got, check, "{j}");
    for n in needles {
        assert!(detail.contains(n), "{n:?} not in {detail}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    at
}

#[test]
fn good_signer_is_checked_by_crl_from_the_distribution_point_and_then_the_cache() {
    let pki = Pki::new();
    let (_, msg) = pki.signed_by("alice", &pki.crl_dp());
    let root = pki.root_pem();
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "hard"]);
    assert_eq!(code(&out), Some(0), "{j}");
    let rev = &j["path"]["revocation"];
    assert_eq!(rev["status"], "good", "{j}");
    let sources: Vec<&str> = rev["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            format!("crl {}", pki.server.url("sub.crl")),
            format!("crl {}", pki.server.url("root.crl"))
        ],
        "{j}"
    );
    assert_eq!(pki.server.gets.load(Ordering::SeqCst), 2);
    // Again: both CRLs come from the cache, nothing is fetched.
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "hard"]);
    assert_eq!(code(&out), Some(0), "{j}");
    assert_eq!(
        pki.server.gets.load(Ordering::SeqCst),
        2,
        "the cached CRLs were fetched again"
    );
    assert!(
        j["path"]["revocation"]["source"]
            .as_str()
            .unwrap()
            .contains("crl-cache http://127.0.0.1"),
        "{j}"
    );
    // The human verdict names the status and its source.
    let out = run(Command::new(built("smime"))
        .args([
            "verify",
            "--in",
            s(&msg),
            "--trust",
            &root,
            "--revocation",
            "hard",
        ])
        .env("SMIME_CRL_CACHE", pki.path("crl-cache"))
        .env("SMIME_CERT_STORE", pki.path("store")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("revocation good (source: crl-cache http://127.0.0.1"),
        "{text}"
    );
}

#[test]
fn revoked_signer_fails_by_crl_file_and_by_distribution_point() {
    let pki = Pki::new();
    let (mallory, msg) = pki.signed_by("mallory", &pki.crl_dp());
    let root = pki.root_pem();
    // Before revocation it is good.
    let (out, j) = pki.verify(
        &msg,
        &[
            "--trust",
            &root,
            "--offline",
            "--crl",
            s(&pki.path("sub.crl")),
            "--crl",
            s(&pki.path("root.crl")),
        ],
    );
    assert_eq!(code(&out), Some(0), "{j}");
    assert_eq!(j["path"]["revocation"]["status"], "good");
    assert_eq!(j["path"]["revocation"]["source"], "crl (message or --crl)");
    pki.sub.revoke(&mallory);
    pki.publish_crls();
    for args in [
        vec![
            "--trust",
            &root,
            "--offline",
            "--crl",
            s(&pki.path("sub.crl")),
        ],
        vec!["--trust", &root],
    ] {
        let (out, j) = pki.verify(&msg, &args);
        let at = rejected(&out, &j, "revoked", &["CN=mallory", "source: crl"]);
        assert_eq!(at, "now", "{args:?}: {j}");
    }
    // sub.crl for mallory and root.crl for sub, once each.
    assert_eq!(pki.server.gets.load(Ordering::SeqCst), 2);
}

#[test]
fn ocsp_good_and_revoked_with_a_delegated_responder() {
    let pki = Pki::new();
    let ext = Pki::signer_ext("carol@example.net", &pki.ocsp_aia());
    pki.sub.issue("carol", "carol", &ext, None);
    let dave = pki.sub.issue(
        "dave",
        "dave",
        &Pki::signer_ext("dave@example.net", &pki.ocsp_aia()),
        None,
    );
    pki.sub.revoke(&dave);
    let root = pki.root_pem();
    let good = pki.sign("carol", "carol@example.net", false);
    let (out, j) = pki.verify(&good, &["--trust", &root, "--revocation", "hard"]);
    assert_eq!(code(&out), Some(0), "{j}");
    let certs = j["path"]["revocation"]["certificates"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        certs[0]["source"],
        format!("ocsp {}", pki.server.url("ocsp")),
        "{j}"
    );
    assert_eq!(
        certs[1]["source"],
        format!("crl {}", pki.server.url("root.crl")),
        "{j}"
    );
    assert_eq!(pki.server.posts.load(Ordering::SeqCst), 1);

    let revoked = pki.sign("dave", "dave@example.net", false);
    let (out, j) = pki.verify(&revoked, &["--trust", &root, "--revocation", "soft"]);
    rejected(
        &out,
        &j,
        "revoked",
        &["CN=dave", "source: ocsp http://127.0.0.1"],
    );

    // --ocsp-url overrides the AIA: a responder that is down leaves carol's status
    // unknown (no CRL distribution point), which hard mode refuses.
    let dead = format!("http://127.0.0.1:{}/ocsp", dead_port());
    let (out, j) = pki.verify(
        &good,
        &[
            "--trust",
            &root,
            "--revocation",
            "hard",
            "--ocsp-url",
            &dead,
        ],
    );
    assert_eq!(code(&out), Some(1), "{j}");
    assert_eq!(failure(&j).0, "revocation-unknown", "{j}");
}

#[test]
fn ocsp_responder_down_passes_soft_and_fails_hard() {
    let pki = Pki::new();
    let dead = format!(
        "authorityInfoAccess=OCSP;URI:http://127.0.0.1:{}/ocsp\n",
        dead_port()
    );
    let (_, msg) = pki.signed_by("erin", &dead);
    let root = pki.root_pem();
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "soft"]);
    assert_eq!(code(&out), Some(0), "{j}");
    let rev = &j["path"]["revocation"];
    assert_eq!(rev["status"], "unknown", "{j}");
    let notes = rev["certificates"][0]["notes"].to_string();
    assert!(notes.contains("OCSP http://127.0.0.1"), "{notes}");
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "hard"]);
    let at = rejected(
        &out,
        &j,
        "revocation-unknown",
        &["CN=erin", "OCSP http://127.0.0.1"],
    );
    assert_eq!(at, "now", "{j}");
    // --revocation off does not look.
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "off"]);
    assert_eq!(code(&out), Some(0), "{j}");
    assert_eq!(j["path"]["revocation"]["status"], "not-checked", "{j}");
}

#[test]
fn expired_and_not_yet_valid_signers_fail_the_validity_check_now() {
    let pki = Pki::new();
    let root = pki.root_pem();
    for (name, dates, want) in [
        ("old", (date(-20), date(-10)), "expired now"),
        ("early", (date(10), date(20)), "not yet valid now"),
    ] {
        pki.sub.issue(
            name,
            name,
            &Pki::signer_ext(&format!("{name}@example.net"), ""),
            Some(dates),
        );
        let msg = pki.sign(name, &format!("{name}@example.net"), false);
        let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "off"]);
        assert_eq!(code(&out), Some(1), "{name}: {j}");
        let (check, at, detail) = failure(&j);
        assert_eq!(check, "validity", "{name}: {j}");
        // The message was signed just now, so the signing-time check fails the same way;
        // the verdict reports the verification time first.
        assert_eq!(at, "now", "{name}: {j}");
        assert!(detail.contains(want), "{name}: {detail}");
    }
}

#[test]
fn missing_intermediate_is_supplied_with_certs() {
    let pki = Pki::new();
    pki.sub.issue(
        "frank",
        "frank",
        &Pki::signer_ext("frank@example.net", ""),
        None,
    );
    let msg = pki.sign("frank", "frank@example.net", true);
    let root = pki.root_pem();
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "off"]);
    assert_eq!(code(&out), Some(1), "{j}");
    assert_eq!(failure(&j).0, "no-path", "{j}");
    let (out, j) = pki.verify(
        &msg,
        &[
            "--trust",
            &root,
            "--revocation",
            "off",
            "--certs",
            s(&pki.path("sub.pem")),
        ],
    );
    assert_eq!(code(&out), Some(0), "{j}");
    let chain: Vec<&str> = j["path"]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["CN=frank", "CN=sub", "CN=root"], "{j}");
    // The certificate store's CA certificates serve as intermediates too.
    std::fs::create_dir_all(pki.path("store")).unwrap();
    std::fs::copy(pki.path("sub.pem"), pki.path("store/sub.pem")).unwrap();
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "off"]);
    assert_eq!(code(&out), Some(0), "{j}");
    std::fs::remove_file(pki.path("store/sub.pem")).unwrap();
    // A trust directory works as --trust FILE does.
    std::fs::create_dir_all(pki.path("anchors")).unwrap();
    std::fs::copy(pki.path("root.pem"), pki.path("anchors/root.pem")).unwrap();
    std::fs::write(pki.path("anchors/README"), "not a certificate").unwrap();
    let anchors = s(&pki.path("anchors")).to_owned();
    let (out, j) = pki.verify(
        &msg,
        &[
            "--trust",
            &anchors,
            "--revocation",
            "off",
            "--certs",
            s(&pki.path("sub.pem")),
        ],
    );
    assert_eq!(code(&out), Some(0), "{j}");
    // Without --trust, the trust directory gives the anchors.
    let out = run(Command::new(built("smime"))
        .args([
            "verify",
            "--in",
            s(&msg),
            "--revocation",
            "off",
            "--certs",
            s(&pki.path("sub.pem")),
        ])
        .env("SMIME_TRUST", pki.path("anchors"))
        .env("SMIME_CERT_STORE", pki.path("store")));
    assert_eq!(
        code(&out),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CN=root"));
}

#[test]
fn wrong_eku_and_from_mismatch_are_distinct_verdicts() {
    let pki = Pki::new();
    let root = pki.root_pem();
    pki.sub.issue(
        "web",
        "web",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=email:web@example.net\n",
        None,
    );
    let msg = pki.sign("web", "web@example.net", false);
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "off"]);
    assert_eq!(code(&out), Some(1), "{j}");
    assert_eq!(failure(&j).0, "extended-key-usage", "{j}");

    pki.sub.issue(
        "gina",
        "gina",
        &Pki::signer_ext("gina@example.net", ""),
        None,
    );
    let msg = pki.sign("gina", "mallory@example.net", false);
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "off"]);
    assert_eq!(code(&out), Some(1), "{j}");
    assert_eq!(j["failure"]["check"], "sender", "{j}");
    assert_eq!(j["sender_match"], false, "{j}");
}

#[test]
fn cross_certified_chain_validates_from_either_root() {
    let pki = Pki::new();
    // A second root certifies the first root's key (a cross-certificate: subject CN=root,
    // root's key, issued by CN=other).
    let other = Ca::root(pki.dir.path(), "other");
    std::fs::copy(pki.path("root.key"), pki.path("cross.key")).unwrap();
    other.issue("cross", "root", CA_EXT, None);
    let (_, msg) = pki.signed_by("hana", "");
    let other_pem = s(&pki.path("other.pem")).to_owned();
    // Trusting only the other root: the path needs the cross-certificate.
    let (out, j) = pki.verify(&msg, &["--trust", &other_pem, "--revocation", "off"]);
    assert_eq!(code(&out), Some(1), "{j}");
    assert_eq!(failure(&j).0, "no-path", "{j}");
    let cross = s(&pki.path("cross.pem")).to_owned();
    let (out, j) = pki.verify(
        &msg,
        &[
            "--trust",
            &other_pem,
            "--revocation",
            "off",
            "--certs",
            &cross,
        ],
    );
    assert_eq!(code(&out), Some(0), "{j}");
    let chain: Vec<&str> = j["path"]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["CN=hana", "CN=sub", "CN=root", "CN=other"], "{j}");
    // Trusting the first root (with the cross-certificate around) still ends there.
    let root = pki.root_pem();
    let (out, j) = pki.verify(
        &msg,
        &["--trust", &root, "--revocation", "off", "--certs", &cross],
    );
    assert_eq!(code(&out), Some(0), "{j}");
    let last = j["path"]["chain"].as_array().unwrap().last().unwrap()["subject"].clone();
    assert_eq!(last, "CN=root", "{j}");
}

#[test]
fn ocsp_signed_by_the_ca_is_accepted_but_rogue_or_replayed_responses_are_not() {
    let pki = Pki::new();
    let ext = Pki::signer_ext("ivan@example.net", &pki.ocsp_aia());
    pki.sub.issue("ivan", "ivan", &ext, None);
    let msg = pki.sign("ivan", "ivan@example.net", false);
    let root = pki.root_pem();
    let hard = ["--trust", root.as_str(), "--revocation", "hard"];
    let ocsp_source = format!("ocsp {}", pki.server.url("ocsp"));

    pki.server.mode.store(OCSP_BY_CA, Ordering::SeqCst);
    let (out, j) = pki.verify(&msg, &hard);
    assert_eq!(code(&out), Some(0), "{j}");
    assert_eq!(
        j["path"]["revocation"]["certificates"][0]["source"], ocsp_source,
        "{j}"
    );

    // A certificate of the same CA without id-kp-OCSPSigning may not answer for it.
    pki.server.mode.store(OCSP_ROGUE, Ordering::SeqCst);
    let (out, j) = pki.verify(&msg, &hard);
    rejected(&out, &j, "revocation-unknown", &["not acceptable"]);

    // The delegated responder settles it...
    pki.server.mode.store(OCSP_DELEGATED, Ordering::SeqCst);
    let (out, j) = pki.verify(&msg, &hard);
    assert_eq!(code(&out), Some(0), "{j}");

    // ...but that good answer, replayed, is not an answer to a new request (another
    // nonce).
    pki.server.mode.store(OCSP_REPLAY, Ordering::SeqCst);
    let (out, j) = pki.verify(&msg, &hard);
    rejected(&out, &j, "revocation-unknown", &["nonce"]);
    let (out, j) = pki.verify(&msg, &["--trust", root.as_str(), "--revocation", "soft"]);
    assert_eq!(code(&out), Some(0), "{j}");
    assert_eq!(j["path"]["revocation"]["status"], "unknown", "{j}");
}

#[test]
fn signature_made_before_the_signer_was_valid_fails_the_signing_time_check() {
    let pki = Pki::new();
    let root = pki.root_pem();
    // Valid from 10 days ago; the message says it was signed 40 days ago (openssl run
    // under faketime writes that signingTime).
    pki.sub.issue(
        "past",
        "past",
        &Pki::signer_ext("past@example.net", ""),
        Some((date(-10), date(20))),
    );
    std::fs::write(
        pki.path("body.txt"),
        "Content-Type: text/plain\r\n\r\nhello\r\n",
    )
    .unwrap();
    let out = run(Command::new("faketime")
        .args([
            "-f", "-40d", "openssl", "cms", "-sign", "-in", "body.txt", "-signer", "past.pem",
        ])
        .args([
            "-inkey",
            "past.key",
            "-certfile",
            "sub.pem",
            "-from",
            "past@example.net",
        ])
        .args([
            "-to",
            "bob@example.net",
            "-subject",
            "old",
            "-out",
            "past-signed.eml",
        ])
        .current_dir(pki.dir.path()));
    assert!(
        out.status.success(),
        "faketime openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, j) = pki.verify(
        &pki.path("past-signed.eml"),
        &["--trust", &root, "--revocation", "off"],
    );
    assert_eq!(code(&out), Some(1), "{j}");
    let (check, at, detail) = failure(&j);
    assert_eq!(
        (check.as_str(), at.as_str()),
        ("validity", "signing-time"),
        "{j}"
    );
    assert!(detail.contains("not yet valid"), "{detail}");
}

#[test]
fn stale_ocsp_responses_and_stale_crls_do_not_settle_the_status() {
    let pki = Pki::new();
    let ext = Pki::signer_ext(
        "judy@example.net",
        &format!("{}{}", pki.ocsp_aia(), pki.crl_dp()),
    );
    pki.sub.issue("judy", "judy", &ext, None);
    let msg = pki.sign("judy", "judy@example.net", false);
    let root = pki.root_pem();
    let hard = ["--trust", root.as_str(), "--revocation", "hard"];
    // sub.crl as published three days ago, valid for a day.
    let out = run(Command::new("faketime")
        .args([
            "-f", "-3d", "openssl", "ca", "-config", "sub.cnf", "-gencrl", "-crldays", "1",
        ])
        .args(["-out", "sub.crl.pem"])
        .current_dir(pki.dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    openssl_in(
        pki.dir.path(),
        &[
            "crl",
            "-in",
            "sub.crl.pem",
            "-outform",
            "DER",
            "-out",
            "sub.crl",
        ],
    );
    pki.server.mode.store(OCSP_STALE, Ordering::SeqCst);
    let (out, j) = pki.verify(&msg, &hard);
    assert_eq!(code(&out), Some(1), "{j}");
    let (check, _, detail) = failure(&j);
    assert_eq!(check, "revocation-unknown", "{j}");
    assert!(
        detail.contains("OCSP") && detail.contains("not acceptable"),
        "{detail}"
    );
    assert!(detail.contains("sub.crl: not usable"), "{detail}");
    // The stale CRL is not reused from the cache: the next run fetches it again.
    let gets = pki.server.gets.load(Ordering::SeqCst);
    let (out, _) = pki.verify(&msg, &hard);
    assert_eq!(code(&out), Some(1));
    assert!(
        pki.server.gets.load(Ordering::SeqCst) > gets,
        "a stale CRL came from the cache"
    );
    // A fresh CRL settles it (the responder still answers stale), and is then cached.
    pki.sub.crl();
    let (out, j) = pki.verify(&msg, &hard);
    assert_eq!(code(&out), Some(0), "{j}");
    assert_eq!(
        j["path"]["revocation"]["certificates"][0]["source"],
        format!("crl {}", pki.server.url("sub.crl")),
        "{j}"
    );
}

#[test]
fn system_trust_adds_to_trust_and_bad_options_are_usage_errors() {
    let pki = Pki::new();
    pki.sub
        .issue("kim", "kim", &Pki::signer_ext("kim@example.net", ""), None);
    let msg = pki.sign("kim", "kim@example.net", false);
    let root = pki.root_pem();
    // The system bundle comes with ca-certificates (scripts/deps.sh).
    assert!(Path::new("/etc/ssl/certs/ca-certificates.crt").exists());
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--system-trust", "--offline"]);
    assert_eq!(code(&out), Some(0), "{j}");
    // Offline, no CRL: soft mode passes with the status unknown.
    assert_eq!(j["path"]["revocation"]["status"], "unknown", "{j}");
    // Only the system bundle: our root is not in it.
    {
        let out = run(Command::new(built("smime"))
            .args(["verify", "--in", s(&msg), "--revocation", "off", "--json"])
            .env_remove("SMIME_TRUST")
            .env("XDG_CONFIG_HOME", pki.path("no-config"))
            .env("SMIME_CERT_STORE", pki.path("store")));
        assert_eq!(code(&out), Some(1));
    }
    for (args, what) in [
        (
            vec!["--trust", &root, "--ocsp-url", "https://127.0.0.1:1/"],
            "https",
        ),
        (vec!["--trust", s(&pki.path("body.txt"))], "no certificate"),
        (vec!["--trust", s(&pki.path("store"))], "empty directory"),
    ] {
        std::fs::create_dir_all(pki.path("store")).unwrap();
        let out = run(Command::new(built("smime"))
            .args(["verify", "--in", s(&msg)])
            .args(&args)
            .env("SMIME_CERT_STORE", pki.path("store")));
        assert_eq!(
            code(&out),
            Some(2),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
    }
}

#[test]
fn revoked_intermediate_fails_and_names_the_intermediate() {
    let pki = Pki::new();
    let (_, msg) = pki.signed_by("liam", &pki.crl_dp());
    let root = pki.root_pem();
    pki.root.revoke(&pki.path("sub.pem"));
    pki.publish_crls();
    let (out, j) = pki.verify(&msg, &["--trust", &root, "--revocation", "soft"]);
    assert_eq!(code(&out), Some(1), "{j}");
    let (check, _, detail) = failure(&j);
    assert_eq!(check, "revoked", "{j}");
    assert_eq!(j["failure"]["certificate"], "CN=sub", "{j}");
    assert_eq!(j["failure"]["index"], 1, "{j}");
    assert!(
        detail.contains(&format!("source: crl {}", pki.server.url("root.crl"))),
        "{detail}"
    );
}
