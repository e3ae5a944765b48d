//! NIST PKITS conformance of `smime verify`.
//!
//! Every signed S/MIME message of PKITS (224 tests, 247 with the policy sub-cases) goes
//! through the built `smime verify --trust TrustAnchorRootCertificate --revocation hard
//! --json`, with the initial policy settings the PKITS document gives for the sub-case, and
//! the verdict is compared with `expected.tsv` (derived from the PKITS document, sections
//! 4.1-4.16). Rows with a `known_gap` are run and reported but do not fail the test.
//!
//! A message counts as *valid* when `smime verify` accepts it, or when it rejects it only
//! because the From: address is not the certificate's (PKITS certificates carry no e-mail
//! address, and the sender check is outside PKITS): the JSON verdict then says
//! `"failure": {"check": "sender"}` with `"trusted": true`.
//!
//! The data comes from the PyPI package `cryptography-vectors`: set `PKITS_DATA` to its
//! `cryptography_vectors/x509/PKITS_data` directory (`scripts/deps.sh` does, after
//! downloading it once), or the test downloads it with pip into `target/pkits/`.
//! `PKITS_SKIP=1` skips the test (say so when you use it).
//!
//! This is a `harness = false` test: it prints its report whether it passes or not, and
//! ends with `pkits: N passed, N failed, N skipped` (skipped = known gaps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The package version the expected table was checked against.
const VECTORS: &str = "cryptography-vectors==50.0.2";

struct Row {
    id: String,
    file: String,
    valid: bool,
    args: Vec<String>,
    known_gap: Option<String>,
}

fn table() -> Vec<Row> {
    let text = include_str!("expected.tsv");
    let mut rows = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with("id\t") || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(cols.len() >= 4, "expected.tsv: bad line {line:?}");
        let valid = match cols[2] {
            "valid" => true,
            "invalid" => false,
            other => panic!("expected.tsv: {}: expected is {other:?}", cols[0]),
        };
        rows.push(Row {
            id: cols[0].to_owned(),
            file: cols[1].to_owned(),
            valid,
            args: if cols[3] == "-" {
                vec![]
            } else {
                cols[3].split_whitespace().map(str::to_owned).collect()
            },
            known_gap: cols
                .get(4)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        });
    }
    rows
}

fn workspace_target() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// The PKITS_data directory: `PKITS_DATA`, or a download into target/pkits.
fn pkits_data() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("PKITS_DATA") {
        let d = PathBuf::from(d);
        for cand in [d.clone(), d.join("cryptography_vectors/x509/PKITS_data")] {
            if cand.join("smime").is_dir() {
                return Ok(cand);
            }
        }
        return Err(format!(
            "PKITS_DATA={} has no smime/ directory (want .../cryptography_vectors/x509/PKITS_data)",
            d.display()
        ));
    }
    let cache = workspace_target().join("pkits");
    let data = cache.join("cryptography_vectors/x509/PKITS_data");
    if data.join("smime").is_dir() {
        return Ok(data);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    eprintln!("pkits: downloading {VECTORS} into {}", cache.display());
    let pip = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&cache)
        .arg(VECTORS)
        .status()
        .map_err(|e| format!("running python3 -m pip: {e}"))?;
    if !pip.success() {
        return Err(format!(
            "pip download {VECTORS} failed; install it with scripts/deps.sh or set PKITS_DATA"
        ));
    }
    // Unpack only PKITS_data from the wheel (a zip), with Python: no unzip needed.
    let unpack = Command::new("python3")
        .arg("-c")
        .arg(
            "import glob,sys,zipfile\n\
             w=sorted(glob.glob(sys.argv[1]+'/cryptography_vectors-*.whl'))[-1]\n\
             z=zipfile.ZipFile(w)\n\
             z.extractall(sys.argv[1],[n for n in z.namelist() if '/x509/PKITS_data/' in n])",
        )
        .arg(&cache)
        .status()
        .map_err(|e| format!("running python3: {e}"))?;
    if !unpack.success() || !data.join("smime").is_dir() {
        return Err("unpacking PKITS_data from the wheel failed".to_owned());
    }
    Ok(data)
}

