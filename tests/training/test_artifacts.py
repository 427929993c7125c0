"""Artifacts: reloaded policies act bit for bit like the saved ones, and nothing in a file —
a Stable-Baselines3 pickle, an object array, a zip bomb, a path outside the root — runs or
loads."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.simulation.env import EnvConfig, KalshiTradingEnv
from apps.simulation.synthetic import synthetic_history
from apps.training.artifacts import (
    MANIFEST,
    ArtifactError,
    algorithm_class,
    load_verified,
    save_artifact,
    sha256_of,
)
from tests.training.artifact_support import (
    SENTINEL_ENV,
    malicious_sb3_zip,
    npy_with_pickled_objects,
    pwned,
    rewrite_member,
)

MARKETS = 3


@pytest.fixture(scope="module")
def env() -> KalshiTradingEnv:
    return KalshiTradingEnv(
        synthetic_history(markets=MARKETS, ticks=300), config=EnvConfig(episode_steps=20)
    )


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(SENTINEL_ENV, raising=False)
    return tmp_path / "pwned.txt"


def trained(env: KalshiTradingEnv, algorithm: str):  # type: ignore[no-untyped-def]
    extra = {} if algorithm == "A2C" else {"batch_size": 32}
    model = algorithm_class(algorithm)("MlpPolicy", env, seed=7, device="cpu", n_steps=32, **extra)
    model.learn(32)  # weights that moved away from their initialisation
    return model


def saved(env: KalshiTradingEnv, root: Path, algorithm: str = "PPO") -> tuple[Path, str]:
    path = root / "m" / "v1" / "model.zip"
    return path, save_artifact(trained(env, algorithm).policy, path, algorithm=algorithm)


def load(path: Path, sha256: str, root: Path, algorithm: str = "PPO"):  # type: ignore[no-untyped-def]
    return load_verified(
        path=path, sha256=sha256, algorithm=algorithm, n_markets=MARKETS, root=root
    )


def logits(policy, obs: np.ndarray) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        features = policy.extract_features(torch.from_numpy(obs), policy.pi_features_extractor)
        return policy.action_net(policy.mlp_extractor.forward_actor(features))


@pytest.mark.parametrize("algorithm", ["PPO", "A2C", "MaskablePPO"])
def test_a_reloaded_policy_acts_bit_for_bit_like_the_saved_one(env, tmp_path, algorithm) -> None:
    model = trained(env, algorithm)
    path = tmp_path / "model.zip"
    sha = save_artifact(model.policy, path, algorithm=algorithm)
    assert sha == sha256_of(path)
    policy = load(path, sha, tmp_path, algorithm)
    rng = np.random.default_rng(1)
    obs = rng.uniform(-1, 1, size=(400, env.observation_space.shape[0])).astype(np.float32)
    assert torch.equal(logits(model.policy, obs), logits(policy, obs))  # bits, not "close"
    kwargs = {}
    if algorithm == "MaskablePPO":
        kwargs["action_masks"] = rng.random((400, MARKETS * 30)) < 0.5
        kwargs["action_masks"][:, ::30] = True  # hold is always allowed
    saved_actions, _ = model.predict(obs, deterministic=True, **kwargs)
    loaded_actions, _ = policy.predict(obs, deterministic=True, **kwargs)
    assert saved_actions.dtype == loaded_actions.dtype
    assert np.array_equal(saved_actions, loaded_actions)
    assert not (saved_actions == 0).all()  # the comparison is not between two constant policies
    # Saving is deterministic: the same weights give the same bytes (and sha256).
    assert save_artifact(policy, tmp_path / "again.zip", algorithm=algorithm) == sha


def test_an_sb3_pickle_payload_never_runs_even_with_a_matching_sha256(env, tmp_path, sentinel):
    path = tmp_path / "m" / "v1" / "model.zip"
    path.parent.mkdir(parents=True)
    malicious_sb3_zip(trained(env, "PPO"), path, sentinel)
    # The payload is live: Stable-Baselines3's own loader runs it (and then fails, having
    # lost the entry the payload replaced).
    with contextlib.suppress(Exception):
        algorithm_class("PPO").load(path, device="cpu")
    assert pwned(sentinel)
    sentinel.unlink()
    del os.environ[SENTINEL_ENV]
    # The registry's sha256 matches the file (an attacker who can write both): still refused.
    with pytest.raises(ArtifactError, match=r"Stable-Baselines3 model\.zip is refused"):
        load(path, sha256_of(path), tmp_path)
    assert not pwned(sentinel)


def test_an_object_array_with_a_pickle_is_refused_without_running_it(env, tmp_path, sentinel):
    path, _ = saved(env, tmp_path)
    rewrite_member(path, "tensors/0.npy", npy_with_pickled_objects(sentinel))
    with pytest.raises(ArtifactError, match="is not a plain array"):
        load(path, sha256_of(path), tmp_path)
    assert not pwned(sentinel)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"algorithm": "A2C"}, "algorithm='A2C'; the registry expects 'PPO'"),
        ({"action_nvec": [30] * (MARKETS + 1)}, "action_nvec="),
        ({"format": "sb3"}, "format='sb3'"),
        ({"observation_spec_version": 0}, "observation_spec_version=0"),
    ],
)
def test_a_manifest_that_disagrees_with_the_registry_is_refused(env, tmp_path, edit, message):
    path, _ = saved(env, tmp_path)
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read(MANIFEST))
    rewrite_member(path, MANIFEST, json.dumps({**manifest, **edit}).encode())
    with pytest.raises(ArtifactError, match=message.replace("[", r"\[")):
        load(path, sha256_of(path), tmp_path)


def test_wrong_shapes_extra_members_nan_and_bombs_are_refused(env, tmp_path) -> None:
    path, _ = saved(env, tmp_path)
    original = path.read_bytes()

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read(MANIFEST))
    first = manifest["tensors"][0]
    cases = [
        ("tensors/0.npy", npy(np.zeros((2, 2), dtype=np.float32)), "the policy needs"),
        ("tensors/0.npy", npy(np.full(first["shape"], np.nan, np.float32)), "NaN or infinite"),
        ("extra.pkl", b"\x80\x04K\x01.", "unexpected or shared members"),
        ("tensors/0.npy", b"\0" * (64 << 20), "inflates to"),  # deflates to ~64 KB
        (MANIFEST, b"[" * 100_000, "not valid JSON"),
    ]
    for member, content, message in cases:
        path.write_bytes(original)
        rewrite_member(path, member, content)
        with pytest.raises(ArtifactError, match=message):
            load(path, sha256_of(path), tmp_path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a zip archive"):
        load(path, sha256_of(path), tmp_path)


def test_a_changed_file_is_refused(env, tmp_path) -> None:
    path, sha = saved(env, tmp_path)
    with path.open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(ArtifactError, match="refusing to load a file that changed"):
        load(path, sha, tmp_path)
    with pytest.raises(ArtifactError, match="no recorded sha256"):
        load(path, "", tmp_path)


def test_an_artifact_outside_the_root_is_refused_even_with_a_matching_sha256(env, tmp_path):
    root = tmp_path / "models"
    outside, sha = saved(env, tmp_path / "elsewhere")
    assert sha == hashlib.sha256(outside.read_bytes()).hexdigest()
    (root / "m" / "v2").mkdir(parents=True)
    link = root / "m" / "v2" / "model.zip"
    link.symlink_to(outside)
    for path in (
        outside,
        "../elsewhere/m/v1/model.zip",
        link,
        "m/v2/../../../elsewhere/m/v1/model.zip",
    ):
        with pytest.raises(ArtifactError, match="outside the artifact root"):
            load(Path(path), sha, root)
    with pytest.raises(ArtifactError, match="does not exist"):
        load(Path("m/v9/model.zip"), sha, root)
    # The same file inside the root, by absolute or root-relative path, loads.
    inside = root / "m" / "v1" / "model.zip"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(outside.read_bytes())
    load(inside, sha, root)
    load(Path("m/v1/model.zip"), sha, root)


@pytest.fixture(scope="module")
def artifact_bytes(env, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "model.zip"
    save_artifact(trained(env, "PPO").policy, path, algorithm="PPO")
    return path.read_bytes()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(min_value=0),
)
def test_a_damaged_artifact_only_ever_gives_an_artifact_error(
    artifact_bytes, tmp_path, flips, cut
) -> None:
    """Whatever bytes an attacker or a bad disk leaves (with a matching sha256), loading
    returns a policy or raises ArtifactError: no other exception reaches the caller."""
    data = bytearray(artifact_bytes)
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path / "model.zip"
    path.write_bytes(bytes(data))
    try:
        policy = load(path, hashlib.sha256(data).hexdigest(), tmp_path)
    except ArtifactError:
        return
    assert policy.action_space.nvec.tolist() == [30] * MARKETS
