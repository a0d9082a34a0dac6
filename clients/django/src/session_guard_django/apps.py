from __future__ import annotations

from django.apps import AppConfig


class SessionGuardConfig(AppConfig):
    name = "session_guard_django"
    label = "session_guard"
    verbose_name = "session-guard"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_logged_out

        from . import checks  # noqa: F401  (registers the system checks)
        from . import conf  # noqa: F401  (its setting_changed receiver)
        from .signals import on_login, on_logout

        user_logged_in.connect(on_login, weak=False, dispatch_uid="session_guard.login")
        user_logged_out.connect(on_logout, weak=False, dispatch_uid="session_guard.logout")
