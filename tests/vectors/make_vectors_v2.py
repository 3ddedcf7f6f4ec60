#!/usr/bin/env python3
"""Computes the vectors of the formats added after spec v1 (docs/formats.md), independently of
the Rust code: version-2 envelopes (XAES-256-GCM), pseudonymisation domains, `id`
sub-classes, the tokens of record keys that are not UTF-8, the manifest digest of a
KMS-wrapped keyring, and subject ids and hints, subject registry records and an erasure notice
(section 5).

Uses only Python's standard library and the `cryptography` package (HKDF, AES-ECB for the
XAES-256-GCM key derivation, AES-GCM). XAES-256-GCM is written here from its specification
(C2SP, https://c2sp.org/XAES-256-GCM) and checked against that specification's own two test
vectors before anything is printed; so is SipHash-2-4 (Aumasson and Bernstein, "SipHash: a
fast short-input PRF", 2012), against the paper's own vectors. Its output, vectors_v2.json beside it, is checked in;
tests/vectors.rs checks the Rust code against it:

    python3 tests/vectors/make_vectors_v2.py > tests/vectors/vectors_v2.json

Run with a JSON file of envelopes as argument (`open FILE`), it opens them instead and prints
their plaintexts: tests/vectors.rs uses that to show envelopes made by the Rust code open here.
"""
import base64
import hashlib
import hmac
import json
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PSEUDONYM_ID = "p-test-1"
PSEUDONYM_SECRET = bytes(range(32))
ENCRYPTION_ID = "e-test-1"
ENCRYPTION_SECRET = bytes(range(32, 64))
SUBJECT_ID = "s-test-1"
SUBJECT_SECRET = bytes(range(64, 96))


def hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def aes_block(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def xaes_data_key(key: bytes, salt: bytes) -> bytes:
    """C2SP XAES-256-GCM: K1 is the CMAC subkey of L = AES(K, 0^128); the data key is
    AES(K, [0,1,'X',0] || N[:12] xor K1) || AES(K, [0,2,'X',0] || N[:12] xor K1)."""
    l = int.from_bytes(aes_block(key, bytes(16)), "big")
    k1 = ((l << 1) & ((1 << 128) - 1)) ^ (0x87 if l >> 127 else 0)
    k1 = k1.to_bytes(16, "big")
    m1 = bytes(a ^ b for a, b in zip(b"\x00\x01X\x00" + salt, k1))
    m2 = bytes(a ^ b for a, b in zip(b"\x00\x02X\x00" + salt, k1))
    return aes_block(key, m1) + aes_block(key, m2)


def xaes_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(xaes_data_key(key, nonce[:12])).encrypt(nonce[12:], plaintext, aad)


def xaes_open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(xaes_data_key(key, nonce[:12])).decrypt(nonce[12:], sealed, aad)


# The specification's own vectors: if this implementation disagrees, print nothing.
C2SP = [
    (b"\x01" * 32, b"ABCDEFGHIJKLMNOPQRSTUVWX", b"XAES-256-GCM", b"",
     "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"),
    (b"\x03" * 32, b"ABCDEFGHIJKLMNOPQRSTUVWX", b"XAES-256-GCM", b"c2sp.org/XAES-256-GCM",
     "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"),
]
for key, nonce, plaintext, aad, expected in C2SP:
    assert xaes_seal(key, nonce, plaintext, aad).hex() == expected, "C2SP vector"

XAES_KEY = hkdf(ENCRYPTION_SECRET, b"pseudonymizer/v2/xaes-256-gcm")


def envelope(key_id: str, nonce: bytes, field_path: str, plaintext: bytes) -> bytes:
    header = bytes([2, len(key_id)]) + key_id.encode()
    return header + nonce + xaes_seal(XAES_KEY, nonce, plaintext, header + field_path.encode())


def open_envelope(env: bytes, field_path: str) -> bytes:
    assert env[0] == 2, "version 2"
    h_len = 2 + env[1]
    nonce, body = env[h_len:h_len + 24], env[h_len + 24:]
    return xaes_open(XAES_KEY, nonce, body, env[:h_len] + field_path.encode())


def domain_keys(domain):
    if domain is None:
        return (hkdf(PSEUDONYM_SECRET, b"pseudonymizer/v1/hmac-sha256"),
                hkdf(PSEUDONYM_SECRET, b"pseudonymizer/v1/cryptopan"))
    prefix = b"pseudonymizer/v2/domain/" + domain.encode()
    return (hkdf(PSEUDONYM_SECRET, prefix + b"/hmac-sha256"),
            hkdf(PSEUDONYM_SECRET, prefix + b"/cryptopan"))


def keyed_id(key_id: str, mac_key: bytes, cls: str, canonical) -> str:
    """key_id ":" b64url(HMAC-SHA256(mac_key, class || 0x00 || canonical)[0..16]): a token
    (section 3), or a subject id under the subject key (section 5)."""
    if isinstance(canonical, str):
        canonical = canonical.encode()
    mac = hmac.new(mac_key, cls.encode() + b"\x00" + canonical, hashlib.sha256).digest()
    return key_id + ":" + base64.urlsafe_b64encode(mac[:16]).decode().rstrip("=")


def token(domain, cls: str, canonical) -> str:
    return keyed_id(PSEUDONYM_ID, domain_keys(domain)[0], cls, canonical)


def cryptopan_v4(domain, text: str) -> str:
    """Crypto-PAn as in spec §3 (the paper's reference code), IPv4 only."""
    key = domain_keys(domain)[1]
    pad = aes_block(key[:16], key[16:])
    addr = int.from_bytes(bytes(int(p) for p in text.split(".")), "big")
    pad_int = int.from_bytes(pad, "big")
    result = 0
    for i in range(32):
        # The first i bits of the address, then the pad's remaining bits.
        if i == 0:
            block_int = pad_int
        else:
            mask = ((1 << 128) - 1) ^ ((1 << (128 - i)) - 1)
            block_int = ((addr << 96) & mask) | (pad_int & ~mask & ((1 << 128) - 1))
        out = aes_block(key[:16], block_int.to_bytes(16, "big"))
        bit = out[0] >> 7
        result |= bit << (31 - i)
    anon = addr ^ result
    return ".".join(str(b) for b in anon.to_bytes(4, "big"))


# The raw class of a class whose values may fail to read (docs/formats.md, "Record keys").
RAW_CLASS = {"phone": "phone-raw", "ip": "ip-raw"}


def key_token(cls: str, key: bytes) -> tuple:
    """A record key's MAC class and token. Text keys are read like a field of their class
    (only the classes whose canonical form needs no phone metadata are computed here); a key
    that is not UTF-8 enters the MAC as its bytes, in its class's raw class."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        used = RAW_CLASS.get(cls, cls)
        return used, token(None, used, key)
    if cls == "email":
        return cls, token(None, cls, text.strip().lower())
    assert cls == "id" or cls.startswith("id."), cls
    return cls, token(None, cls, text)


# (key_class, key bytes): keys that are not UTF-8, and the text a lossy conversion would have
# made of the first (U+FFFD in place of the 0xff byte), which now has a token of its own.
def kms_manifest_sha256(doc: dict) -> str:
    """SHA-256 of a KMS-wrapped keyring's manifest text (docs/formats.md, "KMS-wrapped
    keyring"), hex: what the file's `manifest` wraps."""
    lines = [doc["format"], "kms " + doc["kms"], "keyring " + doc["keyring_id"],
             "generation %d" % doc["generation"]]
    for e in doc["keys"]:
        lines.append(" ".join(["key", e["id"], e["purpose"], e["state"], e["created_at"],
                               e.get("wrapped_secret", "-")]))
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


KMS_KEYRING = {
    "format": "pseudonymizer-keyring-kms/v2",
    "kms": "aws-kms://arn:aws:kms:ap-southeast-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "keyring_id": "kr-5f0c9a1e27b4d3c8",
    "generation": 4,
    "manifest": "AAAA",
    "keys": [
        {"id": "p-20261130-1436da", "purpose": "pseudonym", "state": "retired",
         "created_at": "2026-11-30T09:11:04Z", "wrapped_secret": "AQIDBA=="},
        {"id": "p-20261204-77aa01", "purpose": "pseudonym", "state": "active",
         "created_at": "2026-12-04T08:00:00Z", "wrapped_secret": "BQYHCA=="},
        {"id": "e-20261130-468fbc", "purpose": "encryption", "state": "destroyed",
         "created_at": "2026-11-30T09:11:04Z"},
        {"id": "e-20261204-90cc12", "purpose": "encryption", "state": "active",
         "created_at": "2026-12-04T08:00:00Z", "wrapped_secret": "CQoLDA=="},
    ],
}


KEY_CASES = [
    ("id", b"device-\xff\x01"),
    ("id", "device-\ufffd\x01".encode()),
    ("id", b"device-\xfe\x01"),
    ("id.device", b"device-\xff\x01"),
    ("phone", b"+62812\xff34567890"),
    ("ip", b"\xc0\x00\x02\x01"),
    ("email", b"Someone@Example.com\xff"),
    ("email", b" Someone@Example.COM "),
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Section 5: the subject key is never rotated, and has no domains.
SUBJECT_KEY = hkdf(SUBJECT_SECRET, b"pseudonymizer/v3/subject-id/hmac-sha256")


def subject_id(cls: str, canonical: str) -> str:
    return keyed_id(SUBJECT_ID, SUBJECT_KEY, cls, canonical)


MASK64 = (1 << 64) - 1


def siphash24(key: bytes, message: bytes) -> int:
    """SipHash-2-4 of `message` under a 16-byte key, as the paper defines it: the 64-bit result."""
    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & MASK64

    def sipround(v0, v1, v2, v3):
        v0 = (v0 + v1) & MASK64; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 = (v2 + v3) & MASK64; v3 = rotl(v3, 16); v3 ^= v2
        v0 = (v0 + v3) & MASK64; v3 = rotl(v3, 21); v3 ^= v0
        v2 = (v2 + v1) & MASK64; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
        return v0, v1, v2, v3

    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:16], "little")
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    # The last block: the tail bytes, and the message length mod 256 in the top byte.
    tail = len(message) - len(message) % 8
    blocks = [int.from_bytes(message[i:i + 8], "little") for i in range(0, tail, 8)]
    blocks.append(int.from_bytes(message[tail:], "little") | ((len(message) & 0xFF) << 56))
    for m in blocks:
        v3 ^= m
        for _ in range(2):
            v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


