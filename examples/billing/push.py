#!/usr/bin/env python3
"""Secure usage push to the VK Cloud Marketplace API, or to `ibkit serve`'s
emulator of it: one metric, encrypted as VK's documentation says (AES-256-CBC
with PKCS#7 padding for the JSON; RSA-OAEP with SHA-256 and MGF1 SHA-256 for
the AES key and IV, to the marketplace's public key), sent with the current
access key, and the answer's signature verified with the same public key.

    push.py [options] URL TOKEN_FILE PUBLIC_KEY_PEM PARAM VALUE

URL             https://cloud.vk.ru (the marketplace) or ibkit serve's URL
TOKEN_FILE      the file holding the current access key (the marketplace
                agent's token file, `token_file_path`)
PUBLIC_KEY_PEM  the marketplace's public key (SPKI "PUBLIC KEY" or PKCS#1
                "RSA PUBLIC KEY"; ibkit: GET /v1/billing/public-key)
PARAM VALUE     the option (its YAML file's name) and the quantity used

Prints the answer (JSON) on stdout. Exit status: 0 accepted and the
signature verifies, 1 refused (the status and the service's error on
stderr), 2 the signature does not verify, 3 usage or local errors.

Needs Python 3.8+ and `cryptography` (Debian: python3-cryptography).
A self-signed service certificate: --cafile CERT, or SSL_CERT_FILE=CERT.
"""

import argparse
import base64
import datetime
import json
import os
import secrets
import ssl
import sys
import tempfile
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import hashes, padding as sym_padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

API = "/marketplace/api/infra-api/v1-public"


def encrypt_message(public_key_pem: bytes, data) -> dict:
    """VK's example, unchanged in substance: `data` as JSON, AES-256-CBC,
    key and IV wrapped with RSA-OAEP (SHA-256), all base64url (padded)."""
    symmetric_key = os.urandom(32)
    iv = os.urandom(16)
    message_json = json.dumps(data).encode("utf-8")
    padder = sym_padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(message_json) + padder.finalize()
    encryptor = Cipher(algorithms.AES(symmetric_key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    public_key = serialization.load_pem_public_key(public_key_pem)
    oaep = padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()),
        algorithm=hashes.SHA256(),
        label=None,
    )
    b64 = lambda b: base64.urlsafe_b64encode(b).decode("ascii")  # noqa: E731
    return {
        "encryptedPayload": b64(encrypted),
        "encryptedKey": b64(public_key.encrypt(symmetric_key, oaep)),
        "encryptedIV": b64(public_key.encrypt(iv, oaep)),
    }


def verify_answer(public_key_pem: bytes, body: bytes) -> dict:
    """Checks the answer's signature: RSASSA-PKCS1-v1_5 SHA-256 over the
    exact bytes of `payload` as the body carries them (ibkit writes the body
    as {"payload":<bytes>,"signature":"<base64url>"})."""
    head, sep = b'{"payload":', b',"signature":"'
    if not body.startswith(head) or sep not in body:
        raise ValueError("the answer is not {\"payload\":…,\"signature\":…}")
    signed = body[len(head) : body.rindex(sep)]
    answer = json.loads(body)
    signature = base64.urlsafe_b64decode(answer["signature"])
    public_key = serialization.load_pem_public_key(public_key_pem)
    public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    # The signed bytes are the compact JSON of the payload: a client that
    # re-serializes the parsed object gets them back.
    compact = json.dumps(answer["payload"], separators=(",", ":"), ensure_ascii=False)
    if compact.encode("utf-8") != signed:
        raise ValueError("the signed bytes are not the payload's compact JSON")
    return answer


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def request(ctx, method: str, url: str, key: str, body=None):
    """(status, body bytes) of one call."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rotate(ctx, base: str, token_file: str, key: str) -> str:
    """GET auth/key: when `secondary_key` is present, `key` is the new one;
    it replaces the token file's content (atomically) and is used from now
    on. What an application does when no agent keeps the file current."""
    status, body = request(ctx, "GET", base + API + "/auth/key", key)
    if status != 200:
        raise RuntimeError(f"auth/key answered {status}: {body.decode('utf-8', 'replace')}")
    answer = json.loads(body)
    if answer.get("secondary_key") and answer["key"] != key:
        d = os.path.dirname(os.path.abspath(token_file))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".token-")
        with os.fdopen(fd, "w") as f:
            f.write(answer["key"] + "\n")
        os.replace(tmp, token_file)
        return answer["key"]
    return key


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("token_file")
    ap.add_argument("public_key_pem")
    ap.add_argument("param")
    ap.add_argument("value", type=float)
    ap.add_argument("--id", help="metric id (an integer, else a string; default: random)")
    ap.add_argument("--count", type=int, default=1, help="send COUNT metrics (ids ID, ID+1, …)")
    ap.add_argument("--base-date", help="when the usage was measured (RFC 3339; default now)")
    ap.add_argument("--timestamp", help="the message's timestamp (RFC 3339; default now)")
    ap.add_argument("--test", action="store_true", help="POST metrics/decrypt: checked, not counted")
    ap.add_argument("--go-payload", action="store_true", help="payload as base64url JSON (VK's Go example)")
    ap.add_argument("--rotate", action="store_true", help="ask auth/key first and switch keys as told")
    ap.add_argument("--dry-run", action="store_true", help="print the encrypted request, send nothing")
    ap.add_argument("--cafile", help="CA certificate(s) to verify the service with")
    a = ap.parse_args()

    with open(a.public_key_pem, "rb") as f:
        pem = f.read()
    with open(a.token_file, encoding="utf-8") as f:
        key = f.read().strip()
    base = a.url.rstrip("/")
    ctx = ssl.create_default_context(cafile=a.cafile)

    first = a.id if a.id is not None else str(secrets.randbits(52))
    if first.isdigit():
        ids = [int(first) + i for i in range(a.count)]
    elif a.count == 1:
        ids = [first]
    else:
        ids = [f"{first}-{i}" for i in range(1, a.count + 1)]
    payload = {
        "metrics": [{"id": i, "param": a.param, "value": a.value} for i in ids],
        "base_date": a.base_date or utc_now(),
    }
    if a.go_payload:
        payload = base64.urlsafe_b64encode(json.dumps(payload).encode("utf-8")).decode("ascii")
    message = {"payload": payload, "timestamp": a.timestamp or utc_now()}
    encrypted = encrypt_message(pem, message)
    if a.dry_run:
        print(json.dumps(encrypted))
        return 0

    if a.rotate:
        key = rotate(ctx, base, a.token_file, key)
    endpoint = "/metrics/decrypt" if a.test else "/metrics/push"
    status, body = request(ctx, "POST", base + API + endpoint, key, encrypted)
    if status != 200:
        print(f"HTTP {status}: {body.decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    try:
        answer = verify_answer(pem, body)
    except Exception as e:  # InvalidSignature has no message
        print(f"the answer's signature does not verify: {type(e).__name__} {e}", file=sys.stderr)
        print(body.decode("utf-8", "replace"))
        return 2
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, RuntimeError) as e:
        print(f"push.py: {e}", file=sys.stderr)
        sys.exit(3)
