"""Held-out evaluations pooled across registry versions (pure: no Django).

A version's held-out per-step records (:class:`~apps.simulation.metrics.EpisodeTrace` of the
agent and of every baseline) are stored as a compressed numpy archive of plain arrays
(:func:`traces_to_bytes`; read back with ``allow_pickle=False``: nothing loaded can execute
code). A walk-forward pools its folds' held-out episodes: every metric and its block-bootstrap
95 % interval is recomputed over the blocks of all folds' episodes, as
:func:`apps.training.evaluation.summarize` does for one version, and the agent is compared
with no trading on the same blocks (the promotion gate's figure).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from apps.simulation import metrics
from apps.training.evaluation import trace_blocks

TRACE_FIELDS = ("times_ns", "equity_e6", "notional_e6", "held", "realized_e6", "fees_cum_e4")
AGENT = "agent"


def traces_to_bytes(policies: dict[str, list[metrics.EpisodeTrace]]) -> bytes:
    """``{policy: [trace per episode]}`` as one compressed ``.npz`` (keys ``policy/i/field``)."""
    arrays: dict[str, np.ndarray] = {}
    for policy, traces in policies.items():
        if "/" in policy:
            raise ValueError(f"policy name {policy!r} may not contain '/'")
        for i, trace in enumerate(traces):
            for name in TRACE_FIELDS:
                arrays[f"{policy}/{i}/{name}"] = np.asarray(getattr(trace, name))
    out = io.BytesIO()
    np.savez_compressed(out, **arrays)
    return out.getvalue()


def traces_from_bytes(data: bytes) -> dict[str, list[metrics.EpisodeTrace]]:
    """The inverse of :func:`traces_to_bytes` (plain arrays only: ``allow_pickle=False``)."""
    found: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as archive:
        for key in archive.files:
            policy, index, name = key.split("/")
            found.setdefault(policy, {}).setdefault(int(index), {})[name] = archive[key]
    return {
        policy: [metrics.EpisodeTrace(**episodes[i]) for i in sorted(episodes)]
        for policy, episodes in found.items()
    }


def summarize_traces(traces: list[metrics.EpisodeTrace], *, seed: int = 0) -> dict[str, Any]:
    """Every metric of ``traces`` pooled, with its block-bootstrap 95 % interval (the keys of
    :func:`apps.training.evaluation.summarize`, bar the per-episode reward)."""
    if not traces:
        return {"episodes": 0}
    blocks = trace_blocks(traces)
    initial = int(traces[0].equity_e6[0])
    summary = metrics.summarize(
        blocks, initial_cash_e6=initial, blocks_per_episode=len(blocks) / len(traces), seed=seed
    ).as_dict()
    returns = [float(t.equity_e6[-1] / t.equity_e6[0] - 1.0) for t in traces]
    worst = max(
        metrics.compute(t.blocks(), initial_cash_e6=initial)["max_drawdown"] for t in traces
    )
    return {
        "episodes": len(traces),
        "mean_return": float(np.mean(returns)),
        "sharpe": summary["sharpe_per_hour"],
        "win_rate": summary["win_rate"],
        "max_drawdown": worst,
        "fees_paid_e4": int(sum(float(t.fees_cum_e4[-1].sum()) for t in traces)),
        **{k: v for k, v in summary.items() if k != "max_drawdown"},
    }


def pooled_metrics(
    policies: dict[str, list[metrics.EpisodeTrace]], *, seed: int = 0
) -> dict[str, Any]:
    """The pooled held-out evaluation in the registry's shape: ``evaluation`` (the agent),
    ``baselines``, ``versus_no_trading`` (agent minus no trading, paired blocks) and
    ``beats_no_trading`` (the lower bound of that interval above zero)."""
    agent = policies.get(AGENT, [])
    out: dict[str, Any] = {
        "evaluation": summarize_traces(agent, seed=seed),
        "baselines": {
            name: summarize_traces(traces, seed=seed)
            for name, traces in policies.items()
            if name != AGENT
        },
    }
    baseline = policies.get("no_trading", [])
    if agent and len(baseline) == len(agent):
        a, b = trace_blocks(agent), trace_blocks(baseline)
        point, interval = metrics.paired_difference(
            a,
            b,
            initial_cash_e6=int(agent[0].equity_e6[0]),
            blocks_per_episode=len(a) / len(agent),
            seed=seed,
        )
        out["versus_no_trading"] = {
            "metric": "pnl_per_hour_dollars",
            "difference": point,
            "ci": interval.as_list(),
        }
        out["beats_no_trading"] = interval.low is not None and interval.low > 0
    return out
