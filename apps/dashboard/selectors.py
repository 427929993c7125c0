"""Reads behind the REST API and the live page.

The markets being recorded and their latest books, the model registry, episodes and
decisions, and the paper trader's state. Worker heartbeats and /rl/health's verdict are read
from :mod:`apps.workers.selectors`. Views and the live consumer only call these and serialize
what they return.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from django.db.models import Count, Max, QuerySet, Sum

from apps.marketdata.kalshi.book import BookError, OrderBook
from apps.marketdata.live import DEPTH_LEVELS, top_of_book
from apps.marketdata.models import OrderbookDelta, OrderbookSnapshot, RecordingConnection
from apps.marketdata.selectors import RebuiltBook, rebuild_latest_book
from apps.trading.models import TradingAction
from apps.training.models import EpisodeMode, RLModel, TradingEpisode
from apps.workers.selectors import ALIVE, workers_of_kind


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: report them as null."""
    return value if value is None or math.isfinite(value) else None


# -- markets and books ------------------------------------------------------------------------


def recorded_markets(*, recent_connections: int = 20, limit: int = 50) -> list[dict[str, Any]]:
    """The markets of the most recent recording connections, newest connection first.

    ``recording`` is true while the connection is open and its recorder process still sends
    heartbeats (a recorder that was killed leaves its connection row open: the heartbeat
    tells). ``last_received_at`` is the newest recorded delta or snapshot of the market.
    """
    live = {(w["host"], w["pid"]) for w in workers_of_kind("ingest") if w["state"] == ALIVE}
    markets: dict[str, dict[str, Any]] = {}
    connections = RecordingConnection.objects.order_by("-opened_at")[:recent_connections]
    # Open connections first, each group newest first (the query already orders by time).
    for conn in sorted(connections, key=lambda c: c.closed_at is not None):
        recording = conn.closed_at is None and (conn.host, conn.pid) in live
        for ticker in conn.markets:
            if ticker in markets or len(markets) >= limit:
                continue
            markets[ticker] = {
                "market_ticker": ticker,
                "recording": recording,
                "exchange": conn.exchange,
                "connection_id": str(conn.id),
                "connection_opened_at": conn.opened_at.isoformat(),
                "connection_closed_at": conn.closed_at.isoformat() if conn.closed_at else None,
                "last_received_at": _last_received_at(ticker),
            }
    return list(markets.values())


def _last_received_at(ticker: str) -> str | None:
    # Two index-only lookups on (market_ticker, received_at).
    times = [
        model.objects.filter(market_ticker=ticker)
        .order_by("-received_at")
        .values_list("received_at", flat=True)
        .first()
        for model in (OrderbookDelta, OrderbookSnapshot)
    ]
    known = [t for t in times if t is not None]
    return max(known).isoformat() if known else None


def latest_books(*, markets: list[str], depth: int = DEPTH_LEVELS) -> list[dict[str, Any]]:
    """Each market's newest book, rebuilt from the tables: the latest snapshot plus the deltas
    recorded after it (:func:`apps.marketdata.selectors.rebuild_latest_book`).

    The tables lag the recorder's in-memory book only by the writer's flush interval
    (``RL_WRITER_FLUSH_INTERVAL_S``), and this works from any process and host, with or
    without a recorder running. The shape is the live page's ``book.update`` payload plus
    why a book is untrusted and how many deltas were replayed.
    """
    books = []
    for ticker in markets:
        try:
            rebuilt = rebuild_latest_book(market_ticker=ticker)
        except BookError as exc:  # recorded deltas that do not fit their snapshot
            rebuilt = RebuiltBook(OrderBook(ticker), None, False, 0, f"cannot rebuild: {exc}")
        top = top_of_book(rebuilt.book, trusted=rebuilt.trusted, depth=depth)
        top["untrusted_reason"] = rebuilt.reason
        top["deltas_replayed"] = rebuilt.deltas_applied
        books.append(top)
    return books


# -- registry, episodes, actions ---------------------------------------------------------------


def models_list(*, name: str = "", status: str = "") -> QuerySet[RLModel]:
    rows = RLModel.objects.select_related("parent", "promoted_by")
    if name:
        rows = rows.filter(name=name)
    if status:
        rows = rows.filter(status=status)
    return rows.order_by("name", "-version")


