"""Chaos benchmark: record at 5k msg/s while a seeded schedule breaks everything around the
recorder, then check every frame the exchange sent against what history would trust.

Run by hand (a few minutes; needs PostgreSQL on 127.0.0.1:5432):

    .venv/bin/python benchmarks/chaos_ingest.py [--seconds 120] [--rate 5000] [--seed 1]

What runs (all real parts of the project, each in its own process where it matters):

* the bundled exchange (``manage.py run_local_exchange``) with its own fault knobs on: seq
  gaps, malformed frames (garbage, truncated, wrong types, binary), a stall and an
  unsolicited error 25 per connection;
* a feed proxy (here, asyncio ``websockets``) between exchange and recorder. It is the
  ground truth: every data frame it delivers is decoded with the project's ``FrameDecoder``
  and written, with the proxy connection and the time sent, to ``chaos_truth``. It also
  injects the hostile frames of issue 12 (a 4,300-digit size, ``ts_ms`` in year 10000, an
  unknown type nested 1,000 deep, a binary frame) in sequence, drops sockets without a close
  frame, and on chosen connections renumbers the trade subscription's sid beyond 2**32;
* a database proxy (threads) between the recorder and PostgreSQL that can refuse
  connections (listener closed, sessions reset) or hang (sessions held open, no byte
  forwarded, new sessions accepted and never answered);
* the real recorder, ``manage.py ingest_orderbook``, as a subprocess, with its spill
  directory capped: ``SPILL_CAP_SETTING`` (the writer's size cap, when the writer knows it)
  and, for writers that do not, ``RLIMIT_FSIZE`` on its process (a write past it fails with
  EFBIG, as on a full disk). The script restarts it after each ``kill -9`` it deals, and
  after any exit it did not cause (counted: ``unexpected_exits``).

The seeded schedule puts every fault at least once in ``--seconds``: kill -9 + restart, DB
refusal, DB hang, spill full (a refusal long enough to overflow the cap), hostile frames,
socket drops and a wide sid. Then the faults stop, the recorder drains for ``--cooldown``
seconds and is stopped with SIGTERM.

The check (``benchmarks/chaos_check.py``) trusts nothing the recorder says: lost rows are
sent frames missing from the tables; each loss is covered only if the history loader's own
replay treats the market as untrusted ``--slack`` seconds after the frame was due (sent, and
not before the frame sent before it was received), or re-primed it from a snapshot that
includes it; duplicates and wrapped values compare stored
rows with the sent frames. Ends with one JSON line. Target: 0 duplicates, 0 wrapped values,
0 lost rows outside untrusted windows, 0 unexpected exits (alive throughout).

``--faults kill9,db_hang`` runs a subset; ``--faults none`` is the checker's control: recording
with only the exchange's own faults (which lose nothing) must report 0 lost rows.

Uses (and drops, unless ``--keep-db``) its own database: ``BENCH_DB``, default
``kalshiflow_chaos``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import queue
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.scratchdb import (  # noqa: E402
    PG_SERVER,
    drop_scratch_database,
    setup_scratch_django,
)

DB_NAME = os.environ.get("BENCH_DB", "kalshiflow_chaos")
# The writer's spill size cap (issue 12, item 3). Named once here so it can follow the name
# the writer settles on; a writer that does not know it is capped by RLIMIT_FSIZE instead.
SPILL_CAP_SETTING = "RL_WRITER_SPILL_MAX_BYTES"
# ~0.8 MB of spill per second of outage at 5k msg/s: a 3-5 s refusal stays under the cap
# (unless several come before the spill has drained), a 20-26 s "spill_full" refusal does not.
SPILL_CAP_BYTES = 12 * 2**20
SPILL_FILE_LIMIT_BYTES = 12 * 2**20  # RLIMIT_FSIZE of the recorder: a small "disk" per file
WIDE_SID_OFFSET = 2**32
HOSTILE_KINDS = ("huge_digits", "far_ts", "deep_nesting", "binary")
FAR_TS_MS = 253_402_300_800_000  # 10000-01-01: past datetime's range


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- ground truth ----------------------------------------------------------------------------


class TruthWriter:
    """Sent frames -> ``chaos_truth`` by COPY, from a thread (directly to PostgreSQL: the
    truth must not suffer the outages it measures)."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.rows: queue.Queue[tuple | None] = queue.Queue()
        self.written = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="truth-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, row: tuple) -> None:
        self.rows.put(row)

    def close(self) -> None:
        self.rows.put(None)
        self._thread.join(120)
        if self.error is not None:
            raise RuntimeError("the truth writer failed") from self.error

    def _run(self) -> None:
        import psycopg

        from benchmarks.chaos_check import TRUTH_COLUMNS, TRUTH_TABLE

        try:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                done = False
                while not done:
                    batch = [self.rows.get()]
                    while len(batch) < 5000:
                        try:
                            batch.append(self.rows.get(timeout=0.2))
                        except queue.Empty:
                            break
                    if None in batch:
                        done = True
                        batch = [r for r in batch if r is not None]
                    if not batch:
                        continue
                    cols = ", ".join(TRUTH_COLUMNS)
                    with (
                        conn.cursor() as cur,
                        cur.copy(f"COPY {TRUTH_TABLE} ({cols}) FROM STDIN") as copy,
                    ):
                        for row in batch:
                            copy.write_row(row)
                    self.written += len(batch)
        except BaseException as exc:  # reported by close()
            self.error = exc


