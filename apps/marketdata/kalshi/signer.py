"""RSA-PSS request signing, as Kalshi's API keys require (kalshi-protocol.md §2).

The string signed is ``<timestamp ms><METHOD><path>`` with the query string stripped;
RSA-PSS with SHA-256, MGF1(SHA-256) and a salt as long as the digest; base64 with padding.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

WS_PATH = "/trade-api/ws/v2"
HEADER_KEY = "KALSHI-ACCESS-KEY"
HEADER_TIMESTAMP = "KALSHI-ACCESS-TIMESTAMP"
HEADER_SIGNATURE = "KALSHI-ACCESS-SIGNATURE"

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class SignerError(ValueError):
    """The key id is unusable, or the private key is missing, unreadable or not an RSA key."""


# Kalshi's key ids are UUIDs; allow any visible ASCII token up to this length, nothing else.
KEY_ID_MAX_LEN = 200


def check_key_id(key_id: str) -> str:
    """``key_id`` if it can be sent as a header value, else :class:`SignerError`.

    A key id with CR/LF or other control characters would be echoed into log lines and could
    split an HTTP header, so it is refused where it is configured. The message never repeats
    the value.
    """
    if not key_id:
        raise SignerError("the Kalshi API key id is empty")
    if len(key_id) > KEY_ID_MAX_LEN:
        raise SignerError(f"the Kalshi API key id is longer than {KEY_ID_MAX_LEN} characters")
    if not all("!" <= ch <= "~" for ch in key_id):
        raise SignerError(
            "the Kalshi API key id may hold only visible ASCII characters "
            "(no spaces, line breaks or control characters)"
        )
    return key_id


def string_to_sign(timestamp_ms: int | str, method: str, path: str) -> str:
    """What Kalshi signs: timestamp + METHOD + path without its query string."""
    return f"{timestamp_ms}{method.upper()}{path.split('?', 1)[0]}"


def load_private_key(pem: bytes | str) -> rsa.RSAPrivateKey:
    """Accept PKCS#1 (``BEGIN RSA PRIVATE KEY``) and PKCS#8 (``BEGIN PRIVATE KEY``), unencrypted."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The message never includes the key material itself.
        raise SignerError(f"could not load the Kalshi private key: {type(exc).__name__}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SignerError("the Kalshi private key must be an RSA key")
    return key


def load_public_key(pem: bytes | str) -> rsa.RSAPublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignerError("the public key must be an RSA key")
    return key


def verify_signature(
    public_key: rsa.RSAPublicKey, *, timestamp_ms: str, method: str, path: str, signature_b64: str
) -> bool:
    """True when ``signature_b64`` signs the request. PSS is randomised: verify, never compare."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(
            signature,
            string_to_sign(timestamp_ms, method, path).encode(),
            _PSS,
            hashes.SHA256(),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class KalshiSigner:
    """Signs requests for one API key. ``repr`` never shows the key material."""

    key_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        check_key_id(self.key_id)

    @classmethod
    def from_pem(cls, *, key_id: str, pem: bytes | str) -> KalshiSigner:
        check_key_id(key_id)
        return cls(key_id=key_id, private_key=load_private_key(pem))

    @classmethod
    def from_file(cls, *, key_id: str, path: str | Path) -> KalshiSigner:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise SignerError(
                f"cannot read the Kalshi private key file {path}: {exc.strerror}"
            ) from None
        return cls.from_pem(key_id=key_id, pem=pem)

    def sign(self, message: str) -> str:
        signature = self.private_key.sign(message.encode(), _PSS, hashes.SHA256())
        return base64.b64encode(signature).decode()

    def headers(
        self, *, method: str = "GET", path: str = WS_PATH, timestamp_ms: int | None = None
    ) -> dict[str, str]:
        """The three KALSHI-ACCESS-* headers for one request."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        return {
            HEADER_KEY: self.key_id,
            HEADER_TIMESTAMP: str(ts),
            HEADER_SIGNATURE: self.sign(string_to_sign(ts, method, path)),
        }


def generate_key_pair(bits: int = 2048) -> tuple[bytes, bytes]:
    """A fresh (private PKCS#8 PEM, public PEM) pair, for the local exchange and tests."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem
