from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "apps.dashboard"
    label = "dashboard"

    def ready(self) -> None:
        # Connects the failed-login counter to django.contrib.auth's user_login_failed.
        from apps.dashboard import throttling  # noqa: F401
