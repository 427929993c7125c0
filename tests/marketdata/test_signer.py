"""RSA-PSS signing of the WebSocket handshake (kalshi-protocol.md §2)."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from apps.marketdata.kalshi import signer
from apps.marketdata.kalshi.signer import KalshiSigner, SignerError

KEY_ID = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
TS = 1703123456789


@pytest.fixture(scope="module")
def key_pair() -> tuple[bytes, bytes]:
    return signer.generate_key_pair()


@pytest.fixture(scope="module")
def other_key_pair() -> tuple[bytes, bytes]:
    return signer.generate_key_pair()


@pytest.fixture
def kalshi_signer(key_pair: tuple[bytes, bytes]) -> KalshiSigner:
    return KalshiSigner.from_pem(key_id=KEY_ID, pem=key_pair[0])


def _pkcs1(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_it_signs_exactly_timestamp_get_and_the_ws_path() -> None:
    assert (
        signer.string_to_sign(TS, "GET", "/trade-api/ws/v2") == "1703123456789GET/trade-api/ws/v2"
    )
    assert signer.string_to_sign(str(TS), "get", "/trade-api/ws/v2?x=1&y=2") == (
        "1703123456789GET/trade-api/ws/v2"
    )


def test_its_headers_verify_with_the_public_key(
    kalshi_signer: KalshiSigner, key_pair: tuple[bytes, bytes]
) -> None:
    headers = kalshi_signer.headers(timestamp_ms=TS)
    assert headers[signer.HEADER_KEY] == KEY_ID
    assert headers[signer.HEADER_TIMESTAMP] == "1703123456789"
    public_key = signer.load_public_key(key_pair[1])
    assert signer.verify_signature(
        public_key,
        timestamp_ms=headers[signer.HEADER_TIMESTAMP],
        method="GET",
        path="/trade-api/ws/v2",
        signature_b64=headers[signer.HEADER_SIGNATURE],
    )


def test_the_signature_is_pss_sha256_with_a_32_byte_salt_over_the_kalshi_string(
    kalshi_signer: KalshiSigner, key_pair: tuple[bytes, bytes]
) -> None:
    # Checked with the cryptography API directly, not through signer.verify_signature, so a
    # mistake shared by signing and verifying code cannot hide.
    signature_b64 = kalshi_signer.headers(timestamp_ms=TS)[signer.HEADER_SIGNATURE]
    signature = base64.b64decode(signature_b64, validate=True)
    assert len(signature) == 256  # 2048-bit key
    public_key = serialization.load_pem_public_key(key_pair[1])
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    public_key.verify(signature, b"1703123456789GET/trade-api/ws/v2", pss, hashes.SHA256())
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, b"1703123456789GET/trade-api/ws/v2?", pss, hashes.SHA256())


def test_pss_is_randomised_so_two_signatures_differ_and_both_verify(
    kalshi_signer: KalshiSigner, key_pair: tuple[bytes, bytes]
) -> None:
    first = kalshi_signer.sign("1703123456789GET/trade-api/ws/v2")
    second = kalshi_signer.sign("1703123456789GET/trade-api/ws/v2")
    assert first != second
    public_key = signer.load_public_key(key_pair[1])
    for signature_b64 in (first, second):
        assert signer.verify_signature(
            public_key,
            timestamp_ms=str(TS),
            method="GET",
            path="/trade-api/ws/v2",
            signature_b64=signature_b64,
        )


def test_a_pkcs1_key_loads_and_signs_like_its_pkcs8_twin(key_pair: tuple[bytes, bytes]) -> None:
    pkcs1 = _pkcs1(key_pair[0])
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert key_pair[0].startswith(b"-----BEGIN PRIVATE KEY-----")
    from_pkcs1 = KalshiSigner.from_pem(key_id=KEY_ID, pem=pkcs1.decode())
    headers = from_pkcs1.headers(timestamp_ms=TS)
    assert signer.verify_signature(
        signer.load_public_key(key_pair[1]),
        timestamp_ms=str(TS),
        method="GET",
        path="/trade-api/ws/v2",
        signature_b64=headers[signer.HEADER_SIGNATURE],
    )


def test_a_signature_does_not_verify_with_another_key(
    kalshi_signer: KalshiSigner, other_key_pair: tuple[bytes, bytes]
) -> None:
    headers = kalshi_signer.headers(timestamp_ms=TS)
    assert not signer.verify_signature(
        signer.load_public_key(other_key_pair[1]),
        timestamp_ms=str(TS),
        method="GET",
        path="/trade-api/ws/v2",
        signature_b64=headers[signer.HEADER_SIGNATURE],
    )


@pytest.mark.parametrize(
    ("timestamp_ms", "method", "path"),
    [
        (str(TS + 1), "GET", "/trade-api/ws/v2"),  # replayed with a fresher timestamp
        (str(TS), "POST", "/trade-api/ws/v2"),
        (str(TS), "GET", "/trade-api/v2"),
    ],
)
def test_a_tampered_request_fails_verification(
    kalshi_signer: KalshiSigner,
    key_pair: tuple[bytes, bytes],
    timestamp_ms: str,
    method: str,
    path: str,
) -> None:
    signature_b64 = kalshi_signer.headers(timestamp_ms=TS)[signer.HEADER_SIGNATURE]
    assert not signer.verify_signature(
        signer.load_public_key(key_pair[1]),
        timestamp_ms=timestamp_ms,
        method=method,
        path=path,
        signature_b64=signature_b64,
    )


@pytest.mark.parametrize(
    "signature_b64", ["", "not base64!", "AAAA", base64.b64encode(b"x" * 256).decode()]
)
def test_garbage_signatures_are_refused_not_raised(
    key_pair: tuple[bytes, bytes], signature_b64: str
) -> None:
    assert not signer.verify_signature(
        signer.load_public_key(key_pair[1]),
        timestamp_ms=str(TS),
        method="GET",
        path="/trade-api/ws/v2",
        signature_b64=signature_b64,
    )


def test_repr_never_shows_key_material(
    kalshi_signer: KalshiSigner, key_pair: tuple[bytes, bytes]
) -> None:
    text = repr(kalshi_signer) + str(kalshi_signer)
    assert KEY_ID in text
    assert "PRIVATE" not in text
    assert "RSAPrivateKey" not in text
    numbers = kalshi_signer.private_key.private_numbers()
    for secret in (numbers.d, numbers.p, numbers.q, numbers.public_numbers.n):
        assert str(secret)[:20] not in text
        assert format(secret, "x")[:20] not in text
    pem_body = key_pair[0].decode().splitlines()[1]
    assert pem_body not in text


def test_a_broken_key_fails_with_a_message_that_does_not_echo_it(
    key_pair: tuple[bytes, bytes],
) -> None:
    lines = key_pair[0].decode().splitlines()
    broken = "\n".join([lines[0], lines[1][::-1], *lines[2:]])
    with pytest.raises(SignerError) as caught:
        KalshiSigner.from_pem(key_id=KEY_ID, pem=broken)
    assert lines[1][::-1] not in str(caught.value)
    assert "could not load" in str(caught.value)


def test_a_non_rsa_key_is_refused() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(SignerError, match="RSA"):
        KalshiSigner.from_pem(key_id=KEY_ID, pem=ec_pem)


def test_an_empty_key_id_or_a_missing_key_file_is_refused(
    key_pair: tuple[bytes, bytes], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SignerError, match="key id is empty"):
        KalshiSigner.from_pem(key_id="", pem=key_pair[0])
    with pytest.raises(SignerError, match="cannot read"):
        KalshiSigner.from_file(key_id=KEY_ID, path=tmp_path / "absent.pem")
    key_file = tmp_path / "kalshi.pem"
    key_file.write_bytes(_pkcs1(key_pair[0]))
    loaded = KalshiSigner.from_file(key_id=KEY_ID, path=key_file)
    assert isinstance(loaded.private_key, rsa.RSAPrivateKey)
