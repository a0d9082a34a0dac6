from django.apps import AppConfig


class TestProjectConfig(AppConfig):
    name = "testproject"

    def ready(self) -> None:
        # The receiver is connected by its import (@receiver).
        from . import receivers  # noqa: F401
