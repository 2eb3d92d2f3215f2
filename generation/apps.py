from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Content generation"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
