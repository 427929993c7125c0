"""The registry watch: the paper trader's model, loaded from the registry and checked for
a new active version.

:func:`load_active_model` loads the promoted version of a name at start-up;
:func:`poll_registry` (every ``RL_PAPER_RELOAD_CHECK_S``, in a worker thread) tells whether
another version became active (a promotion or a rollback) and loads it with
:func:`~apps.training.services.load_policy` (inside ``MODEL_DIR``, sha256 checked, rebuilt from
the run spec with only tensors read from the file), checked against the markets and spaces
being traded. A version that fails is returned as a :class:`ReloadFailure` and not retried
until its registry row changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from apps.simulation.actions import ACTIONS_PER_MARKET
from apps.simulation.features import N_FEATURES, OBSERVATION_SPEC_VERSION
from apps.trading.actor import PolicyVersion
from apps.trading.options import PaperError
from apps.training.artifacts import ArtifactError
from apps.training.models import RLModel
from apps.training.selectors import active_model_for, spec_of
from apps.training.services import load_policy


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded registry version and the facts the trader needs about it.

    Attributes:
        name: the registry name.
        policy: the loaded policy with its version, algorithm, row id and sha256.
        markets: the model's markets in slot order.
        step_s: the env step it was trained at, in seconds (the default decision cadence).
        episode_steps: its training episode length (the scale of the progress feature).
    """

    name: str
    policy: PolicyVersion
    markets: tuple[str, ...]
    step_s: float
    episode_steps: int

    @property
    def version(self) -> int:
        return self.policy.version


def load_model(row: RLModel, *, expect_markets: tuple[str, ...] | None = None) -> LoadedModel:
    """Load one ``RLModel`` row for trading: sha256-verified artifact, compatible spaces.

    Args:
        row: the :class:`~apps.training.models.RLModel` to load.
        expect_markets: the markets being traded (a reload must keep them), or None.

    Raises:
        PaperError: the version cannot be traded here (the message says why).
        ArtifactError: the artifact is missing or changed since it was registered.
    """
    markets = tuple(row.markets)
    if not 1 <= len(markets) <= 10:
        raise PaperError(f"{row} trades {len(markets)} markets; paper trading needs 1 to 10")
    if expect_markets is not None and markets != expect_markets:
        raise PaperError(
            f"{row} trades {list(markets)}, this trader follows {list(expect_markets)}: "
            "restart paper_trade to follow the new markets"
        )
    if row.observation_spec_version != OBSERVATION_SPEC_VERSION:
        raise PaperError(
            f"{row} was trained on observation spec v{row.observation_spec_version}; this code "
            f"builds v{OBSERVATION_SPEC_VERSION}"
        )
    if not row.artifact_sha256:
        raise PaperError(f"{row} has no trained artifact")
    try:
        spec = spec_of(row)
    except (KeyError, TypeError, ValueError) as exc:
        raise PaperError(f"{row} has no readable run spec: {exc}") from None
    policy = load_policy(row)  # inside MODEL_DIR, sha256 checked, nothing unpickled
    shape = getattr(policy.observation_space, "shape", None)
    nvec = getattr(policy.action_space, "nvec", None)
    if shape != (N_FEATURES,) or nvec is None or list(nvec) != [ACTIONS_PER_MARKET] * len(markets):
        raise PaperError(
            f"{row}'s spaces (observation {shape}, actions {nvec}) do not match "
            f"{N_FEATURES} features and {len(markets)} markets x {ACTIONS_PER_MARKET} actions"
        )
    return LoadedModel(
        name=row.name,
        policy=PolicyVersion(
            policy=policy,
            version=row.version,
            algorithm=row.algorithm,
            pk=row.pk,
            sha256=row.artifact_sha256,
        ),
        markets=markets,
        step_s=float(spec.step_s),
        episode_steps=int(spec.episode_steps),
    )


def load_active_model(*, name: str) -> LoadedModel:
    """The active (promoted) version of ``name``, loaded and verified."""
    row = active_model_for(name)
    if row is None:
        raise PaperError(
            f"model {name!r} has no active version: promote one first (admin, or "
            "apps.training.services.promote_model)"
        )
    try:
        return load_model(row)
    except ArtifactError as exc:
        raise PaperError(str(exc)) from None


@dataclass(frozen=True)
class ReloadFailure:
    """A version that could not be swapped in (kept out until its registry row changes)."""

    pk: int
    version: int
    sha256: str
    error: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "error": self.error, "at": self.at}


def poll_registry(
    *, name: str, current: LoadedModel, failed: frozenset[tuple[int, str]]
) -> LoadedModel | ReloadFailure | str:
    """One hot-reload check (a worker thread calls it).

    Returns a loaded new version, a :class:`ReloadFailure`, or a word for "nothing to do":
    ``same`` (the active version is the one trading), ``none`` (nothing is active) or
    ``known-bad`` (it failed before and its row has not changed).
    """
    row = active_model_for(name)
    if row is None:
        return "none"
    key = (row.pk, row.artifact_sha256)
    if key == (current.policy.pk, current.policy.sha256):
        return "same"
    if key in failed:
        return "known-bad"
    try:
        return load_model(row, expect_markets=current.markets)
    except Exception as exc:  # any failure keeps the old model trading; it is reported
        return ReloadFailure(
            pk=row.pk,
            version=row.version,
            sha256=row.artifact_sha256,
            error=f"{type(exc).__name__}: {exc}"[:500],
            at=timezone.now().isoformat(),
        )
