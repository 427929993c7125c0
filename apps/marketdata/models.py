"""Recorded market data.

Units (see apps/marketdata/kalshi/units.py): ``*_e4`` prices are integer $0.0001 (10_000 =
$1.00), ``*_e2`` sizes are integer 0.01 contract (100 = one contract). Book levels are stored
as JSON lists of ``[price_e4, size_e2]`` ascending by price; the NO ladder always holds NO-bid
prices, whatever ``use_yes_price`` mode the connection used.

A message is identified by (connection, sid, seq): Kalshi's seq counts per subscription id and
sids restart on every WebSocket connection. The unique constraints make every retried batch
write idempotent; they include ``received_at`` because on PostgreSQL these tables are time
partitions (see :mod:`apps.marketdata.partitions`), whose unique indexes must hold the
partition key. A message's receive time is stamped once, when its frame arrives, and every
write of it (retries, spill replays) carries that same value, so a repeat still conflicts. On
PostgreSQL the physical primary key is (id, received_at); Django keeps ``id`` as the models'
key (one identity sequence feeds every partition, and the admin refuses composite keys).
``sid`` and ``seq`` are ``bigint`` because the protocol decoder accepts
values up to 2^63 - 1; the writer refuses (never wraps) any integer that does not fit its
column's width, whatever the column.

The foreign keys to RecordingConnection are not enforced by the database on purpose: the
connection row is written beside the data, not before it, so that a recorder never has to wait
for (or lose data over) that row when the database is slow or down; rows spilled to disk and
replayed later arrive in any order.
"""

from __future__ import annotations

import uuid

from django.db import models


