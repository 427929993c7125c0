"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kalshiflow_site.settings")
django_asgi_app = get_asgi_application()

# These imports need Django set up first.
from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402

from apps.marketdata.consumers import INGEST_CHANNEL, IngestWorker  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Background workers: `manage.py runworker kalshi-ingest`.
        "channel": ChannelNameRouter({INGEST_CHANNEL: IngestWorker.as_asgi()}),
    }
)
