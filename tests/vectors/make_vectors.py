#!/usr/bin/env python3
"""Computes the spec's test vectors independently of the Rust code.

Uses only Python's standard library (hmac, hashlib, ipaddress, base64) and the
`cryptography` package (HKDF, AES-GCM, AES-ECB for Crypto-PAn). Its output,
vectors.json beside it, is checked in; tests/vectors.rs checks the Rust code
against it. Re-run after a spec change only (a spec change is a new version):

    python3 tests/vectors/make_vectors.py > tests/vectors/vectors.json
"""
import base64
import hashlib
import hmac
import ipaddress
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PSEUDONYM_ID = "p-test-1"
PSEUDONYM_SECRET = bytes(range(32))
ENCRYPTION_ID = "e-test-1"
ENCRYPTION_SECRET = bytes(range(32, 64))


def hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


HMAC_KEY = hkdf(PSEUDONYM_SECRET, b"pseudonymizer/v1/hmac-sha256")
PAN_KEY = hkdf(PSEUDONYM_SECRET, b"pseudonymizer/v1/cryptopan")
AES_KEY = hkdf(ENCRYPTION_SECRET, b"pseudonymizer/v1/aes-256-gcm")


def token(cls: str, canonical: str) -> str:
    mac = hmac.new(HMAC_KEY, cls.encode() + b"\x00" + canonical.encode("utf-8"), hashlib.sha256).digest()
    return PSEUDONYM_ID + ":" + base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")


def canonical_ip(text: str):
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip


# (class asked for, input, class used, canonical). Phone canonical forms are E.164 as
# libphonenumber gives them with default region ID; they are stated here, not computed.
TOKEN_CASES = [
    ("phone", "+6281234567890", "phone", "+6281234567890"),
    ("phone", "0812-3456-7890", "phone", "+6281234567890"),
    ("phone", "+62 21 5550 1234", "phone", "+622155501234"),
    ("phone", "+1 415 555 2671", "phone", "+14155552671"),
    ("phone", "+44 20 7946 0958", "phone", "+442079460958"),
    ("phone", "  anonymous ", "phone-raw", "anonymous"),
    ("email", "  Alice.Example@Example.COM ", "email", "alice.example@example.com"),
    ("id", "dev-4f1c2a9e7b3d5c80", "id", "dev-4f1c2a9e7b3d5c80"),
    ("id", " 6281234567890", "id", " 6281234567890"),
    ("id", "+6281234567890", "id", "+6281234567890"),
]
for text in ["203.0.113.45", " 10.0.0.1 ", "2001:DB8:0:0:0:0:0:1", "2001:db8:0:1:1:1:1:1",
             "::ffff:198.51.100.7", "fe80::1:0:0:0", "n/a", "10.0.0.256"]:
    ip = canonical_ip(text)
    if ip is None:
        TOKEN_CASES.append(("ip", text, "ip-raw", text.strip()))
    else:
        TOKEN_CASES.append(("ip", text, "ip", str(ip)))


def cryptopan(ip) -> str:
    """Crypto-PAn as in the paper's reference code, generalised to 128 bits for IPv6."""
    ecb = Cipher(algorithms.AES(PAN_KEY[:16]), modes.ECB()).encryptor()
    pad = int.from_bytes(ecb.update(PAN_KEY[16:]), "big")
    width = 32 if ip.version == 4 else 128
    addr = int(ip) << (128 - width)  # address in the top bits of the block
    flips = 0
    for pos in range(width):
        if pos == 0:
            block = pad
        else:
            keep = ((1 << pos) - 1) << (128 - pos)
            block = (addr & keep) | (pad & ~keep & ((1 << 128) - 1))
        out = ecb.update(block.to_bytes(16, "big"))
        flips |= (out[0] >> 7) << (127 - pos)
    result = (addr ^ flips) >> (128 - width)
    return str(ipaddress.ip_address(result) if width == 32 else ipaddress.IPv6Address(result))


PAN_CASES = ["192.0.2.1", "192.0.2.200", "192.0.200.1", "10.1.2.3", "255.255.255.255",
             "0.0.0.0", "2001:db8::1", "2001:db8::ffff:1", "::ffff:192.0.2.1"]


def envelope(key_id: str, nonce: bytes, field_path: str, plaintext: bytes) -> bytes:
    header = bytes([1, len(key_id)]) + key_id.encode()
    sealed = AESGCM(AES_KEY).encrypt(nonce, plaintext, header + field_path.encode())
    return header + nonce + sealed


ENVELOPE_CASES = [
    ("body", bytes(range(12)), "Halo 👋, ketemu jam 7?".encode()),
    ("attachments.url", bytes([0xA5] * 12), b"https://media.example.net/m/1.jpg"),
    ("recording_url", bytes(12), b""),
]

print(json.dumps({
    "pseudonym_key": {"id": PSEUDONYM_ID, "secret_b64": base64.b64encode(PSEUDONYM_SECRET).decode()},
    "encryption_key": {"id": ENCRYPTION_ID, "secret_b64": base64.b64encode(ENCRYPTION_SECRET).decode()},
    "working_keys_hex": {"hmac": HMAC_KEY.hex(), "cryptopan": PAN_KEY.hex(), "aes_256_gcm": AES_KEY.hex()},
    "tokens": [
        {"class": c, "input": i, "token_class": tc, "canonical": can, "token": token(tc, can)}
        for c, i, tc, can in TOKEN_CASES
    ],
    "cryptopan": [
        {"input": i, "output": cryptopan(canonical_ip(i))} for i in PAN_CASES
    ],
    "envelopes": [
        {"field_path": p, "nonce_hex": n.hex(), "plaintext_b64": base64.b64encode(pt).decode(),
         "envelope_b64": base64.b64encode(envelope(ENCRYPTION_ID, n, p, pt)).decode()}
        for p, n, pt in ENVELOPE_CASES
    ],
}, indent=2, ensure_ascii=False))
