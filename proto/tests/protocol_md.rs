//! `PROTOCOL.md` cannot drift from the code: every ` ```hex ` block in it is one complete
//! frame that must decode with `smime-proto` and re-encode to the very same bytes, every
//! request and response variant must have such an example, and every ` ```hex-invalid `
//! block must be rejected. The error-code and algorithm tables are checked against the
//! types as well.

use std::collections::BTreeSet;

use smime_proto::{
    DecryptAlgorithm, ErrorCode, FrameDecoder, KeyAlgorithm, Operation, PinState, Request,
    Response, SignAlgorithm, encode_frame,
};

/// Every request op; `Request::decode` uses the same list to spot unknown operations.
const REQUEST_OPS: &[&str] = Request::OPERATIONS;
const RESPONSE_TYPES: &[&str] = &[
    "hello",
    "keys",
    "signature",
    "secret",
    "ok",
    "status",
    "error",
];

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A fenced code block: its info string, the line of its opening fence (1-based) and body.
struct Block {
    info: String,
    line: usize,
    body: String,
}

fn fenced_blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in doc.lines().enumerate() {
        let t = line.trim();
        match open.take() {
            None => {
                if let Some(info) = t.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_owned(),
                        line: i + 1,
                        body: String::new(),
                    });
                }
            }
            Some(mut b) => {
                if t == "```" {
                    blocks.push(b);
                } else {
                    b.body.push_str(line);
                    b.body.push('\n');
                    open = Some(b);
                }
            }
        }
    }
    assert!(open.is_none(), "PROTOCOL.md ends inside a code block");
    blocks
}

fn hex_of(b: &Block) -> Vec<u8> {
    let digits: String = b.body.split_whitespace().collect();
    hex::decode(&digits).unwrap_or_else(|e| panic!("PROTOCOL.md line {}: bad hex: {e}", b.line))
}

/// Exactly one frame, nothing before or after it.
fn single_frame(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut d = FrameDecoder::new();
    let payload = d
        .feed(bytes)
        .map_err(|e| format!("framing: {e}"))?
        .ok_or("incomplete frame")?;
    if d.is_mid_frame() {
        return Err("bytes after the frame".into());
    }
    d.finish().map_err(|e| e.to_string())?;
    Ok(payload)
}

/// The text value of `key` in a top-level CBOR map.
fn text_key(payload: &[u8], key: &str) -> Option<String> {
    let v: ciborium::Value = ciborium::from_reader(payload).ok()?;
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .and_then(|(_, v)| v.as_text().map(str::to_owned))
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::ListKeys => "list_keys",
        Request::Sign { .. } => "sign",
        Request::Decrypt { .. } => "decrypt",
        Request::Ecdh { .. } => "ecdh",
        Request::Unlock { .. } => "unlock",
        Request::Lock { .. } => "lock",
        Request::Status => "status",
        _ => panic!("a new Request variant: add it to REQUEST_OPS and PROTOCOL.md"),
    }
}

fn response_name(r: &Response) -> &'static str {
    match r {
        Response::Hello { .. } => "hello",
        Response::Keys { .. } => "keys",
        Response::Signature { .. } => "signature",
        Response::Secret { .. } => "secret",
        Response::Ok => "ok",
        Response::Status { .. } => "status",
        Response::Error(_) => "error",
        _ => panic!("a new Response variant: add it to RESPONSE_TYPES and PROTOCOL.md"),
    }
}

#[test]
fn every_hex_example_round_trips() {
    let doc = doc();
    let mut requests = BTreeSet::new();
    let mut responses = BTreeSet::new();
    let mut n = 0;
    for b in fenced_blocks(&doc).iter().filter(|b| b.info == "hex") {
        let at = b.line;
        let frame = hex_of(b);
        let payload = single_frame(&frame).unwrap_or_else(|e| panic!("PROTOCOL.md line {at}: {e}"));
        assert_eq!(
            encode_frame(&payload).as_deref(),
            Ok(frame.as_slice()),
            "line {at}"
        );
        let reencoded = if let Some(op) = text_key(&payload, "op") {
            let req = Request::decode(&payload)
                .unwrap_or_else(|e| panic!("PROTOCOL.md line {at}: request: {e}"));
            assert_eq!(request_name(&req), op, "line {at}");
            requests.insert(op);
            req.encode_frame().unwrap()
        } else {
            let resp = Response::decode(&payload)
                .unwrap_or_else(|e| panic!("PROTOCOL.md line {at}: response: {e}"));
            let ty = text_key(&payload, "type").unwrap_or_default();
            assert_eq!(response_name(&resp), ty, "line {at}");
            responses.insert(ty);
            resp.encode_frame().unwrap()
        };
        assert_eq!(
            hex::encode(&reencoded),
            hex::encode(&frame),
            "PROTOCOL.md line {at}: smime-proto encodes this message differently"
        );
        n += 1;
    }
    let want = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        requests,
        want(REQUEST_OPS),
        "request ops with a hex example"
    );
    assert_eq!(
        responses,
        want(RESPONSE_TYPES),
        "response types with a hex example"
    );
    assert!(n >= REQUEST_OPS.len() + RESPONSE_TYPES.len());
}

