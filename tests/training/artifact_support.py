"""Hostile artifacts for the loader tests: real payloads that run code when unpickled."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

SENTINEL_ENV = "KALSHIFLOW_PWNED"


class Payload:
    """Unpickling this runs ``exec``: it writes ``sentinel`` and sets an env variable."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        code = (
            f"open({str(self.sentinel)!r}, 'w').write('pwned'); "
            f"__import__('os').environ[{SENTINEL_ENV!r}] = '1'"
        )
        return exec, (code,)


def pwned(sentinel: Path) -> bool:
    return sentinel.exists() or SENTINEL_ENV in os.environ


def malicious_sb3_zip(model: Any, path: Path, sentinel: Path) -> None:
    """``model.save(path)`` with one of the zip's cloudpickled ``data`` entries replaced by
    :class:`Payload`: Stable-Baselines3's ``.load()`` runs it."""
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(members["data"])
    target = next(k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v)
    data[target][":serialized:"] = base64.b64encode(pickle.dumps(Payload(sentinel))).decode()
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def npy_with_pickled_objects(sentinel: Path) -> bytes:
    """A ``.npy`` of dtype object: numpy unpickles its body when ``allow_pickle=True``."""
    array = np.empty(1, dtype=object)
    array[0] = Payload(sentinel)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def rewrite_member(path: Path, name: str, content: bytes) -> None:
    """Replace (or add) one member of the zip at ``path``."""
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members[name] = content
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