/// What `smime verify` said about one message.
enum Outcome {
    Valid,
    /// Rejected; the reason (the JSON failure check and detail).
    Invalid(String),
}

fn run(data: &Path, row: &Row) -> Outcome {
    let out = Command::new(smime_tests::built("smime"))
        .arg("verify")
        .arg("--in")
        .arg(data.join("smime").join(&row.file))
        .arg("--trust")
        .arg(data.join("certs/TrustAnchorRootCertificate.crt"))
        .args(["--revocation", "hard", "--json"])
        .args(&row.args)
        // PKITS is self-contained: its CRLs come in the messages. No network, and no
        // intermediates from the user's certificate store.
        .arg("--offline")
        .env("SMIME_CERT_STORE", data.join("no-store"))
        .env("SMIME_CRL_CACHE", data.join("no-crl-cache"))
        .output()
        .expect("running smime");
    if out.status.success() {
        return Outcome::Valid;
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let json: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    match json {
        Some(j) if out.status.code() == Some(1) => {
            let check = j["failure"]["check"].as_str().unwrap_or("?").to_owned();
            if check == "sender" && j["trusted"] == serde_json::Value::Bool(true) {
                return Outcome::Valid;
            }
            let detail = j["failure"]["detail"]
                .as_str()
                .or(j["error"].as_str())
                .unwrap_or(&stderr)
                .to_owned();
            Outcome::Invalid(format!("{check}: {detail}"))
        }
        _ => Outcome::Invalid(format!("exit {:?}: {stderr}", out.status.code())),
    }
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        println!("pkits: test");
        return ExitCode::SUCCESS;
    }
    if std::env::var_os("PKITS_SKIP").is_some_and(|v| v == "1") {
        println!("pkits: skipped (PKITS_SKIP=1)");
        return ExitCode::SUCCESS;
    }
    let data = match pkits_data() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pkits: no PKITS data: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = table();
    let (mut passed, mut failed, mut gaps) = (0usize, Vec::new(), Vec::new());
    let mut fixed = Vec::new();
    for row in &rows {
        let outcome = run(&data, row);
        let agrees = matches!(outcome, Outcome::Valid) == row.valid;
        let said = match &outcome {
            Outcome::Valid => "valid".to_owned(),
            Outcome::Invalid(why) => format!("invalid ({why})"),
        };
        let line = format!(
            "{} {} {}: expected {}, got {said}",
            row.id,
            row.file,
            row.args.join(" "),
            if row.valid { "valid" } else { "invalid" },
        );
        match (agrees, &row.known_gap) {
            (true, None) => passed += 1,
            (true, Some(gap)) => {
                passed += 1;
                fixed.push(format!("{} ({gap})", row.id));
            }
            (false, None) => failed.push(line),
            (false, Some(gap)) => gaps.push(format!("{line}\n    known gap: {gap}")),
        }
    }
    println!("PKITS data: {}", data.display());
    if !gaps.is_empty() {
        println!("known gaps ({}):", gaps.len());
        for g in &gaps {
            println!("  {g}");
        }
    }
    if !fixed.is_empty() {
        println!(
            "known gaps that now agree (remove their known_gap in expected.tsv): {}",
            fixed.join(", ")
        );
    }
    if !failed.is_empty() {
        println!("MISMATCHES ({}):", failed.len());
        for f in &failed {
            println!("  {f}");
        }
    }
    println!(
        "{} sub-cases: {passed} agree, {} disagree, {} known gaps",
        rows.len(),
        failed.len(),
        gaps.len()
    );
    println!(
        "pkits: {passed} passed, {} failed, {} skipped",
        failed.len(),
        gaps.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