#[test]
fn every_invalid_example_is_rejected() {
    let doc = doc();
    let invalid: Vec<_> = fenced_blocks(&doc)
        .into_iter()
        .filter(|b| b.info == "hex-invalid")
        .collect();
    assert!(invalid.len() >= 3);
    for b in invalid {
        let bytes = hex_of(&b);
        let mut d = FrameDecoder::new();
        match d.feed(&bytes) {
            Err(_) => {}
            Ok(None) => panic!("PROTOCOL.md line {}: incomplete, not invalid", b.line),
            Ok(Some(payload)) => assert!(
                Request::decode(&payload).is_err(),
                "PROTOCOL.md line {}: decodes as a request",
                b.line
            ),
        }
    }
}

/// The fence names the tests rely on are the only binary-looking fences.
#[test]
fn no_unchecked_hex_fences() {
    for b in fenced_blocks(&doc()) {
        assert!(
            matches!(
                b.info.as_str(),
                "hex" | "hex-invalid" | "cbor-diag" | "text" | "python" | "sh"
            ),
            "PROTOCOL.md line {}: unexpected fence info {:?}",
            b.line,
            b.info
        );
    }
}

#[test]
fn error_code_table_is_complete() {
    let doc = doc();
    let mut count = 0;
    for n in 0..=u16::MAX {
        if let Some(name) = ErrorCode(n).name() {
            let row = format!("| {n} | `{name}` |");
            assert!(doc.contains(&row), "PROTOCOL.md lacks the row {row:?}");
            count += 1;
        }
    }
    let rows = doc
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && l[2..].starts_with(|c: char| c.is_ascii_digit())
                && l.contains(" | `")
        })
        .count();
    assert_eq!(
        rows, count,
        "the error-code table lists codes the crate does not know"
    );
}

fn wire_name<T: serde::Serialize>(v: T) -> String {
    let mut buf = Vec::new();
    ciborium::into_writer(&v, &mut buf).expect("encode");
    let v: ciborium::Value = ciborium::from_reader(buf.as_slice()).expect("decode");
    v.as_text().expect("a text name").to_owned()
}

#[test]
fn value_tables_name_every_variant() {
    use DecryptAlgorithm as D;
    use SignAlgorithm as S;
    let doc = doc();
    let mut names: Vec<String> = [
        S::RsaPkcs1Sha256,
        S::RsaPkcs1Sha384,
        S::RsaPkcs1Sha512,
        S::RsaPssSha256,
        S::RsaPssSha384,
        S::RsaPssSha512,
        S::EcdsaSha256,
        S::EcdsaSha384,
        S::EcdsaSha512,
    ]
    .into_iter()
    .map(|a| {
        let name = wire_name(a);
        let len = a.digest_len().expect("known algorithm");
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("no SignAlgorithm row for {name}"));
        assert!(
            row.contains(&format!("| {len} |")),
            "{name}: digest length {len} not in {row:?}"
        );
        name
    })
    .collect();
    names.extend(
        [
            D::RsaPkcs1,
            D::RsaOaepSha1,
            D::RsaOaepSha256,
            D::RsaOaepSha384,
            D::RsaOaepSha512,
        ]
        .map(wire_name),
    );
    names.extend(
        [
            KeyAlgorithm::Rsa,
            KeyAlgorithm::EcP256,
            KeyAlgorithm::EcP384,
        ]
        .map(wire_name),
    );
    names.extend([Operation::Sign, Operation::Decrypt, Operation::Ecdh].map(wire_name));
    names.extend(
        [
            PinState::Ok,
            PinState::CountLow,
            PinState::FinalTry,
            PinState::Locked,
            PinState::Unknown,
        ]
        .map(wire_name),
    );
    for name in names {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "PROTOCOL.md has no table row for {name:?}"
        );
    }
}
