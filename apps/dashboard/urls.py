from django.urls import path

from apps.dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("health", views.health_view, name="health"),
    path("status", views.status_view, name="status"),
]
