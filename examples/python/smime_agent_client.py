#!/usr/bin/env python3
"""An smime-agent client in Python: the standard library plus cbor2.

It speaks the agent's protocol directly, as any mail client or script can (see
proto/PROTOCOL.md): each frame is a u32 big-endian length followed by one CBOR map;
requests carry "op", responses carry "type". Private keys stay on the token; only
digests and wrapped keys cross the socket.

As a library:

    from smime_agent_client import AgentClient
    with AgentClient() as agent:           # $SMIME_AGENT_SOCK or $XDG_RUNTIME_DIR/...
        agent.hello()
        key = agent.find_key("alice-rsa")  # an id, or a unique label
        sig = agent.sign(key["id"], "rsa-pkcs1-sha256", hashlib.sha256(data).digest())
        cek = agent.decrypt(key["id"], "rsa-pkcs1", wrapped_key)

As a command:

    smime_agent_client.py [--socket PATH] keys
    smime_agent_client.py [--socket PATH] sign --key SEL (--in FILE | --digest HEX)
                          [--algorithm ALG] --out SIG [--cert-out CERT.der]
    smime_agent_client.py [--socket PATH] decrypt --key SEL --in WRAPPED
                          [--algorithm rsa-pkcs1|rsa-oaep-sha256|...] --out SECRET
    smime_agent_client.py [--socket PATH] status

`keys` and `status` print JSON. `sign` writes the raw signature (an RSA block, or DER
ECDSA) and, with --cert-out, the key's certificate (DER). `decrypt` unwraps an RSA-wrapped
key (e.g. a CMS content-encryption key) and writes it. Exit status: 0 success; 1 the agent
refused the operation (its error code and message are printed); 2 usage error; 3 no
agent, or the key, token or PIN is not available.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import struct
import sys

import cbor2

PROTOCOL_VERSION = 1
MAX_FRAME_LEN = 1 << 20
CLIENT_NAME = "smime_agent_client.py 0.1"


class AgentError(Exception):
    """The agent answered with an `error` response (the connection stays usable)."""

    def __init__(self, resp: dict):
        self.code = resp.get("code")
        self.message = resp.get("message", "")
        self.pin_state = resp.get("pin_state")
        self.tries_left = resp.get("tries_left")
        self.token = resp.get("token")
        text = f"agent error {self.code}: {self.message}"
        if self.tries_left is not None:
            text += f" ({self.tries_left} PIN tries left)"
        super().__init__(text)


class ProtocolError(Exception):
    """The byte stream is broken. Close the connection."""


def default_socket_path() -> str:
    """$SMIME_AGENT_SOCK, else $XDG_RUNTIME_DIR/smime-agent/agent.sock (PROTOCOL.md §2.1)."""
    path = os.environ.get("SMIME_AGENT_SOCK")
    if path:
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "smime-agent", "agent.sock")
    raise ProtocolError("no agent socket: set SMIME_AGENT_SOCK or XDG_RUNTIME_DIR")


class AgentClient:
    """One connection to the agent. Requests are answered one at a time, in order."""

    def __init__(self, path: str | None = None, timeout: float | None = 30.0):
        self.path = path or default_socket_path()
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.version: int | None = None
        self.capabilities: list[str] = []

    # -- connection -----------------------------------------------------------------
    def connect(self) -> "AgentClient":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "AgentClient":
        if self.sock is None:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- framing --------------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None, "not connected"
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ProtocolError(
                    "the agent closed the connection"
                    + (f" inside a frame ({len(buf)} of {n} bytes)" if buf else "")
                )
            buf += chunk
        return bytes(buf)

    def _send(self, msg: dict) -> None:
        if self.sock is None:
            raise ProtocolError("not connected")
        payload = cbor2.dumps(msg)
        if not 0 < len(payload) <= MAX_FRAME_LEN:
            raise ProtocolError(f"request of {len(payload)} bytes cannot be framed")
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def _recv(self) -> dict:
        (n,) = struct.unpack(">I", self._recv_exact(4))
        if not 0 < n <= MAX_FRAME_LEN:
            self.close()
            raise ProtocolError(f"invalid frame length {n}")
        payload = self._recv_exact(n)
        try:
            resp = cbor2.loads(payload)
        except Exception as e:  # cbor2 raises several types
            self.close()
            raise ProtocolError(f"malformed response: {e}") from e
        if not isinstance(resp, dict) or not isinstance(resp.get("type"), str):
            self.close()
            raise ProtocolError("a response is a map with a text \"type\"")
        return resp

    def request(self, msg: dict, expect: str | None = None) -> dict:
        """Sends one request and returns its response.

        Raises AgentError on an `error` response, and ProtocolError when the stream is
        broken or the response type is not `expect`.
        """
        self._send(msg)
        resp = self._recv()
        if resp["type"] == "error":
            raise AgentError(resp)
        if expect is not None and resp["type"] != expect:
            raise ProtocolError(f"expected a {expect!r} response, got {resp['type']!r}")
        return resp

    # -- operations -----------------------------------------------------------------
    def hello(self, client: str = CLIENT_NAME, versions=(PROTOCOL_VERSION,)) -> dict:
        resp = self.request(
            {"op": "hello", "versions": list(versions), "client": client}, "hello"
        )
        self.version = resp["version"]
        self.capabilities = list(resp.get("capabilities", []))
        return resp

    def list_keys(self) -> list[dict]:
        return self.request({"op": "list_keys"}, "keys")["keys"]

    def sign(self, key_id: str, algorithm: str, digest: bytes) -> bytes:
        resp = self.request(
            {"op": "sign", "key": key_id, "algorithm": algorithm, "digest": bytes(digest)},
            "signature",
        )
        return resp["signature"]

    def decrypt(self, key_id: str, algorithm: str, ciphertext: bytes) -> bytes:
        resp = self.request(
            {
                "op": "decrypt",
                "key": key_id,
                "algorithm": algorithm,
                "ciphertext": bytes(ciphertext),
            },
            "secret",
        )
        return resp["secret"]

    def ecdh(self, key_id: str, peer_point: bytes) -> bytes:
        resp = self.request(
            {"op": "ecdh", "key": key_id, "peer_point": bytes(peer_point)}, "secret"
        )
        return resp["secret"]

    def unlock(self, token: str, pin: str) -> None:
        self.request({"op": "unlock", "token": token, "pin": pin}, "ok")

    def lock(self, token: str | None = None) -> None:
        msg = {"op": "lock"}
        if token is not None:
            msg["token"] = token
        self.request(msg, "ok")

    def status(self) -> list[dict]:
        return self.request({"op": "status"}, "status")["tokens"]

    def find_key(self, selector: str) -> dict:
        """The key whose id is `selector`, else the one key whose label is `selector`."""
        keys = self.list_keys()
        for k in keys:
            if k["id"] == selector:
                return k
        matches = [k for k in keys if k.get("label") == selector]
        if not matches:
            raise LookupError(f"no key with id or label {selector!r}")
        if len(matches) > 1:
            ids = ", ".join(k["id"] for k in matches)
            raise LookupError(f"several keys labelled {selector!r}: {ids}; pass an id")
        return matches[0]



# The scheme `sign` uses by default for each key type (PROTOCOL.md §8.2).
DEFAULT_SIGN_ALGORITHM = {
    "rsa": "rsa-pkcs1-sha256",
    "ec-p256": "ecdsa-sha256",
    "ec-p384": "ecdsa-sha384",
}

# Digest length per scheme suffix; the hash the client computes itself.
HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def hash_for(algorithm: str):
    suffix = algorithm.rsplit("-", 1)[-1]
    if suffix not in HASHES:
        raise ValueError(f"unknown signature algorithm {algorithm!r}")
    return HASHES[suffix]


def key_summary(k: dict) -> dict:
    """A KeyInfo map as JSON (the certificate as hex, not bytes)."""
    out = {f: k.get(f) for f in ("id", "token", "token_serial", "label", "algorithm", "bits")}
    out["operations"] = list(k.get("operations", []))
    cert = k.get("certificate")
    out["certificate_sha256"] = hashlib.sha256(cert).hexdigest() if cert else None
    return out


def cmd_keys(agent: AgentClient, args) -> None:
    json.dump([key_summary(k) for k in agent.list_keys()], sys.stdout, indent=2)
    print()


def cmd_status(agent: AgentClient, args) -> None:
    json.dump(agent.status(), sys.stdout, indent=2)
    print()


def cmd_sign(agent: AgentClient, args) -> None:
    key = agent.find_key(args.key)
    algorithm = args.algorithm or DEFAULT_SIGN_ALGORITHM.get(key.get("algorithm"))
    if algorithm is None:
        raise ValueError(f"key {key['id']} has algorithm {key.get('algorithm')!r}; pass --algorithm")
    if args.digest is not None:
        digest = bytes.fromhex(args.digest)
    else:
        h = hash_for(algorithm)()
        with open(args.input, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                h.update(chunk)
        digest = h.digest()
    signature = agent.sign(key["id"], algorithm, digest)
    write_file(args.out, signature)
    if args.cert_out:
        cert = key.get("certificate")
        if not cert:
            raise LookupError(f"key {key['id']} has no certificate on the token")
        write_file(args.cert_out, cert)
    print(f"signed with {key['id']} ({key.get('label')}, {algorithm})", file=sys.stderr)


def cmd_decrypt(agent: AgentClient, args) -> None:
    key = agent.find_key(args.key)
    with open(args.input, "rb") as f:
        wrapped = f.read()
    secret = bytearray(agent.decrypt(key["id"], args.algorithm, wrapped))
    try:
        write_file(args.out, secret)
    finally:
        secret[:] = bytes(len(secret))  # do not keep the key around longer than needed
    print(f"unwrapped {len(secret)} bytes with {key['id']} ({key.get('label')})", file=sys.stderr)


def write_file(path: str, data: bytes) -> None:
    """Writes all of `data` or nothing: a temporary file renamed into place, mode 0600."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smime_agent_client.py",
        description="Talk to smime-agent directly: list keys, sign a digest, unwrap a key.",
    )
    p.add_argument("--socket", help="agent socket (default: $SMIME_AGENT_SOCK, "
                   "else $XDG_RUNTIME_DIR/smime-agent/agent.sock)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("keys", help="list the agent's keys as JSON").set_defaults(run=cmd_keys)
    sub.add_parser("status", help="the agent's tokens as JSON").set_defaults(run=cmd_status)
    s = sub.add_parser("sign", help="sign a file's digest (or a given digest)")
    s.add_argument("--key", "-k", required=True, help="key id or label")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--in", dest="input", help="file to hash and sign")
    src.add_argument("--digest", help="the digest to sign, hex (its length must fit --algorithm)")
    s.add_argument("--algorithm", help="signature scheme (default: rsa-pkcs1-sha256 for RSA, "
                   "ecdsa-sha256 for P-256, ecdsa-sha384 for P-384)")
    s.add_argument("--out", required=True, help="where to write the raw signature ('-': stdout)")
    s.add_argument("--cert-out", help="where to write the key's certificate (DER)")
    s.set_defaults(run=cmd_sign)
    d = sub.add_parser("decrypt", help="unwrap an RSA-encrypted key")
    d.add_argument("--key", "-k", required=True, help="key id or label (an RSA key)")
    d.add_argument("--in", dest="input", required=True, help="the wrapped key (raw bytes)")
    d.add_argument("--algorithm", default="rsa-pkcs1",
                   help="rsa-pkcs1 (default), rsa-oaep-sha1, rsa-oaep-sha256, ...")
    d.add_argument("--out", required=True, help="where to write the key ('-': stdout)")
    d.set_defaults(run=cmd_decrypt)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])  # exits 2 on a usage error
    try:
        agent = AgentClient(args.socket).connect()
    except (OSError, ProtocolError) as e:
        print(f"smime_agent_client: no agent: {e} "
              "(start it with `smime-agent` or enable smime-agent.socket)", file=sys.stderr)
        return 3
    try:
        with agent:
            agent.hello()
            args.run(agent, args)
    except AgentError as e:
        print(f"smime_agent_client: {e}", file=sys.stderr)
        # As `smime`: 3 when the key, token or PIN is not available (codes 2xx, 3xx).
        return 3 if isinstance(e.code, int) and e.code // 100 in (2, 3) else 1
    except (OSError, ProtocolError, LookupError, ValueError) as e:
        print(f"smime_agent_client: {e}", file=sys.stderr)
        return 2 if isinstance(e, (LookupError, ValueError, FileNotFoundError)) else 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