# -- the database proxy ------------------------------------------------------------------------


class DbProxy:
    """TCP proxy to PostgreSQL with three modes: ``forward``, ``refuse`` (listener closed,
    every session reset) and ``hang`` (sessions held: nothing forwarded either way; new
    sessions accepted and never answered), back to ``forward`` releasing what was held.

    Not ``tests/tcp_proxy.py``: its ``blackhole()`` drops the open sessions first, and a hung
    database keeps them."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.mode = "forward"
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self._listen()

    def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        if mode == "refuse":
            self._close_listener()
            self._drop_all()
            self._flowing.set()
        elif mode == "hang":
            self._flowing.clear()
            if self._listener is None:
                self._listen()
        elif mode == "forward":
            if self._listener is None:
                self._listen()
            self._flowing.set()
        else:
            raise ValueError(mode)
        self.mode = mode

    def stop(self) -> None:
        self._flowing.set()
        self._close_listener()
        self._drop_all()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # RST, not FIN: a refused database, not a polite goodbye. shutdown() first:
                # close() alone does not wake a pump blocked in recv(), and the session would
                # stay open (a hang, not a refusal).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # a hang holds the bytes here
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(sock)


# -- the feed proxy ----------------------------------------------------------------------------


@dataclass
class Link:
    """One recorder connection through the proxy (``pconn`` numbers them from 0)."""

    pconn: int
    client: Any
    upstream: Any
    wide: bool = False
    dead: bool = False
    offsets: dict[int, int] = field(default_factory=dict)  # sid -> seqs added by injections
    wide_map: dict[int, int] = field(default_factory=dict)  # exchange sid -> wide sid
    injections: collections.deque = field(default_factory=collections.deque)


class FeedProxy:
    """WebSocket proxy exchange -> recorder: truth, hostile frames, drops, wide sids."""

    def __init__(self, upstream_url: str, truth: TruthWriter) -> None:
        from apps.marketdata.kalshi.messages import FrameDecoder

        self.upstream_url = upstream_url
        self.truth = truth
        self.decoder = FrameDecoder()
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/trade-api/ws/v2"
        self.links: list[Link] = []
        self.current: Link | None = None
        self.wide_next = False
        self.quiesced = False
        self.frames_sent = 0
        self.data_frames = 0
        self.hostile_sent: collections.Counter[str] = collections.Counter()
        self.exchange_malformed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="feed-proxy", daemon=True)

    # control, from the main thread
    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the feed proxy did not start")

    def call(self, fn: Any) -> Any:
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def inject(self, kind: str) -> bool:
        def go() -> bool:
            if self.current is None or self.current.dead:
                return False
            self.current.injections.append(kind)
            return True

        return self.call(go)

    def drop(self, *, wide_next: bool = False) -> bool:
        """Abort the current connection's TCP (no close frame)."""

        def go() -> bool:
            self.wide_next = self.wide_next or wide_next
            link = self.current
            if link is None or link.dead:
                return False
            link.dead = True
            link.client.transport.abort()
            link.upstream.transport.abort()
            return True

        return self.call(go)

    def forget_current(self) -> None:
        """The recorder was killed: nothing more on its connection counts as delivered."""

        def go() -> None:
            if self.current is not None:
                self.current.dead = True
                self.current.upstream.transport.abort()

        self.call(go)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    # the proxy's loop
    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handle,
            "127.0.0.1",
            self.port,
            ping_interval=None,
            compression=None,
            max_size=None,
            close_timeout=1,
        ):
            self._ready.set()
            await self._stop.wait()
            for link in self.links:
                if not link.dead:
                    link.client.transport.abort()
                    link.upstream.transport.abort()

    async def _handle(self, client: Any) -> None:
        from websockets.asyncio.client import connect

        headers = [
            (k, v) for k, v in client.request.headers.raw_items() if k.lower().startswith("kalshi-")
        ]
        try:
            upstream = await connect(
                self.upstream_url,
                additional_headers=headers,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=10,
                close_timeout=1,
            )
        except Exception as exc:
            say(f"feed proxy: upstream refused ({exc}); closing the client")
            await client.close(1011, "upstream refused")
            return
        link = Link(len(self.links), client, upstream, wide=self.wide_next)
        self.wide_next = False
        self.links.append(link)
        self.current = link
        tasks = [
            asyncio.create_task(self._downstream(link)),
            asyncio.create_task(self._upstream(link)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        link.dead = True
        for ws in (client, upstream):
            ws.transport.abort()

    async def _upstream(self, link: Link) -> None:
        """Recorder commands to the exchange, wide sids mapped back."""
        back = {}
        async for raw in link.client:
            if link.wide_map:
                back = {w: r for r, w in link.wide_map.items()}
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    cmd = json.loads(raw)
                    params = cmd.get("params") or {}
                    if params.get("sid") in back:
                        params["sid"] = back[params["sid"]]
                    if isinstance(params.get("sids"), list):
                        params["sids"] = [back.get(s, s) for s in params["sids"]]
                    raw = json.dumps(cmd)
            await link.upstream.send(raw)

    async def _downstream(self, link: Link) -> None:
        async for raw in link.upstream:
            if link.dead or self.quiesced:
                continue
            for frame, truth_row in self._rewrite(link, raw):
                if link.dead:
                    break
                await link.client.send(frame)
                self.frames_sent += 1
                if truth_row is not None:
                    self.data_frames += 1
                    self.truth.put((*truth_row[:9], time.time_ns(), truth_row[9]))

    # frames
    def _rewrite(self, link: Link, raw: str | bytes) -> list[tuple[str | bytes, tuple | None]]:
        """The frames to send for one exchange frame (injections first) and their truth."""
        if isinstance(raw, bytes):
            self.exchange_malformed += 1  # the exchange's own binary malformed frame
            return [(raw, None)]
        out: list[tuple[str | bytes, tuple | None]] = []
        needs_json = bool(link.offsets or link.wide or link.injections)
        if needs_json:
            try:
                frame = json.loads(raw)
            except ValueError:
                frame = None
            if isinstance(frame, dict):
                sid, seq = frame.get("sid"), frame.get("seq")
                if link.wide:
                    self._widen(link, frame)
                if (
                    link.injections
                    and frame.get("type") == "orderbook_delta"
                    and isinstance(sid, int)
                    and isinstance(seq, int)
                ):
                    out += self._hostile(link, frame)
                if isinstance(seq, int) and isinstance(sid, int) and link.offsets.get(sid):
                    frame["seq"] = seq + link.offsets[sid]
                raw = json.dumps(frame, separators=(",", ":"))
        out.append((raw, self._truth(link, raw)))
        return out

    def _widen(self, link: Link, frame: dict) -> None:
        """This connection's trade subscription gets sid exchange_sid + 2**32."""
        body = frame.get("msg")
        if frame.get("type") == "subscribed" and isinstance(body, dict):
            if body.get("channel") == "trade" and isinstance(body.get("sid"), int):
                link.wide_map[body["sid"]] = body["sid"] + WIDE_SID_OFFSET
                body["sid"] = link.wide_map[body["sid"]]
        if frame.get("sid") in link.wide_map:
            frame["sid"] = link.wide_map[frame["sid"]]

    def _hostile(self, link: Link, before: dict) -> list[tuple[str | bytes, tuple | None]]:
        kind = link.injections.popleft()
        self.hostile_sent[kind] += 1
        sid, market = before["sid"], before["msg"].get("market_ticker", "")
        seq = before["seq"] + link.offsets.get(sid, 0)
        now_ms = time.time_ns() // 1_000_000
        if kind == "binary":
            return [(b"\x00\xffchaos binary frame\x80" + os.urandom(64), None)]
        if kind == "deep_nesting":
            nested = "[" * 1000 + "]" * 1000
            text = f'{{"type":"chaos_unknown","sid":{sid},"msg":{nested}}}'
            return [(text, None)]
        # In sequence: the hostile frame takes this seq, the exchange's frames shift by one.
        link.offsets[sid] = link.offsets.get(sid, 0) + 1
        delta = "1" * 4300 if kind == "huge_digits" else "1.00"
        ts_ms = FAR_TS_MS if kind == "far_ts" else now_ms
        body = {
            "market_ticker": market,
            "price_dollars": "0.5000",
            "delta_fp": delta,
            "side": "yes",
            "ts_ms": ts_ms,
        }
        text = json.dumps(
            {
                "type": "orderbook_delta",
                "sid": sid,
                "seq": seq,
                "msg": body,
                "sending_ts_ms": now_ms if kind != "far_ts" else FAR_TS_MS,
            },
            separators=(",", ":"),
        )
        truth = None
        if kind == "far_ts":  # storable numbers: if a recorder stores it, it is recognised
            truth = (link.pconn, "delta", sid, seq, market, "yes", 5000, 100, "", "hostile")
        return [(text, truth)]

    def _truth(self, link: Link, raw: str) -> tuple | None:
        from apps.marketdata.kalshi.messages import (
            OrderbookDelta,
            OrderbookSnapshot,
            ProtocolError,
            Trade,
        )

        try:
            msg = self.decoder.decode(raw)
        except ProtocolError:
            self.exchange_malformed += 1
            return None
        kind = type(msg)
        if kind is OrderbookDelta:
            row = (
                "delta",
                msg.sid,
                msg.seq,
                msg.market_ticker,
                msg.side,
                msg.price_e4,
                msg.delta_e2,
                "",
            )
        elif kind is OrderbookSnapshot:
            levels = [*msg.yes, *msg.no]
            row = (
                "snapshot",
                msg.sid,
                msg.seq,
                msg.market_ticker,
                "",
                len(levels),
                sum(size for _, size in levels),
                "",
            )
        elif kind is Trade and msg.seq is not None:
            row = (
                "trade",
                msg.sid,
                msg.seq,
                msg.market_ticker,
                msg.taker_side,
                msg.yes_price_e4,
                msg.count_e2,
                msg.trade_id,
            )
        else:
            return None
        category = "wide_sid" if row[1] >= 2**31 else "valid"
        return (link.pconn, *row, category)


# -- processes -----------------------------------------------------------------------------------


def start_exchange(var_dir: Path, *, port: int, rate: float, markets: int, seed: int,
                   faults: bool) -> subprocess.Popen:  # fmt: skip
    env = {
        **os.environ,
        "RL_VAR_DIR": str(var_dir),
        "LOCAL_EXCHANGE_KEY_DIR": str(var_dir / "keys"),
    }
    args = [
        sys.executable, "manage.py", "run_local_exchange", "--port", str(port),
        "--markets", str(markets), "--rate", str(rate), "--seed", str(seed),
        "--progress-interval", "3600",
    ]  # fmt: skip
    if faults:
        # Per connection / per sid: a few of each in a connection's typical life here.
        args += ["--gap-every", "30000", "--malformed-every", "20000", "--error-after", "45000",
                 "--stall-after", "70000", "--stall-seconds", "2"]  # fmt: skip
    log = open(var_dir / "exchange.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the exchange did not start; see {var_dir / 'exchange.log'}")


def exit_reason(tail: list[str]) -> str:
    """The exception lines of the last output, root cause first (e.g. ``OverflowError: int too
    big to convert <- CommandError: the writer is not running``)."""
    found: list[str] = []
    for line in tail[-120:]:
        head = line.strip()
        if re.match(r"^[\w.]*(Error|Exception)\b.*:", head) and head not in found:
            found.append(head)
    if not found:
        return next((line.strip() for line in reversed(tail) if line.strip()), "")
    return " <- ".join(found[-3:])


class Recorder:
    """``manage.py ingest_orderbook`` as a subprocess, restarted after every exit."""

    def __init__(self, *, var_dir: Path, ws_url: str, db_url: str, markets: list[str]) -> None:
        self.var_dir = var_dir
        self.spill_dir = var_dir / "spill"
        self.spill_dir.mkdir(exist_ok=True)
        self.args = [
            sys.executable, "manage.py", "ingest_orderbook", "--exchange", "local",
            "--ws-url", ws_url, "--markets", ",".join(markets),
            "--snapshot-interval", "5", "--progress-interval", "1",
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "RL_VAR_DIR": str(var_dir),
            "LOCAL_EXCHANGE_KEY_DIR": str(var_dir / "keys"),
            "RL_WRITER_SPILL_DIR": str(self.spill_dir),
            SPILL_CAP_SETTING: str(SPILL_CAP_BYTES),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self.unexpected: list[dict[str, Any]] = []
        self.expect_exit = False
        self.tail: collections.deque[str] = collections.deque(maxlen=400)
        self.progress_times: list[float] = []
        self.last_progress = ""
        self.hang_windows: list[tuple[float, float]] = []
        self._log = open(var_dir / "recorder.log", "w")
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        def limit_files() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (SPILL_FILE_LIMIT_BYTES,) * 2)

        with self._lock:
            self.expect_exit = False
            self.tail.clear()  # exit reasons are this process's own
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                preexec_fn=limit_files,
            )
            self.starts += 1
            threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if self._watch is None:
            self._watch = threading.Thread(target=self._watchdog, daemon=True)
            self._watch.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._log.write(f"{time.strftime('%H:%M:%S')} [{proc.pid}] {line}")
            self.tail.append(line.rstrip())
            if "msg/s |" in line:
                self.progress_times.append(time.monotonic())
                self.last_progress = line.strip()
        self._log.flush()

    def _watchdog(self) -> None:
        while not self._stopping:
            time.sleep(0.2)
            with self._lock:
                proc = self.proc
                if proc is None or proc.poll() is None or self.expect_exit:
                    continue
                time.sleep(0.3)  # let the reader catch the last lines
                reason = exit_reason(list(self.tail))
                self.unexpected.append(
                    {
                        "t": time.strftime("%H:%M:%S"),
                        "returncode": proc.returncode,
                        "reason": reason[-400:],
                    }
                )
                say(f"!! recorder exited by itself (rc {proc.returncode}): {reason[-200:]}")
                self.proc = None
            time.sleep(1.0)
            if not self._stopping:
                say("   restarting the recorder")
                self.start()

    def kill9(self) -> None:
        with self._lock:
            if self.proc is None:
                return
            self.expect_exit = True
            self.proc.kill()
            self.proc.wait(10)
            self.kills += 1
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 90) -> int | None:
        self._stopping = True
        with self._lock:
            proc = self.proc
            self.expect_exit = True
        if proc is None:
            return None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            say("!! the recorder did not stop within the timeout after SIGTERM; killing it")
            proc.kill()
            return proc.wait(10)

    def max_progress_gap_s(self, since: float, until: float) -> float:
        """Longest time without a progress line inside [since, until]."""
        times = [since] + [t for t in self.progress_times if since <= t <= until] + [until]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def max_progress_gap_in_hangs_s(self) -> float:
        """Housekeeping during a hung database (issue 12, item 6): progress lines are printed
        every second by the recorder's event loop, so a long silence means it waited."""
        return max((self.max_progress_gap_s(a, b) for a, b in self.hang_windows), default=0.0)


