from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "apps.training"
    label = "training"

    def ready(self) -> None:
        # Walk-forwards and studies have their own admin module beside the registry's.
        from apps.training import admin_experiments  # noqa: F401
