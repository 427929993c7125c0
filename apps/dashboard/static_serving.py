"""Static files served by the ASGI app itself (settings.RL_SERVE_STATIC), safely.

Django's ASGIStaticFilesHandler lets a path that climbs out of a static directory
(``/static/%2e%2e/%2e%2e/etc/passwd``, which the server percent-decodes to ``..``) reach its
finders, whose ``safe_join`` raises ``SuspiciousFileOperation``: the request ended as a 500.
Here such a path is a 404 before any file system lookup, and a found file is served only when
its real path (symlinks resolved) lies inside one of the static directories the finders
search (the apps' ``static/`` directories, ``STATICFILES_DIRS``) or ``STATIC_ROOT``.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponseBase
from django.views import static


def static_roots() -> tuple[Path, ...]:
    """Every directory a static file may come from, as real paths (read per request: the
    finders are cached by Django, and this costs a few stat calls)."""
    roots = [Path(settings.STATIC_ROOT)] if settings.STATIC_ROOT else []
    for finder in finders.get_finders():
        for storage in getattr(finder, "storages", {}).values():
            location = getattr(storage, "location", None)
            if location:
                roots.append(Path(location))
    return tuple(Path(os.path.realpath(root)) for root in roots)


def safe_relative_path(relative: str) -> str:
    """``relative`` (the URL path after STATIC_URL, decoded) when it names a file below a static
    directory without any trick; Http404 otherwise."""
    parts = relative.split("/")
    if (
        not relative
        or "\x00" in relative
        or "\\" in relative
        or any(part in ("", ".", "..") for part in parts)
        or posixpath.normpath(relative) != relative
    ):
        raise Http404("Not a static file path.")
    return relative


def inside_static_roots(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in static_roots())


class SafeASGIStaticFilesHandler(ASGIStaticFilesHandler):
    def serve(self, request: HttpRequest) -> HttpResponseBase:
        """The static file the request names, or Http404 (the handler answers 404)."""
        try:
            relative = safe_relative_path(self.file_path(request.path))
            absolute = finders.find(relative)
        except (SuspiciousOperation, ValueError, OSError):
            # A path the finders refuse (outside their base) or the OS cannot take.
            raise Http404("Not a static file path.") from None
        if not absolute or not os.path.isfile(absolute) or not inside_static_roots(absolute):
            raise Http404(f"No static file {relative!r}.")
        document_root, name = os.path.split(absolute)
        try:
            return static.serve(request, name, document_root=document_root)
        except (SuspiciousOperation, ValueError, OSError):
            raise Http404("Not a static file path.") from None