# -- the schedule --------------------------------------------------------------------------------

FAULTS = ("kill9", "db_refuse", "db_hang", "spill_full", "hostile", "socket_drop", "wide_sid")
# Every fault once, and each hostile frame kind once (one "hostile" fault sends one frame).
BASE_PLAN = (*FAULTS, *(["hostile"] * (len(HOSTILE_KINDS) - 1)))


def make_schedule(
    rng: random.Random, seconds: float, faults: tuple[str, ...] = FAULTS
) -> list[tuple[str, float]]:
    """(fault, duration) in order: the base plan (each of ``faults``; every hostile frame
    kind) shuffled, then random ones of ``faults`` while ``seconds`` are not used up."""
    durations = {
        "kill9": lambda: rng.uniform(1, 3),  # downtime before the restart
        "db_refuse": lambda: rng.uniform(3, 5),
        "db_hang": lambda: rng.uniform(6, 10),
        "spill_full": lambda: rng.uniform(20, 26),
        "hostile": lambda: 0.0,
        "socket_drop": lambda: 0.0,
        "wide_sid": lambda: 0.0,
    }
    order = [f for f in BASE_PLAN if f in faults]
    rng.shuffle(order)
    plan: list[tuple[str, float]] = []
    total = 0.0
    while faults and (order or total < seconds):
        fault = order.pop(0) if order else rng.choice(faults)
        duration = durations[fault]()
        plan.append((fault, duration))
        total += duration + 6.0  # the mean quiet time between faults
    return plan


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the fault phase")
    parser.add_argument("--rate", type=float, default=5000.0, help="exchange msgs/s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--markets", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--cooldown", type=float, default=20.0, help="fault-free drain, s")
    parser.add_argument("--slack", type=float, default=0.25, help="marker delay allowed, s")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated subset of {','.join(FAULTS)}; 'none' = a baseline run that "
        "must show no loss (the checker's own control)",
    )
    parser.add_argument("--no-exchange-faults", action="store_true")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    faults = tuple(f for f in args.faults.split(",") if f and f != "none")
    if unknown := set(faults) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    rng = random.Random(args.seed)
    var_dir = Path(tempfile.mkdtemp(prefix="chaos-ingest-"))
    say(f"scratch dir {var_dir}; database {DB_NAME}")
    direct_url = setup_scratch_django(DB_NAME, RL_VAR_DIR=str(var_dir))
    from django.db import connection

    from benchmarks import chaos_check

    with connection.cursor() as cur:
        chaos_check.ensure_truth_table(cur)

    exchange_port = free_port()
    exchange = start_exchange(
        var_dir,
        port=exchange_port,
        rate=args.rate,
        markets=args.markets,
        seed=args.seed,
        faults=not args.no_exchange_faults,
    )
    truth = TruthWriter(direct_url)
    truth.start()
    db_proxy = DbProxy(("127.0.0.1", 5432))
    db_proxy.start()
    feed = FeedProxy(f"ws://127.0.0.1:{exchange_port}/trade-api/ws/v2", truth)
    feed.start()
    recorder: Recorder | None = None
    events: list[dict[str, Any]] = []
    try:
        rest = f"http://127.0.0.1:{exchange_port}/trade-api/v2/markets?limit=1000"
        with urllib.request.urlopen(rest, timeout=15) as response:
            markets = [m["ticker"] for m in json.load(response)["markets"]]
        recorder = Recorder(
            var_dir=var_dir,
            ws_url=feed.url,
            db_url=f"{PG_SERVER.replace('5432', str(db_proxy.port))}/{DB_NAME}",
            markets=markets,
        )
        recorder.start()
        began = time.monotonic()
        stop_progress = threading.Event()

        def progress() -> None:
            while not stop_progress.wait(5):
                rec = recorder
                say(
                    f"t={time.monotonic() - began:5.0f}s  recorder "
                    f"{'alive' if rec.alive() else 'DOWN '} starts {rec.starts} "
                    f"kills {rec.kills} unexpected exits {len(rec.unexpected)} | db {db_proxy.mode}"
                    f" | frames sent {feed.data_frames:,} | truth rows {truth.written:,}"
                    f" | {rec.last_progress[:110]}"
                )

        threading.Thread(target=progress, daemon=True).start()
        say(f"warm-up {args.warmup:.0f}s at {args.rate:,.0f} msg/s, {len(markets)} markets")
        time.sleep(args.warmup)
        plan = make_schedule(rng, args.seconds, faults)
        say(f"schedule (seed {args.seed}): " + ", ".join(f"{f} {d:.1f}s" for f, d in plan))
        fault_start = time.monotonic()
        for fault, duration in plan:
            at, wall = time.monotonic() - began, time.time()
            detail = run_fault(fault, duration, rng, recorder=recorder, db=db_proxy, feed=feed)
            events.append(
                {
                    "t_s": round(at, 1),
                    "fault": fault,
                    "s": round(duration, 1),
                    "wall": wall,
                    "wall_end": time.time(),
                    **detail,
                }
            )
            say(f">> {fault} {duration:.1f}s {detail}")
            time.sleep(rng.uniform(4, 8))
        if not plan:
            time.sleep(args.seconds)  # a baseline: recording, only the exchange's own faults
        fault_end = time.monotonic()
        say(f"faults over; {args.cooldown:.0f}s to drain")
        time.sleep(args.cooldown)
        hang_gap = recorder.max_progress_gap_in_hangs_s()
        feed.quiesced = True  # nothing more is delivered: the stop loses no frame in flight
        time.sleep(1.0)
        stop_progress.set()
        rc = recorder.stop()
        say(f"recorder stopped (rc {rc}); last progress: {recorder.last_progress}")
    finally:
        feed.stop()
        db_proxy.stop()
        exchange.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            exchange.wait(30)
        truth.close()

    say("checking: sent frames vs stored rows, then the loader's trust at every loss")
    with connection.cursor() as cur:
        result = chaos_check.compare(cur)
    coverage = chaos_check.classify_losses(result.lost, markets=markets, slack_s=args.slack)
    if not args.keep_db:
        drop_scratch_database(DB_NAME)
    else:
        say(f"kept database {DB_NAME}")

    alive = not recorder.unexpected
    print()
    print(
        f"frames delivered {result.frames_accepted:,}; stored exactly {result.rows_stored:,}; "
        f"lost {len(result.lost):,} {result.lost_by_kind}"
    )
    print(
        f"losses inside untrusted windows {coverage.inside:,}, outside {coverage.outside:,} "
        f"{coverage.outside_by_kind}"
    )
    by_fault = attribute(coverage.outside_frames, events)
    print(f"  outside, by the fault that lost them: {by_fault}")
    for example in coverage.outside_examples:
        print(f"  outside: {example}")
    print(
        f"duplicates {result.duplicates} (identity {result.identity_duplicates}, frames "
        f"{result.frame_duplicates}); wrapped/different values {result.wrapped_rows}; "
        f"unverifiable rows {result.unverified_rows}"
    )
    for example in result.wrapped_examples:
        print(f"  wrapped: {example}")
    print(
        f"other frames [sent, stored exactly]: {result.other_frames}; hostile frames sent "
        f"{dict(feed.hostile_sent)}; exchange malformed frames {feed.exchange_malformed}"
    )
    print(
        f"recorder: {recorder.starts} starts, {recorder.kills} kill -9, "
        f"{len(recorder.unexpected)} unexpected exits; longest silence of its progress line "
        f"while the database hung {hang_gap:.1f}s; logs in {var_dir}"
    )
    for exit_ in recorder.unexpected:
        print(f"  exit: {exit_}")
    print(f"loader quality per market: {coverage.quality}")
    figures = {
        "bench": "chaos_ingest",
        "seed": args.seed,
        "fault_phase_s": round(fault_end - fault_start, 1),
        "rate_msgs_per_s": args.rate,
        "faults_injected": dict(collections.Counter(e["fault"] for e in events)),
        "frames_accepted": result.frames_accepted,
        "rows_stored": result.rows_stored,
        "rows_lost": len(result.lost),
        "duplicate_rows": result.duplicates,
        "wrapped_value_rows": result.wrapped_rows,
        "unverified_rows": result.unverified_rows,
        "untrusted_windows": coverage.untrusted_windows,
        "lost_rows_inside_untrusted": coverage.inside,
        "lost_rows_outside_untrusted": coverage.outside,
        "every_lost_row_untrusted": coverage.outside == 0,
        "lost_outside_by_fault_rows": by_fault,
        "recorder_restarts": recorder.starts - 1,
        "kill9_count": recorder.kills,
        "unexpected_exits": len(recorder.unexpected),
        "alive_throughout": alive,
        "max_progress_gap_in_db_hang_s": round(hang_gap, 1),
    }
    print(json.dumps(figures))


