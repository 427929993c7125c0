"""Model artifacts on disk: tensors and a JSON manifest, nothing that can run code on load.

An artifact (``model.zip``) holds exactly:

* ``manifest.json``: the format name and version, the algorithm, the observation shape, the
  action space's ``nvec``, the observation spec version, and per tensor its name, shape,
  dtype and file;
* ``tensors/<i>.npy``: one numpy array per entry of the policy's ``state_dict``.

Why not SB3's ``model.save()`` / ``.load()``: SB3 stores several attributes in the zip's
``data`` entry as base64 cloudpickle and unpickles them on load, so a swapped ``model.zip``
runs whatever its pickle says. Here nothing from the file is unpickled: the policy is rebuilt
from what the registry row (the run spec) says — algorithm and number of markets, which fix
the network — and only arrays are read, with ``numpy.lib.format.read_array(allow_pickle=False)``
(a ``.npy`` header is a Python literal parsed by ``ast.literal_eval``; object arrays are
refused). The file is read into memory once, its sha256 checked against the registry's, and
parsed from those same bytes, so it cannot change between the check and the load.

:func:`load_verified` is the one loader: the trainer's evaluation and fine-tuning, the
registry's promotion and rollback, and the paper trader all call it (through
:func:`apps.training.services.load_policy` where Django settings give the root).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ALGORITHM_CLASSES = ("PPO", "A2C", "MaskablePPO")
ARTIFACT_FORMAT = "kalshiflow-policy"
ARTIFACT_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024  # a 10-market MLP policy is ~1 MB
MAX_MANIFEST_BYTES = 1024 * 1024
_NPY_HEADER_ALLOWANCE = 4096  # bytes a .npy file may hold beyond its array data
_FIXED_ZIP_TIME = (2000, 1, 1, 0, 0, 0)  # the same tensors give the same bytes and sha256


class ArtifactError(RuntimeError):
    """The artifact is missing, outside the artifact root, changed since it was registered,
    or not a policy artifact this code wrote; the message says which."""


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


def spaces_for(n_markets: int) -> tuple[Any, Any]:
    """The env's observation and action spaces for ``n_markets`` (as KalshiTradingEnv has)."""
    import gymnasium as gym

    from apps.simulation.actions import ACTIONS_PER_MARKET
    from apps.simulation.features import N_FEATURES, N_MARKETS

    if not 1 <= n_markets <= N_MARKETS:
        raise ArtifactError(f"a policy trades 1 to {N_MARKETS} markets, not {n_markets}")
    return (
        gym.spaces.Box(-1.0, 1.0, shape=(N_FEATURES,), dtype=np.float32),
        gym.spaces.MultiDiscrete([ACTIONS_PER_MARKET] * n_markets),
    )


def build_policy(*, algorithm: str, n_markets: int) -> Any:
    """A fresh policy network of ``algorithm`` for ``n_markets`` (the layout training builds:
    SB3's default ``MlpPolicy``), in evaluation mode, on the CPU. Its weights are random until
    :func:`load_verified` fills them."""
    import torch

    observation_space, action_space = spaces_for(n_markets)
    policy_class = algorithm_class(algorithm).policy_aliases["MlpPolicy"]
    # fork_rng: building must not move the caller's global torch RNG (training determinism).
    with torch.random.fork_rng(devices=[]):
        policy = policy_class(observation_space, action_space, _no_learning, ortho_init=False)
    policy.set_training_mode(False)
    return policy.to("cpu")


def _no_learning(_progress: float) -> float:
    return 0.0


# -- saving --------------------------------------------------------------------------------


def save_artifact(policy: Any, path: Path, *, algorithm: str) -> str:
    """Write ``policy``'s tensors and manifest to ``path`` atomically; return its sha256."""

    state = policy.state_dict()
    tensors = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i, (name, tensor) in enumerate(state.items()):
            array = tensor.detach().cpu().numpy()
            member = f"tensors/{i}.npy"
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
            _write(archive, member, npy.getvalue())
            tensors.append(
                {"name": name, "shape": list(array.shape), "dtype": array.dtype.str, "file": member}
            )
        manifest = {**_manifest_header(policy, algorithm), "tensors": tensors}
        _write(archive, MANIFEST, json.dumps(manifest, indent=1).encode())
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def _write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


# -- loading -------------------------------------------------------------------------------


def resolve_artifact(path: str | Path, *, root: str | Path) -> Path:
    """``path`` as a real file inside ``root`` (relative paths are taken from ``root``).

    Symlinks and ``..`` are resolved first, so neither can lead outside the root.
    """
    if not str(path):
        raise ArtifactError("no artifact path is recorded")
    base = Path(root).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = base / candidate
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ArtifactError(f"artifact {path} does not exist") from None
    if not real.is_relative_to(base):
        raise ArtifactError(
            f"artifact {path} resolves outside the artifact root {base} (MODEL_DIR): "
            "refusing to load it"
        )
    if not real.is_file():
        raise ArtifactError(f"artifact {path} is not a regular file")
    return real


