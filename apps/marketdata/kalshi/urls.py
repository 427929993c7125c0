"""Endpoint URLs as they may be shown: credentials embedded in a URL never leave this module.

``ws://user:secret@host/...`` is a valid WebSocket URL (the library sends the user info as
HTTP Basic auth), so a user may well pass one. Everything that logs, prints, stores or shows an
endpoint uses :func:`redact_url`; only the connect call itself sees the original.
"""

from __future__ import annotations

import urllib.parse

REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` with any user info replaced by ``***`` (``ws://***@host:port/path``).

    Query strings are dropped too: Kalshi's endpoints take none, and a token passed as a
    query parameter is as secret as a password.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        # Unparseable (e.g. a bad IPv6 literal): show nothing of it rather than a secret.
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = REDACTED if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def scrub(text: str, url: str) -> str:
    """``text`` (say, an exception message) with ``url``'s user info and query blanked out."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return text.replace(url, REDACTED)
    text = text.replace(url, redact_url(url))
    if "@" in parts.netloc:
        text = text.replace(parts.netloc.rsplit("@", 1)[0], REDACTED)
    if parts.query:
        text = text.replace(parts.query, REDACTED)
    return text
