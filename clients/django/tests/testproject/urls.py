from django.urls import path

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
]
