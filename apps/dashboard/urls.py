from django.urls import include, path

from apps.dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("", include("apps.dashboard.api.urls")),
    path("live", views.live_view, name="live"),
]