# The paper's vectors (key 00..0f): the empty message, and the 15 bytes 00..0e of Appendix A.
assert siphash24(bytes(range(16)), b"") == 0x726FDB47DD0E0E31
assert siphash24(bytes(range(16)), bytes(range(15))) == 0xA129CA6149BE45E5

# The subject-hint key: the first 16 bytes of its HKDF output (HKDF with L = 16 gives the same).
SUBJECT_HINT_KEY = hkdf(SUBJECT_SECRET, b"pseudonymizer/v3/subject-hint/siphash-2-4")[:16]


def subject_hint(cls: str, canonical: str) -> str:
    """b64url (no padding) of SipHash-2-4(hint key, class || 0x00 || canonical), 8 bytes
    little-endian."""
    value = siphash24(SUBJECT_HINT_KEY, cls.encode() + b"\x00" + canonical.encode())
    return base64.urlsafe_b64encode(value.to_bytes(8, "little")).decode().rstrip("=")


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def registry_record(identifier, state: str, domain, at: str, request: str, v1=False) -> dict:
    """A subject registry record of (class, canonical): key `<subject>/erased`,
    `<subject>/consent` or `<subject>/consent/<domain>`; value the JSON object, fields in the
    spec's order (format v2, with the hint; `v1`: the first format, without)."""
    subject = subject_id(*identifier)
    if state == "erased":
        assert domain is None, "an erasure has no domain"
        aspect = "erased"
    else:
        assert state in ("opted-out", "opted-in"), state
        aspect = "consent" if domain is None else "consent/" + domain
    value = {"format": "pseudonymizer-subject/v2", "subject": subject,
             "hint": subject_hint(*identifier), "state": state, "domain": domain, "at": at,
             "request": request}
    if v1:
        value["format"] = "pseudonymizer-subject/v1"
        del value["hint"]
    return {"key": subject + "/" + aspect, "value": compact(value)}


def erasure_notice(request: str, at: str, subjects: list, tokens: list) -> dict:
    """An erasure notice: key the request id; `tokens` are (domain, class, canonical) under the
    pseudonym key."""
    value = {"format": "pseudonymizer-erasure/v1", "request": request, "at": at,
             "subjects": subjects,
             "tokens": [{"token": token(d, c, v), "class": c, "key_id": PSEUDONYM_ID,
                         "domain": d} for d, c, v in tokens]}
    return {"key": request, "value": compact(value)}


