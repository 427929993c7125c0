"""The read-only REST API. Views parse the query, call one selector and serialize.

Everything needs a staff user (a session; HTTP Basic only with RL_API_BASIC_AUTH: see
apps/dashboard/api/authentication.py) except :class:`HealthView`, which load balancers call
without credentials.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import generics, renderers, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.dashboard import plots, selectors
from apps.dashboard.api import serializers as s
from apps.training.models import TradingEpisode
from apps.workers import selectors as workers


def parse_query(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    """The validated query parameters; a parameter given but empty (``?since=``) is an error,
    not the same as leaving it out."""
    empty = [
        name for name in serializer_class().fields if "" in request.query_params.getlist(name, [])
    ]
    if empty:
        raise serializers.ValidationError({name: ["may not be empty"] for name in empty})
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


# -- health and status -------------------------------------------------------------------------


class HealthView(APIView):
    """Public: healthy unless a running worker reports a problem or went silent, or a worker
    that must run (RL_HEALTH_EXPECT) has no live instance. Dead workers alone do not count."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={200: s.HealthSerializer, 503: s.HealthSerializer}, auth=[], tags=["status"]
    )
    def get(self, request: Request) -> Response:
        try:
            body = workers.health()
        except DatabaseError as exc:
            body = {
                "healthy": False,
                "workers": 0,
                "dead": 0,
                "expected": [],
                "problems": [f"database: {type(exc).__name__}"],
            }
        code = status.HTTP_200_OK if body["healthy"] else status.HTTP_503_SERVICE_UNAVAILABLE
        return Response(s.HealthSerializer(body).data, status=code)


class StatusView(APIView):
    """Health plus the last heartbeat, state (alive, silent, dead) and counters of every worker
    that did not stop cleanly (recorders: messages, gaps, reconnects, writer queue and rows;
    paper traders: what they report)."""

    @extend_schema(responses=s.StatusSerializer, tags=["status"])
    def get(self, request: Request) -> Response:
        rows = workers.workers_status()
        body = {"health": workers.health(rows), "workers": rows}
        return Response(s.StatusSerializer(body).data)


# -- markets and books -------------------------------------------------------------------------


class MarketsView(APIView):
    """The markets of the recent recording connections; ``recording`` says which are live."""

    @extend_schema(responses=s.MarketSerializer(many=True), tags=["market data"])
    def get(self, request: Request) -> Response:
        return Response(s.MarketSerializer(selectors.recorded_markets(), many=True).data)


class BooksView(APIView):
    """The top ``depth`` levels of each market's latest book, rebuilt from the tables (newest
    snapshot + the deltas recorded after it), so it reads the same from any host."""

    @extend_schema(
        parameters=[s.BooksQuerySerializer], responses=s.BooksSerializer, tags=["market data"]
    )
    def get(self, request: Request) -> Response:
        query = parse_query(s.BooksQuerySerializer, request)
        markets = query.get("market") or [m["market_ticker"] for m in selectors.recorded_markets()]
        books = selectors.latest_books(markets=markets, depth=query["depth"])
        body = {"source": "tables: latest snapshot + later deltas", "depth": query["depth"]}
        return Response(s.BooksSerializer({**body, "books": books}).data)


# -- registry, episodes, actions ---------------------------------------------------------------


@extend_schema(parameters=[s.ModelsQuerySerializer], tags=["registry"])
class ModelListView(generics.ListAPIView):
    """Model versions with their metrics and parent, by name then newest version."""

    serializer_class = s.ModelSerializer

    def get_queryset(self) -> QuerySet:
        return selectors.models_list(**parse_query(s.ModelsQuerySerializer, self.request))


@extend_schema(tags=["registry"])
class ModelDetailView(generics.RetrieveAPIView):
    """One model version with its whole lineage (ancestors) and children."""

    serializer_class = s.ModelDetailSerializer

    def get_queryset(self) -> QuerySet:
        return selectors.models_list()


@extend_schema(parameters=[s.EpisodesQuerySerializer], tags=["episodes"])
class EpisodeListView(generics.ListAPIView):
    """Training, evaluation and paper episodes with their metrics, newest first."""

    serializer_class = s.EpisodeSerializer

    def get_queryset(self) -> QuerySet:
        query = parse_query(s.EpisodesQuerySerializer, self.request)
        return selectors.episodes_list(model_id=query.get("model"), mode=query.get("mode", ""))


@extend_schema(tags=["episodes"])
class EpisodeDetailView(generics.RetrieveAPIView):
    """One episode with its equity and drawdown curves."""

    serializer_class = s.EpisodeDetailSerializer

    def get_queryset(self) -> QuerySet:
        return selectors.episodes_list()


class PNGRenderer(renderers.BaseRenderer):
    media_type = "image/png"
    format = "png"
    charset = None
    render_style = "binary"

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):  # type: ignore[no-untyped-def]
        return data


class JsonErrors:
    """For views whose success is not JSON (a PNG, the YAML schema): errors still are."""

    def handle_exception(self, exc: Exception) -> Response:
        self.request.accepted_renderer = renderers.JSONRenderer()  # type: ignore[attr-defined]
        self.request.accepted_media_type = "application/json"  # type: ignore[attr-defined]
        return super().handle_exception(exc)  # type: ignore[misc]


class SchemaView(JsonErrors, SpectacularAPIView):
    """The OpenAPI schema: YAML, or JSON with ``?format=json``."""


class EpisodePlotView(JsonErrors, APIView):
    """The episode's equity curve and drawdown as a PNG (matplotlib)."""

    renderer_classes = [PNGRenderer]

    @extend_schema(
        responses={(200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY)}, tags=["episodes"]
    )
    def get(self, request: Request, pk: int) -> Response:
        episode = get_object_or_404(TradingEpisode.objects.select_related("model"), pk=pk)
        title = f"{episode.model} — {episode.mode} episode {episode.pk}"
        png = plots.equity_drawdown_png(episode.equity_curve or [], title=title)
        return Response(png, content_type="image/png", headers={"Cache-Control": "no-cache"})


@extend_schema(parameters=[s.ActionsQuerySerializer], tags=["episodes"])
class ActionListView(generics.ListAPIView):
    """Every logged decision, oldest first; filter by episode, market and time."""

    serializer_class = s.ActionSerializer

    def get_queryset(self) -> QuerySet:
        query = parse_query(s.ActionsQuerySerializer, self.request)
        return selectors.actions_list(
            episode_id=query.get("episode"),
            market=query.get("market", ""),
            since=query.get("since"),
            until=query.get("until"),
        )


# -- the paper trader --------------------------------------------------------------------------


class PaperView(APIView):
    """The paper trader: heartbeats, and return, positions and last decisions of the newest
    paper episode (from the logged decisions)."""

    @extend_schema(responses=s.PaperSummarySerializer, tags=["paper trading"])
    def get(self, request: Request) -> Response:
        return Response(s.PaperSummarySerializer(selectors.paper_summary()).data)
