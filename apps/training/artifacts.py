"""Model artifacts on disk: saved with their sha256, refused on load when it does not match."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

ALGORITHM_CLASSES = ("PPO", "A2C", "MaskablePPO")


class ArtifactError(RuntimeError):
    """The artifact is missing or its content is not what the registry recorded."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def algorithm_class(name: str) -> Any:
    if name == "PPO":
        from stable_baselines3 import PPO

        return PPO
    if name == "A2C":
        from stable_baselines3 import A2C

        return A2C
    if name == "MaskablePPO":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    raise ArtifactError(f"unknown algorithm {name!r}")


def load_verified(*, path: str | Path, sha256: str, algorithm: str) -> Any:
    """Load an SB3 model after checking its sha256 against the registry's."""
    artifact = Path(path)
    if not artifact.is_file():
        raise ArtifactError(f"artifact {artifact} does not exist")
    actual = sha256_of(artifact)
    if actual != sha256:
        raise ArtifactError(
            f"artifact {artifact} has sha256 {actual[:12]}..., the registry expects "
            f"{sha256[:12]}...: refusing to load a file that changed"
        )
    return algorithm_class(algorithm).load(artifact, device="cpu")