if len(sys.argv) == 3 and sys.argv[1] == "open":
    cases = json.load(open(sys.argv[2]))
    print(json.dumps([
        b64(open_envelope(base64.b64decode(c["envelope_b64"]), c["field_path"])) for c in cases
    ]))
    sys.exit(0)

ENVELOPE_CASES = [
    ("body", bytes(range(24)), "Halo 👋, ketemu jam 7?".encode()),
    ("body", bytes(range(100, 124)), b""),
    ("attachments.url", b"\xff" * 24, b"https://example.invalid/a/b?c=d"),
    ("dlq:comms.raw", bytes(24), bytes(range(256)) * 3),
]

# (domain, class, canonical): tokens of the same canonical value in no domain (today's
# tokens), in two domains, and under `id` sub-classes.
TOKEN_CASES = [
    (None, "phone", "+6281234567890"),
    ("analytics-emea", "phone", "+6281234567890"),
    ("fraud", "phone", "+6281234567890"),
    (None, "id", "cell-4711"),
    (None, "id.cell", "cell-4711"),
    (None, "id.device", "cell-4711"),
    ("fraud", "id.cell", "cell-4711"),
    ("fraud", "email", "someone@example.com"),
]

# (class, canonical) of subject ids: a phone number, a value the phone parser rejects, an
# address, and one id with a role, without one, and in another case: six unrelated ids.
SUBJECT_CASES = [
    ("phone", "+6591234567"),
    ("phone-raw", "not a number"),
    ("email", "alice@example.com"),
    ("id.device", "dev-42"),
    ("id", "dev-42"),
    ("id", "Dev-42"),
]
PHONE = ("phone", "+6591234567")
PHONE_SUBJECT = subject_id(*PHONE)
AT = "2026-12-04T21:40:00Z"

print(json.dumps({
    "pseudonym_key": {"id": PSEUDONYM_ID, "secret_b64": b64(PSEUDONYM_SECRET)},
    "encryption_key": {"id": ENCRYPTION_ID, "secret_b64": b64(ENCRYPTION_SECRET)},
    "xaes_256_gcm_key_hex": XAES_KEY.hex(),
    "envelopes": [
        {
            "field_path": path,
            "nonce_hex": nonce.hex(),
            "plaintext_b64": b64(plaintext),
            "envelope_b64": b64(envelope(ENCRYPTION_ID, nonce, path, plaintext)),
        }
        for path, nonce, plaintext in ENVELOPE_CASES
    ],
    "domain_keys_hex": {
        d: {"hmac": domain_keys(d)[0].hex(), "cryptopan": domain_keys(d)[1].hex()}
        for d in ["analytics-emea", "fraud"]
    },
    "tokens": [
        {"domain": d, "class": c, "canonical": v, "token": token(d, c, v)}
        for d, c, v in TOKEN_CASES
    ],
    "record_keys": [
        {"key_class": c, "key_hex": k.hex(), "mac_class": key_token(c, k)[0],
         "token": key_token(c, k)[1]}
        for c, k in KEY_CASES
    ],
    "kms_manifest": {"keyring": KMS_KEYRING, "sha256": kms_manifest_sha256(KMS_KEYRING)},
    "cryptopan": [
        {"domain": d, "input": ip, "output": cryptopan_v4(d, ip)}
        for d in [None, "fraud"] for ip in ["192.0.2.1", "198.51.100.77"]
    ],
    "subjects": {
        "key_id": SUBJECT_ID,
        "secret": b64(SUBJECT_SECRET),
        "ids": [
            {"class": c, "canonical": v, "subject_id": subject_id(c, v), "hint": subject_hint(c, v)}
            for c, v in SUBJECT_CASES
        ],
        "records": [
            registry_record(PHONE, "erased", None, AT, "req-1"),
            registry_record(PHONE, "opted-out", "marketing", AT, "req-2"),
            registry_record(PHONE, "opted-in", None, AT, "req-3"),
            registry_record(("email", "alice@example.com"), "erased", None, AT, "req-4"),
        ],
        "records_v1": [
            registry_record(PHONE, "erased", None, AT, "req-1", v1=True),
        ],
        "notice": erasure_notice("req-1", AT, [PHONE_SUBJECT], [
            (None, "phone", "+6591234567"),
            ("marketing", "phone", "+6591234567"),
        ]),
    },
}, indent=1, ensure_ascii=False))