hostile_order: list[str] = []


def attribute(frames: list[Any], events: list[dict[str, Any]]) -> dict[str, int]:
    """Count lost frames by the fault that lost them: the latest one whose window, from 5 s
    before it started (a kill or a crash loses what was received but not yet written) to 2 s
    after it ended, holds the frame's send time; ``none`` when no window does (e.g. the
    exchange's own gaps, errors and stalls)."""
    counts: collections.Counter[str] = collections.Counter()
    for frame in frames:
        sent_s = frame.sent_ns / 1e9
        around = [e for e in events if e["wall"] - 5 <= sent_s <= e["wall_end"] + 2]
        counts[around[-1]["fault"] if around else "none"] += 1
    return dict(counts)


def _when_flowing(feed: FeedProxy, action: Any, timeout_s: float = 30.0) -> bool:
    """Run ``action`` once the recorder is connected and frames flow (it may be restarting:
    a frame or a drop aimed at nobody would not test anything)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = feed.data_frames
        time.sleep(0.3)
        if feed.data_frames > before and action():
            return True
    return False


def run_fault(fault: str, duration: float, rng: random.Random, *, recorder: Recorder,
              db: DbProxy, feed: FeedProxy) -> dict[str, Any]:  # fmt: skip
    """Inject one fault and undo it (blocking for ``duration``)."""
    if fault == "kill9":
        recorder.kill9()
        feed.forget_current()
        time.sleep(duration)
        recorder.start()
        return {}
    if fault in ("db_refuse", "spill_full"):
        db.set_mode("refuse")
        time.sleep(duration)
        db.set_mode("forward")
        spilled = sum(f.stat().st_size for f in recorder.spill_dir.rglob("*") if f.is_file())
        return {"spill_bytes_at_end": spilled}
    if fault == "db_hang":
        started = time.monotonic()
        db.set_mode("hang")
        time.sleep(duration)
        db.set_mode("forward")
        recorder.hang_windows.append((started, time.monotonic()))
        return {}
    if fault == "hostile":
        # Each kind in turn (seeded order), so that the base plan sends every one.
        if not hostile_order:
            hostile_order.extend(HOSTILE_KINDS)
            rng.shuffle(hostile_order)
        kind = hostile_order.pop(0)
        return {"frame": kind, "injected": _when_flowing(feed, lambda: feed.inject(kind))}
    if fault == "socket_drop":
        return {"dropped": _when_flowing(feed, feed.drop)}
    if fault == "wide_sid":
        return {"dropped": _when_flowing(feed, lambda: feed.drop(wide_next=True))}
    raise ValueError(fault)


if __name__ == "__main__":
    main()
