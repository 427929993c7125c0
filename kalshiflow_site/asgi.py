"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kalshiflow_site.settings")
django_asgi_app = get_asgi_application()

# These imports need Django set up first.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.dashboard.origin import SameOriginValidator  # noqa: E402
from apps.dashboard.routing import websocket_urlpatterns  # noqa: E402
from apps.dashboard.static_serving import SafeASGIStaticFilesHandler  # noqa: E402
from apps.marketdata.consumers import INGEST_CHANNEL, IngestWorker  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files from the apps themselves (settings.RL_SERVE_STATIC): no CDN, no
        # separate web server needed to run the site offline. A path that climbs out of the
        # static directories is a 404 (apps/dashboard/static_serving.py).
        "http": (
            SafeASGIStaticFilesHandler(django_asgi_app)
            if settings.RL_SERVE_STATIC
            else django_asgi_app
        ),
        # The live page (/rl/live): staff sessions only, from a page of this site (the Origin's
        # host and port are the Host header's, an allowed host: apps/dashboard/origin.py).
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        # Background workers: `manage.py runworker kalshi-ingest`.
        "channel": ChannelNameRouter({INGEST_CHANNEL: IngestWorker.as_asgi()}),
    }
)
