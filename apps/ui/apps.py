from django.apps import AppConfig


class UiConfig(AppConfig):
    """How numbers, prices and times read in every operator page (formats, the admin's
    time-range filter, template tags). At the ground floor, beside workers, so each app's
    admin can use it without importing the dashboard."""

    name = "apps.ui"
    label = "ui"
