"""Where a worker connects and with which key: the recorder's and the paper trader's endpoint.

``exchange`` is ``local`` (the bundled exchange), ``demo`` or ``prod``; a ``ws_url`` names any
Kalshi-compatible endpoint instead. :func:`resolve_endpoint` gives the WebSocket URL and the
signer for the pair; :func:`rest_base_for` the REST base the recorder lists markets from.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from apps.marketdata.kalshi.signer import KalshiSigner, SignerError
from apps.marketdata.kalshi.urls import redact_url

log = logging.getLogger(__name__)

EXCHANGES = ("local", "demo", "prod")
EXCHANGE_WS_URLS = {
    "demo": "wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2",
    "prod": "wss://external-api-ws.kalshi.com/trade-api/ws/v2",
}
EXCHANGE_REST_URLS = {
    "demo": "https://external-api.demo.kalshi.co/trade-api/v2",
    "prod": "https://external-api.kalshi.com/trade-api/v2",
}


class EndpointError(Exception):
    """The exchange, URL or key cannot be used (the message says how to fix it)."""


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: the WebSocket URL to connect to and the key that signs for it."""

    ws_url: str
    signer: KalshiSigner


def check_exchange(exchange: str) -> None:
    if exchange not in EXCHANGES:
        raise EndpointError(f"--exchange must be local, demo or prod, not {exchange!r}")


def key_source(*, exchange: str, ws_url: str = "") -> str:
    """Where the key that :func:`load_signer` picks comes from, in words (never the key).

    Your configured key (``KALSHI_API_KEY_ID``) signs for demo and prod and for any endpoint
    given by URL; the development key under ``var/keys`` signs only for the bundled exchange
    at its default address, or for a URL when no key is configured.
    """
    if exchange != "local" or (ws_url and settings.KALSHI_API_KEY_ID):
        return settings.KALSHI_API_KEY_ID_SOURCE or "KALSHI_API_KEY_ID"
    return f"the development key under {settings.LOCAL_EXCHANGE_KEY_DIR}"


def load_signer(*, exchange: str, ws_url: str = "") -> KalshiSigner:
    """The signer for ``exchange`` (and ``ws_url``, when one is given): see :func:`key_source`.

    The bundled exchange at its default address only knows the development key pair it
    generated under var/keys, so a real Kalshi key is not sent to it; an endpoint named by URL
    may be anything Kalshi-compatible, so a configured key is what it gets.
    """
    if exchange == "local" and not (ws_url and settings.KALSHI_API_KEY_ID):
        from apps.marketdata.exchange import ensure_dev_keys

        keys = ensure_dev_keys(Path(settings.LOCAL_EXCHANGE_KEY_DIR), announce=log.info)
        return KalshiSigner.from_file(key_id=keys.key_id, path=keys.private_key_path)
    key_id = settings.KALSHI_API_KEY_ID
    pem = settings.KALSHI_PRIVATE_KEY_PEM
    path = settings.KALSHI_PRIVATE_KEY_PATH
    try:
        if key_id and pem:
            return KalshiSigner.from_pem(key_id=key_id, pem=pem)
        if key_id and path:
            return KalshiSigner.from_file(key_id=key_id, path=path)
    except SignerError as exc:
        raise EndpointError(str(exc)) from None
    raise EndpointError(
        f"--exchange {exchange} needs your Kalshi API key: set KALSHI_API_KEY_ID and "
        "KALSHI_PRIVATE_KEY_PATH (or KALSHI_PRIVATE_KEY_PEM)."
    )


def resolve_ws_url(*, exchange: str, ws_url: str = "") -> str:
    """``ws_url`` when given (checked to be ws:// or wss://), else the exchange's own URL."""
    if ws_url:
        if not ws_url.startswith(("ws://", "wss://")):
            raise EndpointError(f"--ws-url {redact_url(ws_url)!r} must start with ws:// or wss://")
        return ws_url
    if exchange == "local":
        host, port = settings.LOCAL_EXCHANGE_HOST, settings.LOCAL_EXCHANGE_PORT
        return f"ws://{host}:{port}/trade-api/ws/v2"
    try:
        return EXCHANGE_WS_URLS[exchange]
    except KeyError:
        raise EndpointError(f"--exchange must be local, demo or prod, not {exchange!r}") from None


def resolve_endpoint(*, exchange: str, ws_url: str = "") -> Endpoint:
    """The URL and the signer for ``exchange`` / ``ws_url`` (the URL is checked first)."""
    url = resolve_ws_url(exchange=exchange, ws_url=ws_url)
    return Endpoint(ws_url=url, signer=load_signer(exchange=exchange, ws_url=ws_url))


def rest_base_for(ws_url: str, exchange: str) -> str:
    """The REST base URL next to a WebSocket URL (Kalshi's own for demo and prod)."""
    if exchange in EXCHANGE_REST_URLS and not ws_url.startswith("ws://"):
        return EXCHANGE_REST_URLS[exchange]
    parsed = urllib.parse.urlsplit(ws_url)
    scheme = "https" if parsed.scheme == "wss" else "http"
    # Market listing is public: credentials embedded in the WebSocket URL are not sent there.
    host = parsed.netloc.rsplit("@", 1)[-1]
    return f"{scheme}://{host}/trade-api/v2"
