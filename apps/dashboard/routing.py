"""WebSocket routes of the dashboard (mounted by kalshiflow_site/asgi.py)."""

from django.urls import path

from apps.dashboard.consumers import LIVE_WS_PATH, LiveConsumer

websocket_urlpatterns = [path(LIVE_WS_PATH.lstrip("/"), LiveConsumer.as_asgi())]
