from __future__ import annotations

from django.apps import AppConfig


class SessionGuardConfig(AppConfig):
    name = "session_guard_django"
    label = "session_guard"
    verbose_name = "session-guard"

    def ready(self) -> None:
        from django.apps import apps
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_in, user_logged_out
        from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save

        from . import attributes
        from . import checks  # noqa: F401  (registers the system checks)
        from . import conf  # noqa: F401  (its setting_changed receiver)
        from .signals import on_login, on_logout

        user_logged_in.connect(on_login, weak=False, dispatch_uid="session_guard.login")
        user_logged_out.connect(on_logout, weak=False, dispatch_uid="session_guard.logout")

        # What the app claims about its users changes (attributes.py). A save
        # through a proxy model (the admin's, say) sends the proxy as sender:
        # every model whose rows are the users' (or the groups') is watched.
        user_model = get_user_model()
        groups = attributes.groups_field(user_model)
        group_model = groups.remote_field.model if groups is not None else None
        for model in apps.get_models():
            concrete = model._meta.concrete_model
            label = model._meta.label_lower
            if concrete is user_model:
                pre_save.connect(
                    attributes.before_user_saved, sender=model, weak=False,
                    dispatch_uid=f"session_guard.user_pre_save.{label}",
                )
                post_save.connect(
                    attributes.after_user_saved, sender=model, weak=False,
                    dispatch_uid=f"session_guard.user_post_save.{label}",
                )
            elif group_model is not None and concrete is group_model:
                for signal, receiver, kind in (
                    (pre_save, attributes.before_group_saved, "group_pre_save"),
                    (post_save, attributes.after_group_saved, "group_post_save"),
                    (pre_delete, attributes.before_group_deleted, "group_pre_delete"),
                    (post_delete, attributes.after_group_deleted, "group_post_delete"),
                ):
                    signal.connect(receiver, sender=model, weak=False, dispatch_uid=f"session_guard.{kind}.{label}")
        if groups is not None:
            m2m_changed.connect(
                attributes.on_groups_changed,
                sender=groups.remote_field.through,
                weak=False,
                dispatch_uid="session_guard.groups_changed",
            )