def read_verified(path: str | Path, *, sha256: str, root: str | Path) -> bytes:
    """The bytes of the artifact at ``path`` (inside ``root``) if their sha256 is ``sha256``."""
    real = resolve_artifact(path, root=root)
    if not sha256:
        raise ArtifactError(f"artifact {path} has no recorded sha256: refusing to load it")
    with real.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"artifact {path} is larger than {MAX_ARTIFACT_BYTES} bytes")
        # read(n) allocates n bytes up front: ask for the file's size (+1 to see growth).
        data = handle.read(size + 1)
    if len(data) != size:
        raise ArtifactError(f"artifact {path} changed size while it was read")
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, sha256.lower()):
        raise ArtifactError(
            f"artifact {path} has sha256 {actual[:12]}..., the registry expects "
            f"{sha256[:12]}...: refusing to load a file that changed"
        )
    return data


def load_verified(
    *,
    path: str | Path,
    sha256: str,
    algorithm: str,
    n_markets: int,
    root: str | Path,
) -> Any:
    """The policy stored at ``path``, rebuilt for ``algorithm`` and ``n_markets`` (what the
    registry row says) after checking the file lies inside ``root`` and has ``sha256``.

    Returns an SB3 policy in evaluation mode (``predict(obs, deterministic=True)``, and
    ``action_masks=`` for MaskablePPO). Raises :class:`ArtifactError` for anything else;
    nothing in the file is ever unpickled or executed.
    """
    data = read_verified(path, sha256=sha256, root=root)
    policy = build_policy(algorithm=algorithm, n_markets=n_markets)
    try:
        state = _read_tensors(data, policy=policy, algorithm=algorithm)
    except ArtifactError as exc:
        raise ArtifactError(f"artifact {path}: {exc}") from None
    except (
        zipfile.BadZipFile,  # also a member whose CRC does not match
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        NotImplementedError,  # an unsupported compression method
    ) as exc:
        raise ArtifactError(f"artifact {path} is damaged: {type(exc).__name__}: {exc}") from None
    import torch

    policy.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return policy


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _read_tensors(data: bytes, *, policy: Any, algorithm: str) -> dict[str, np.ndarray]:
    """Check the archive against the policy it must fill; return its arrays by name."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ArtifactError("not a zip archive") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        if MANIFEST not in infos:
            raise ArtifactError(
                f"no {MANIFEST}: not a {ARTIFACT_FORMAT} artifact (a Stable-Baselines3 "
                "model.zip is refused: its pickled data could run code); retrain the model"
            )
        manifest = _json(_read_member(archive, infos[MANIFEST], MAX_MANIFEST_BYTES))
        _check_manifest(manifest, policy=policy, algorithm=algorithm)
        expected = {name: t.detach().cpu().numpy() for name, t in policy.state_dict().items()}
        entries = manifest["tensors"]
        names = [e.get("name") if isinstance(e, dict) else None for e in entries]
        if sorted(map(str, names)) != sorted(expected) or len(set(names)) != len(names):
            raise ArtifactError(
                f"its tensors {names} are not the {algorithm} policy's {sorted(expected)}"
            )
        files = {e.get("file") for e in entries}
        extra = set(infos) - files - {MANIFEST}
        if extra or len(files) != len(entries):
            raise ArtifactError(f"unexpected or shared members {sorted(map(str, extra))}")
        arrays = {}
        for entry in entries:
            want = expected[entry["name"]]
            info = infos.get(entry["file"])
            if info is None:
                raise ArtifactError(f"member {entry['file']!r} is missing")
            raw = _read_member(archive, info, want.nbytes + _NPY_HEADER_ALLOWANCE)
            try:
                array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
            except (ValueError, OSError, SyntaxError) as exc:
                raise ArtifactError(f"{entry['file']} is not a plain array: {exc}") from None
            if array.dtype != want.dtype or array.shape != want.shape:
                raise ArtifactError(
                    f"{entry['name']} is {array.dtype} {array.shape}, the policy needs "
                    f"{want.dtype} {want.shape}"
                )
            if not np.isfinite(array).all():
                raise ArtifactError(f"{entry['name']} holds NaN or infinite weights")
            arrays[entry["name"]] = array
        return arrays


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, refused beyond ``limit`` (a small zip can inflate to gigabytes)."""
    if info.file_size > limit:
        raise ArtifactError(f"{info.filename} inflates to {info.file_size} bytes (> {limit})")
    with archive.open(info) as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise ArtifactError(f"{info.filename} inflates beyond {limit} bytes")
    return raw


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{MANIFEST} is not valid JSON: {exc}") from None


def _manifest_header(policy: Any, algorithm: str) -> dict[str, Any]:
    """What a manifest must say of the policy it holds (written on save, checked on load)."""
    from apps.simulation.features import OBSERVATION_SPEC_VERSION

    return {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "algorithm": algorithm,
        "observation_shape": list(policy.observation_space.shape),
        "action_nvec": [int(n) for n in policy.action_space.nvec],
        "observation_spec_version": OBSERVATION_SPEC_VERSION,
    }


def _check_manifest(manifest: Any, *, policy: Any, algorithm: str) -> None:
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST} is not a JSON object")
    for key, value in _manifest_header(policy, algorithm).items():
        if manifest.get(key) != value:
            raise ArtifactError(
                f"{MANIFEST} says {key}={manifest.get(key)!r}; the registry expects {value!r}"
            )
    if not isinstance(manifest.get("tensors"), list):
        raise ArtifactError(f"{MANIFEST} lists no tensors")


__all__ = [
    "ALGORITHM_CLASSES",
    "ArtifactError",
    "algorithm_class",
    "build_policy",
    "load_verified",
    "read_verified",
    "resolve_artifact",
    "save_artifact",
    "sha256_of",
    "spaces_for",
]