class RecordingConnection(models.Model):
    """One WebSocket connection of one recorder process: the namespace of its (sid, seq)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    exchange = models.CharField(max_length=16, help_text="local, demo or prod")
    ws_url = models.CharField(max_length=300)
    markets = models.JSONField(default=list)
    use_yes_price = models.BooleanField(default=False)
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        db_table = "rl_recording_connections"
        ordering = ["-opened_at"]

    def __str__(self) -> str:
        return f"{self.exchange} connection {self.id} opened {self.opened_at:%Y-%m-%d %H:%M:%S}"


def connection_field(*, related_name: str) -> models.ForeignKey:
    """The (connection, sid, seq) namespace of a recorded message.

    Not enforced by the database (see the module docstring) and not indexed alone: the
    unique (connection, sid, seq) constraint leads with it already.
    """
    return models.ForeignKey(
        RecordingConnection,
        on_delete=models.DO_NOTHING,
        db_index=False,
        db_constraint=False,
        related_name=related_name,
    )


class SnapshotSource(models.TextChoices):
    WS = "ws", "exchange snapshot on subscribe"
    PERIODIC = "periodic", "recorder's periodic snapshot of its in-memory book"
    RESYNC = "resync", "exchange snapshot after a gap or error"


class OrderbookSnapshot(models.Model):
    """A full book for one market at one moment.

    Snapshots the recorder takes itself from its in-memory book have no exchange seq: they
    use ``sid = 0`` (Kalshi's sids start at 1) and a per-connection counter as ``seq``, so
    their identity cannot collide with an exchange message. ``as_of_sid``/``as_of_seq`` say
    which orderbook frame the book includes (for exchange snapshots: their own sid/seq), so
    history can be rebuilt from any snapshot by applying the deltas after it.
    """

    PERIODIC_SID = 0

    id = models.BigAutoField(primary_key=True)
    connection = connection_field(related_name="snapshots")
    market_ticker = models.CharField(max_length=128)
    sid = models.BigIntegerField()
    seq = models.BigIntegerField()
    yes_levels = models.JSONField(default=list, help_text="[[price_e4, size_e2], ...] ascending")
    no_levels = models.JSONField(default=list, help_text="[[price_e4, size_e2], ...] ascending")
    exchange_ts = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()
    source = models.CharField(max_length=8, choices=SnapshotSource.choices)
    as_of_sid = models.BigIntegerField(
        null=True, blank=True, help_text="orderbook sid whose frames this book reflects"
    )
    as_of_seq = models.BigIntegerField(
        null=True, blank=True, help_text="last seq on as_of_sid included in this book"
    )

    class Meta:
        db_table = "rl_orderbook_snapshots"
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "sid", "seq", "received_at"],
                name="rl_snapshot_unique_message",
            ),
            models.CheckConstraint(
                condition=models.Q(source__in=SnapshotSource.values), name="rl_snapshot_source"
            ),
        ]
        indexes = [
            models.Index(fields=["market_ticker", "received_at"], name="rl_snap_market_time"),
        ]
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.market_ticker} snapshot sid={self.sid} seq={self.seq}"


class BookSide(models.TextChoices):
    YES = "yes", "YES"
    NO = "no", "NO"


class OrderbookDelta(models.Model):
    """A signed change of resting size at one price on one side of one market."""

    id = models.BigAutoField(primary_key=True)
    connection = connection_field(related_name="deltas")
    market_ticker = models.CharField(max_length=128)
    sid = models.BigIntegerField()
    seq = models.BigIntegerField()
    side = models.CharField(max_length=3, choices=BookSide.choices)
    price_e4 = models.IntegerField(help_text="NO-side prices are NO-bid prices")
    delta_e2 = models.BigIntegerField(help_text="signed change in 0.01 contracts")
    exchange_ts = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        db_table = "rl_orderbook_deltas"
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "sid", "seq", "received_at"], name="rl_delta_unique_message"
            ),
            models.CheckConstraint(
                condition=models.Q(side__in=BookSide.values), name="rl_delta_side"
            ),
            models.CheckConstraint(
                condition=models.Q(price_e4__gte=0, price_e4__lte=10_000), name="rl_delta_price"
            ),
        ]
        indexes = [
            models.Index(fields=["market_ticker", "received_at"], name="rl_delta_market_time"),
        ]
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.market_ticker} {self.side} {self.price_e4} {self.delta_e2:+d}"


class PublicTrade(models.Model):
    """A public execution from the ``trade`` channel (taker side; prices in e4, count in e2)."""

    id = models.BigAutoField(primary_key=True)
    connection = connection_field(related_name="trades")
    market_ticker = models.CharField(max_length=128)
    sid = models.BigIntegerField()
    seq = models.BigIntegerField()
    trade_id = models.CharField(max_length=64)
    yes_price_e4 = models.IntegerField()
    no_price_e4 = models.IntegerField()
    count_e2 = models.BigIntegerField()
    taker_side = models.CharField(max_length=3, choices=BookSide.choices)
    exchange_ts = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        db_table = "rl_public_trades"
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "sid", "seq", "received_at"], name="rl_trade_unique_message"
            ),
        ]
        indexes = [
            models.Index(fields=["market_ticker", "received_at"], name="rl_trade_market_time"),
        ]
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.market_ticker} {self.count_e2} @ {self.yes_price_e4} ({self.taker_side})"


class RecordingEventKind(models.TextChoices):
    CONNECTED = "connected", "connected and subscribed"
    GAP = "gap", "sequence gap: books on the sid untrusted until a fresh snapshot"
    RESYNC = "resync", "resync requested"
    CROSSED = "crossed", "crossed book detected"
    SUB_ERROR = "sub_error", "subscription error from the exchange"
    DISCONNECT = "disconnect", "socket closed or timed out"


class RecordingEvent(models.Model):
    """An explicit marker of where recorded books were untrusted (gaps, resyncs, disconnects).

    Anyone rebuilding history treats a market (or, without a market, every market of the
    connection / sid) as untrusted from a marker until its next snapshot.
    """

    id = models.BigAutoField(primary_key=True)
    connection = models.ForeignKey(
        RecordingConnection, on_delete=models.DO_NOTHING, db_constraint=False, related_name="events"
    )
    kind = models.CharField(max_length=16, choices=RecordingEventKind.choices)
    market_ticker = models.CharField(max_length=128, blank=True, default="")
    sid = models.BigIntegerField(null=True, blank=True)
    expected_seq = models.BigIntegerField(null=True, blank=True)
    got_seq = models.BigIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=500, blank=True, default="")
    at = models.DateTimeField()

    class Meta:
        db_table = "rl_recording_events"
        indexes = [models.Index(fields=["market_ticker", "at"], name="rl_event_market_time")]
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.market_ticker or '*'} at {self.at:%H:%M:%S}"


class MarketLifecycle(models.Model):
    """One message of the ``market_lifecycle_v2`` channel, stored losslessly: ``raw`` is the
    frame's exact text, beside the parsed fields the product uses.

    The channel takes no market filter; the recorder keeps every message, not only those of
    the markets it records (they are small and few, a market listed during the recording is
    one a later recording may want, and ``event_fee_update`` names events, not markets).

    Identity is (connection, ``local_seq``): the recorder's own count of lifecycle frames on
    the connection, in arrival order, because the channel's frames carry no ``seq`` in the
    documented example (``seq`` keeps Kalshi's when a frame has one). ``kind`` is the frame
    type (``market_lifecycle_v2``, ``event_lifecycle``, ``event_fee_update``); ``event_ts``
    the moment the message is about (determination, settlement, new close time, open time,
    fee update time; else the exchange's send time).
    """

    id = models.BigAutoField(primary_key=True)
    connection = connection_field(related_name="lifecycle")
    sid = models.BigIntegerField()
    seq = models.BigIntegerField(null=True, blank=True)
    local_seq = models.BigIntegerField(help_text="arrival number on the connection, from 1")
    kind = models.CharField(max_length=32)
    event_type = models.CharField(max_length=64)
    market_ticker = models.CharField(max_length=128, blank=True, default="")
    event_ticker = models.CharField(max_length=128, blank=True, default="")
    series_ticker = models.CharField(max_length=128, blank=True, default="")
    result = models.CharField(max_length=64, blank=True, default="")
    settlement_value_e4 = models.IntegerField(null=True, blank=True)
    open_ts = models.DateTimeField(null=True, blank=True)
    close_ts = models.DateTimeField(null=True, blank=True)
    event_ts = models.DateTimeField(null=True, blank=True)
    is_deactivated = models.BooleanField(null=True, blank=True)
    can_close_early = models.BooleanField(null=True, blank=True)
    price_level_structure = models.CharField(max_length=64, blank=True, default="")
    fee_type = models.CharField(max_length=64, blank=True, default="")
    fee_multiplier_e4 = models.IntegerField(null=True, blank=True)
    exchange_ts = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()
    raw = models.TextField(help_text="the frame exactly as received")

    class Meta:
        db_table = "rl_market_lifecycle"
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "local_seq"], name="rl_lifecycle_unique_message"
            ),
        ]
        indexes = [
            models.Index(fields=["market_ticker", "received_at"], name="rl_lifecycle_market_time"),
        ]
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.event_type} {self.market_ticker or self.event_ticker}"


class MarketInfo(models.Model):
    """A recorded market's description as ``GET /markets`` last gave it (one row per ticker,
    updated on every fetch; its history of changes is in :class:`MarketLifecycle`)."""

    ticker = models.CharField(max_length=128, unique=True)
    event_ticker = models.CharField(max_length=128, blank=True, default="")
    series_ticker = models.CharField(max_length=128, blank=True, default="")
    status = models.CharField(max_length=32, blank=True, default="")
    open_time = models.DateTimeField(null=True, blank=True)
    close_time = models.DateTimeField(null=True, blank=True)
    can_close_early = models.BooleanField(null=True, blank=True)
    result = models.CharField(max_length=64, blank=True, default="")
    settlement_value_e4 = models.IntegerField(null=True, blank=True)
    price_level_structure = models.CharField(max_length=64, blank=True, default="")
    price_ranges = models.JSONField(
        default=list, help_text='[{"start": "0.0000", "end": "1.0000", "step": "0.0100"}]'
    )
    raw = models.TextField(help_text="the Market object as received (JSON)")
    fetched_at = models.DateTimeField()

    class Meta:
        db_table = "rl_markets"
        ordering = ["ticker"]

    def __str__(self) -> str:
        return f"{self.ticker} ({self.status})"


class SeriesFees(models.Model):
    """A series' fee settings as ``GET /series/{ticker}`` last gave them (one row a series).
    ``fee_multiplier_e4``: the multiplier in 1/10,000 (10_000 = 1, 5_000 = 0.5)."""

    series_ticker = models.CharField(max_length=128, unique=True)
    fee_type = models.CharField(max_length=64)
    fee_multiplier_e4 = models.IntegerField()
    raw = models.TextField(help_text="the Series object as received (JSON)")
    fetched_at = models.DateTimeField()

    class Meta:
        db_table = "rl_series_fees"
        ordering = ["series_ticker"]

    def __str__(self) -> str:
        return f"{self.series_ticker} {self.fee_type} x{self.fee_multiplier_e4 / 10_000:g}"


class SeriesFeeChange(models.Model):
    """A scheduled change of a series' fees (``GET /series/fee_changes``): from
    ``scheduled_ts`` on, the series charges ``fee_type`` with ``fee_multiplier_e4``."""

    change_id = models.CharField(max_length=128, unique=True)
    series_ticker = models.CharField(max_length=128)
    fee_type = models.CharField(max_length=64)
    fee_multiplier_e4 = models.IntegerField()
    scheduled_ts = models.DateTimeField()
    fetched_at = models.DateTimeField()

    class Meta:
        db_table = "rl_series_fee_changes"
        indexes = [
            models.Index(fields=["series_ticker", "scheduled_ts"], name="rl_fee_change_series"),
        ]
        ordering = ["series_ticker", "scheduled_ts"]

    def __str__(self) -> str:
        return f"{self.series_ticker} -> {self.fee_type} at {self.scheduled_ts:%Y-%m-%d %H:%M}"
