"""The package's pages: ``path("account/", include("session_guard_django.urls"))``
gives ``session_guard_django:devices``, the "Your devices" page."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "session_guard_django"

urlpatterns = [
    path("devices/", views.devices, name="devices"),
]
