from django.urls import include, path
from testproject import views

urlpatterns = [
    # The timed view (it reads the user), reached through the rotation.
    path("rotate/whoami", views.whoami),
    path("", include("testproject.urls")),
]
