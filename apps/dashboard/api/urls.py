"""Routes of the REST API, included under /rl/ by apps/dashboard/urls.py."""

from django.contrib.admin.views.decorators import staff_member_required
from django.urls import path
from drf_spectacular.views import SpectacularSwaggerView

from apps.dashboard.api import views

urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    path("status", views.StatusView.as_view(), name="status"),
    path("markets", views.MarketsView.as_view(), name="markets"),
    path("books", views.BooksView.as_view(), name="books"),
    path("models", views.ModelListView.as_view(), name="model-list"),
    path("models/<int:pk>", views.ModelDetailView.as_view(), name="model-detail"),
    path("episodes", views.EpisodeListView.as_view(), name="episode-list"),
    path("episodes/<int:pk>", views.EpisodeDetailView.as_view(), name="episode-detail"),
    path("episodes/<int:pk>/plot.png", views.EpisodePlotView.as_view(), name="episode-plot"),
    path("actions", views.ActionListView.as_view(), name="action-list"),
    path("paper", views.PaperView.as_view(), name="paper"),
    path("schema", views.SchemaView.as_view(), name="schema"),
    # A page for people: anonymous visitors go to the admin login, then come back.
    path(
        "docs",
        staff_member_required(SpectacularSwaggerView.as_view(url_name="dashboard:schema")),
        name="docs",
    ),
]
