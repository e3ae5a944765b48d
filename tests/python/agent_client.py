#!/usr/bin/env python3
"""A small smime-agent client in Python: standard library plus cbor2.

It follows proto/PROTOCOL.md. Each frame is a u32 big-endian length followed by one CBOR
map. Requests carry "op" and responses carry "type".

As a library:

    with AgentClient(path) as agent:
        agent.hello()
        for key in agent.list_keys(): ...
        sig = agent.sign(key["id"], "ecdsa-sha256", hashlib.sha256(data).digest())

As a command (used by the end-to-end tests):

    agent_client.py SOCKET LABEL DATAFILE OUTSIG

This signs SHA-256(DATAFILE) with the key whose label is LABEL. It writes the raw signature
(an RSA block, or DER ECDSA) to OUTSIG and the key's certificate (DER) to OUTSIG.cert.der.
It exits 0 on success. On any error it prints a message to stderr and exits 1.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys

import cbor2

PROTOCOL_VERSION = 1
MAX_FRAME_LEN = 1 << 20
CLIENT_NAME = "agent_client.py 0.1"


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


SIGN_ALGORITHM_FOR_KEY = {
    "rsa": "rsa-pkcs1-sha256",
    "ec-p256": "ecdsa-sha256",
    "ec-p384": "ecdsa-sha256",
}


def sign_file(sock_path: str, label: str, data_path: str, out_sig: str) -> None:
    with open(data_path, "rb") as f:
        digest = hashlib.sha256(f.read()).digest()
    with AgentClient(sock_path) as agent:
        agent.hello()
        matches = [k for k in agent.list_keys() if k.get("label") == label]
        if not matches:
            raise LookupError(f"no key labelled {label!r}")
        if len(matches) > 1:
            ids = ", ".join(k["id"] for k in matches)
            raise LookupError(f"several keys labelled {label!r}: {ids}")
        key = matches[0]
        algorithm = SIGN_ALGORITHM_FOR_KEY.get(key.get("algorithm"))
        if algorithm is None:
            raise ValueError(f"key {key['id']} has unsupported algorithm {key.get('algorithm')!r}")
        cert = key.get("certificate")
        if not cert:
            raise LookupError(f"key {key['id']} has no certificate on the token")
        signature = agent.sign(key["id"], algorithm, digest)
    with open(out_sig, "wb") as f:
        f.write(signature)
    with open(out_sig + ".cert.der", "wb") as f:
        f.write(cert)


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(f"usage: {argv[0]} SOCKET LABEL DATAFILE OUTSIG", file=sys.stderr)
        return 1
    try:
        sign_file(*argv[1:])
    except Exception as e:  # the CLI contract: any failure -> message + exit 1
        print(f"agent_client: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
