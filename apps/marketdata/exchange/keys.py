"""Development keys for the local exchange, generated once per checkout.

The layout is fixed so the recorder can find them without configuration::

    <key_dir>/local-exchange.key-id       one line: the key id (a UUID, like Kalshi's)
    <key_dir>/local-exchange-private.pem  PKCS#8 RSA private key, mode 0600
    <key_dir>/local-exchange-public.pem   the matching public key (what the exchange checks)
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from apps.marketdata.kalshi.signer import generate_key_pair

from .errors import ConfigError

KEY_ID_FILE = "local-exchange.key-id"
PRIVATE_KEY_FILE = "local-exchange-private.pem"
PUBLIC_KEY_FILE = "local-exchange-public.pem"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class DevKeys(NamedTuple):
    key_id: str
    private_key_path: Path
    public_key_path: Path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key someone already uses; the mode is set at creation so the
    # private key is not readable by others even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def ensure_dev_keys(
    key_dir: str | Path, *, announce: Callable[[str], None] | None = print
) -> DevKeys:
    """Return the development key of ``key_dir``, generating it on first use.

    ``announce`` receives one line saying where a newly generated key was written (None:
    silent). A directory holding only some of the three files is refused rather than repaired:
    overwriting half a key pair would silently lock out whoever holds the other half.
    """
    directory = Path(key_dir)
    paths = DevKeys(
        key_id="",
        private_key_path=directory / PRIVATE_KEY_FILE,
        public_key_path=directory / PUBLIC_KEY_FILE,
    )
    id_path = directory / KEY_ID_FILE
    present = [p.exists() for p in (id_path, paths.private_key_path, paths.public_key_path)]
    if all(present):
        key_id = id_path.read_text().strip()
        if not _KEY_ID_RE.match(key_id):
            raise ConfigError(f"{id_path} does not hold a key id (a lowercase UUID): {key_id!r}")
        return paths._replace(key_id=key_id)
    if any(present):
        raise ConfigError(
            f"{directory} holds an incomplete local-exchange key set (need {KEY_ID_FILE}, "
            f"{PRIVATE_KEY_FILE} and {PUBLIC_KEY_FILE}); remove the leftovers to regenerate"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_pem, public_pem = generate_key_pair()
    key_id = str(uuid.uuid4())
    _write_new(paths.private_key_path, private_pem, 0o600)
    _write_new(paths.public_key_path, public_pem, 0o644)
    # The id file last: its presence marks a complete set.
    _write_new(id_path, f"{key_id}\n".encode(), 0o644)
    if announce is not None:
        announce(
            f"Generated a local-exchange development key {key_id}: private key "
            f"{paths.private_key_path} (mode 0600), public key {paths.public_key_path}"
        )
    return paths._replace(key_id=key_id)