def model_lineage(*, model: RLModel, max_depth: int = 50) -> list[RLModel]:
    """The model's ancestors through ``parent``, nearest first (cycles and depth bounded)."""
    chain: list[RLModel] = []
    seen = {model.pk}
    current = model.parent
    while current is not None and current.pk not in seen and len(chain) < max_depth:
        chain.append(current)
        seen.add(current.pk)
        current = current.parent
    return chain


def episodes_list(*, model_id: int | None = None, mode: str = "") -> QuerySet[TradingEpisode]:
    rows = TradingEpisode.objects.select_related("model")
    if model_id is not None:
        rows = rows.filter(model_id=model_id)
    if mode:
        rows = rows.filter(mode=mode)
    return rows.order_by("-started_at", "-id")


def actions_list(
    *,
    episode_id: int | None = None,
    market: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[TradingAction]:
    """Decisions, oldest first; ``since`` inclusive, ``until`` exclusive."""
    rows = TradingAction.objects.all()
    if episode_id is not None:
        rows = rows.filter(episode_id=episode_id)
    if market:
        rows = rows.filter(market_ticker=market)
    if since is not None:
        rows = rows.filter(time__gte=since)
    if until is not None:
        rows = rows.filter(time__lt=until)
    return rows.order_by("time", "id")


def drawdown_curve(equity: list[float]) -> list[float]:
    """Fall from the running peak, as a ratio of the peak (0 at a new high)."""
    result, peak = [], float("-inf")
    for value in equity:
        peak = max(peak, value)
        result.append((peak - value) / peak if peak > 0 else 0.0)
    return result


# -- the paper trader --------------------------------------------------------------------------


def paper_summary(*, decisions: int = 10) -> dict[str, Any]:
    """The paper trader now: its heartbeats (P&L, kill switch, ... as the trader reports them)
    and, from the logged decisions of the newest paper episode, return, positions, cash and
    fees, and its last decisions."""
    summary: dict[str, Any] = {"workers": workers_of_kind("paper"), "episode": None}
    episode = (
        TradingEpisode.objects.filter(mode=EpisodeMode.PAPER)
        .select_related("model")
        .order_by("-started_at", "-id")
        .first()
    )
    if episode is None:
        return summary
    actions = episode.actions.all()
    totals = actions.aggregate(
        decisions=Count("id"), reward=Sum("reward"), fees_e4=Sum("fee_e4"), last_step=Max("step")
    )
    positions = {}
    traded = actions.order_by().values_list("market_ticker", flat=True).distinct()
    for ticker in sorted({*episode.markets, *traded}):
        last = actions.filter(market_ticker=ticker).order_by("-step").first()
        positions[ticker] = last.position_after_e2 if last else 0
    last_action = actions.order_by("-step", "-id").first()
    summary["episode"] = {
        "id": episode.pk,
        "model": str(episode.model),
        "model_id": episode.model_id,
        "started_at": episode.started_at.isoformat(),
        "ended_at": episode.ended_at.isoformat() if episode.ended_at else None,
        "markets": episode.markets,
        "decisions": totals["decisions"],
        "last_step": totals["last_step"],
        "return_from_rewards": finite(totals["reward"] or 0.0),
        "fees_paid_e4": totals["fees_e4"] or 0,
        "cash_after_e4": last_action.cash_after_e4 if last_action else None,
        "positions_e2": positions,
        "last_decisions": [
            {
                "step": a.step,
                "time": a.time.isoformat(),
                "market_ticker": a.market_ticker,
                "action_type": a.action_type,
                "action_size": a.action_size,
                "price_e4": a.price_e4,
                "quantity_filled_e2": a.quantity_filled_e2,
                "fee_e4": a.fee_e4,
                "position_after_e2": a.position_after_e2,
                "reward": finite(a.reward),
                "model_version": a.model_version,
            }
            for a in actions.order_by("-step", "-id")[:decisions]
        ],
    }
    return summary


def plot_episode_id() -> int | None:
    """The episode the live page plots: the newest paper episode, else the newest of any."""
    episodes = TradingEpisode.objects.order_by("-started_at", "-id")
    newest = episodes.filter(mode=EpisodeMode.PAPER).values_list("id", flat=True).first()
    return newest if newest is not None else episodes.values_list("id", flat=True).first()


def live_summary() -> dict[str, Any]:
    """What the live page refreshes every few seconds (everything but the books, which are
    pushed as they change)."""
    return {
        "markets": recorded_markets(),
        "ingest": workers_of_kind("ingest"),
        "paper": paper_summary(),
        "plot_episode_id": plot_episode_id(),
    }
