from django.urls import include, path

from . import views

urlpatterns = [
    path("whoami", views.whoami),
    path("login", views.login_view),
    path("logout", views.logout_view),
    path("pid", views.pid),
    path("password", views.change_password),
    path("remember", views.remember),
    path("forget", views.forget),
    path("awhoami", views.awhoami),
    path("login-page", views.login_page),
    # The package's "Your devices" page: session_guard_django:devices.
    path("account/", include("session_guard_django.urls")),
]
