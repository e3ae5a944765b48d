#!/usr/bin/env python3
"""Regenerates the message examples of proto/PROTOCOL.md and the golden frames in
proto/tests/messages/ from one table of example messages.

    python3 tests/python/gen_protocol_examples.py          # rewrite in place
    python3 tests/python/gen_protocol_examples.py --check  # exit 1 if anything would change

In PROTOCOL.md every region between

    <!-- example: NAME -->
    <!-- /example -->

is replaced by the CBOR diagnostic notation and the hex of the complete frame of the example
NAME. The maps below are written in the order in which the Rust serializer emits their keys
(struct field declaration order, the "op"/"type" tag first), so the frames are byte-for-byte
what smime-proto produces. `cargo test -p smime-proto` checks exactly that
(proto/tests/protocol_md.rs and proto/tests/golden.rs).

Needs only the standard library and cbor2.
"""

import hashlib
import json
import re
import struct
import sys
from pathlib import Path

import cbor2

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "proto" / "PROTOCOL.md"
GOLDEN = ROOT / "proto" / "tests" / "messages"


def det_bytes(label: str, n: int) -> bytes:
    """Deterministic stand-in bytes, so that reruns produce the same examples."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


def der_int(b: bytes) -> bytes:
    b = b.lstrip(b"\x00") or b"\x00"
    if b[0] & 0x80:
        b = b"\x00" + b
    return bytes([0x02, len(b)]) + b


def ecdsa_der(r: bytes, s: bytes) -> bytes:
    body = der_int(r) + der_int(s)
    return bytes([0x30, len(body)]) + body


SERIAL = "4f1a9c0b7e2d3a11"
TOKEN = "smime-demo"
# SHA-256("abc"), FIPS 180-2 test vector.
DIGEST = hashlib.sha256(b"abc").digest()
# The P-256 base point G, SEC1 uncompressed: a valid public point.
P256_G = bytes.fromhex(
    "04"
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)
# A stand-in for a certificate: a short DER SEQUENCE (a real one is about 1 KiB).
CERT_RSA = bytes.fromhex("3003020101")
CERT_EC = bytes.fromhex("3003020102")
CIPHERTEXT = b"\x5c" + det_bytes("ciphertext", 255)  # 256 bytes: an RSA-2048 block
SIGNATURE = ecdsa_der(det_bytes("r", 32), det_bytes("s", 32))
CEK = det_bytes("cek", 16)

# name -> (message, golden file name or None)
EXAMPLES = {
    "req-hello": ({"op": "hello", "versions": [1], "client": "smime 0.1.0"}, "req-hello.bin"),
    "resp-hello": (
        {
            "type": "hello",
            "version": 1,
            "agent": "smime-agent 0.1.0",
            "capabilities": ["list_keys", "sign", "decrypt", "ecdh", "unlock", "lock", "status"],
        },
        "resp-hello.bin",
    ),
    "req-list_keys": ({"op": "list_keys"}, "req-list_keys.bin"),
    "resp-keys": (
        {
            "type": "keys",
            "keys": [
                {
                    "id": f"{SERIAL}:01",
                    "token": TOKEN,
                    "token_serial": SERIAL,
                    "label": "alice-rsa",
                    "algorithm": "rsa",
                    "bits": 2048,
                    "certificate": CERT_RSA,
                    "operations": ["sign", "decrypt"],
                    "always_authenticate": False,
                },
                {
                    "id": f"{SERIAL}:02",
                    "token": TOKEN,
                    "token_serial": SERIAL,
                    "label": "alice-ec",
                    "algorithm": "ec-p256",
                    "bits": 256,
                    "certificate": CERT_EC,
                    "operations": ["sign", "ecdh"],
                    "always_authenticate": False,
                },
            ],
        },
        "resp-keys.bin",
    ),
    "req-sign": (
        {"op": "sign", "key": f"{SERIAL}:02", "algorithm": "ecdsa-sha256", "digest": DIGEST},
        "req-sign.bin",
    ),
    "resp-signature": ({"type": "signature", "signature": SIGNATURE}, "resp-signature.bin"),
    "req-decrypt": (
        {
            "op": "decrypt",
            "key": f"{SERIAL}:01",
            "algorithm": "rsa-oaep-sha256",
            "ciphertext": CIPHERTEXT,
        },
        "req-decrypt.bin",
    ),
    "resp-secret": ({"type": "secret", "secret": CEK}, "resp-secret.bin"),
    "req-ecdh": ({"op": "ecdh", "key": f"{SERIAL}:02", "peer_point": P256_G}, "req-ecdh.bin"),
    "req-unlock": ({"op": "unlock", "token": TOKEN, "pin": "12345678"}, "req-unlock.bin"),
    "resp-ok": ({"type": "ok"}, "resp-ok.bin"),
    "req-lock": ({"op": "lock", "token": TOKEN}, "req-lock.bin"),
    "req-lock-all": ({"op": "lock"}, None),
    "req-status": ({"op": "status"}, "req-status.bin"),
    "resp-status": (
        {
            "type": "status",
            "tokens": [
                {
                    "label": TOKEN,
                    "serial": SERIAL,
                    "module": "/usr/lib/softhsm/libsofthsm2.so",
                    "logged_in": True,
                    "pin_state": "ok",
                    "keys": 3,
                }
            ],
        },
        "resp-status.bin",
    ),
    "resp-status-waiting": (
        {
            "type": "status",
            "tokens": [
                {
                    "label": "PIV Card",
                    "serial": "00000000a1b2c3d4",
                    "module": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
                    "logged_in": False,
                    "pin_state": "ok",
                    "keys": 4,
                    "pin_pad": True,
                    "waiting": "waiting for the PIN on the reader's keypad (3 s)",
                }
            ],
        },
        None,
    ),
    "resp-error-confirmation-declined": (
        {
            "type": "error",
            "code": 305,
            "message": 'the signature with key "sig" on token "PIV Card" was not confirmed by the user',
            "token": "PIV Card",
        },
        None,
    ),
    "resp-error": (
        {
            "type": "error",
            "code": 301,
            "message": 'wrong PIN for token "smime-demo"',
            "pin_state": "final-try",
            "tries_left": 1,
            "token": TOKEN,
        },
        "resp-error.bin",
    ),
    "resp-error-hello-required": (
        {"type": "error", "code": 103, "message": "send hello first"},
        None,
    ),
    "resp-error-unknown-operation": (
        {"type": "error", "code": 102, "message": 'unknown operation "frobnicate"'},
        None,
    ),
}


def frame(msg: dict) -> bytes:
    payload = cbor2.dumps(msg)
    return struct.pack(">I", len(payload)) + payload


def diag(v, indent=0) -> str:
    """CBOR extended diagnostic notation (RFC 8610 appendix G), pretty-printed."""
    pad = "  " * (indent + 1)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bytes):
        h = v.hex()
        if len(v) <= 32:
            return f"h'{h}'"
        lines = [h[i : i + 64] for i in range(0, len(h), 64)]
        return "h'" + ("\n" + pad + "  ").join(lines) + "'"
    if isinstance(v, list):
        items = [diag(x, indent + 1) for x in v]
        flat = "[" + ", ".join(items) + "]"
        if "\n" not in flat and len(flat) + len(pad) < 90:
            return flat
        return "[\n" + ",\n".join(pad + i for i in items) + "\n" + "  " * indent + "]"
    if isinstance(v, dict):
        items = [f"{json.dumps(k)}: {diag(x, indent + 1)}" for k, x in v.items()]
        flat = "{" + ", ".join(items) + "}"
        if "\n" not in flat and len(flat) + len(pad) < 90:
            return flat
        return "{\n" + ",\n".join(pad + i for i in items) + "\n" + "  " * indent + "}"
    raise TypeError(type(v))


def hex_block(f: bytes) -> str:
    def row(b: bytes) -> str:
        return " ".join(f"{x:02x}" for x in b)

    rows = [row(f[:4])] + [row(f[i : i + 16]) for i in range(4, len(f), 16)]
    return "\n".join(rows)


def render(name: str) -> str:
    msg, _ = EXAMPLES[name]
    f = frame(msg)
    return (
        f"<!-- example: {name} -->\n"
        f"```cbor-diag\n{diag(msg)}\n```\n\n"
        f"Frame ({len(f) - 4} bytes of CBOR after the 4-byte length):\n\n"
        f"```hex\n{hex_block(f)}\n```\n"
        f"<!-- /example -->"
    )


MARKER = re.compile(r"<!-- example: ([a-z_-]+) -->.*?<!-- /example -->", re.S)


def main() -> int:
    check = "--check" in sys.argv[1:]
    text = DOC.read_text()
    seen = set()

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in EXAMPLES:
            raise SystemExit(f"PROTOCOL.md names unknown example {name!r}")
        seen.add(name)
        return render(name)

    new = MARKER.sub(sub, text)
    missing = set(EXAMPLES) - seen
    if missing:
        raise SystemExit(f"examples not placed in PROTOCOL.md: {sorted(missing)}")
    changed = []
    if new != text:
        changed.append(DOC)
        if not check:
            DOC.write_text(new)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for msg, golden in EXAMPLES.values():
        if golden is None:
            continue
        path = GOLDEN / golden
        f = frame(msg)
        if not path.exists() or path.read_bytes() != f:
            changed.append(path)
            if not check:
                path.write_bytes(f)
    for p in changed:
        print(("out of date: " if check else "wrote ") + str(p.relative_to(ROOT)))
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
