import os

from asgiref.sync import sync_to_async
from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt


def whoami(request: HttpRequest) -> HttpResponse:
    """The view the benchmark times: it reads the user, as real views do."""
    user = request.user
    return HttpResponse(user.get_username() if user.is_authenticated else "anonymous")


@csrf_exempt
def login_view(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return HttpResponse("refused", status=403)
    login(request, user)
    return HttpResponse(request.session.session_key or "")


@csrf_exempt
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("bye")


def pid(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(os.getpid()))


@csrf_exempt
def change_password(request: HttpRequest) -> HttpResponse:
    """A password change: Django gives the session a new key, no signal."""
    from django.contrib.auth import update_session_auth_hash

    request.user.set_password(request.POST["password"])
    request.user.save()
    update_session_auth_hash(request, request.user)
    return HttpResponse(request.session.session_key or "")


def remember(request: HttpRequest) -> HttpResponse:
    """Writes to the session: the response saves it, and its expiry moves."""
    request.session["visits"] = request.session.get("visits", 0) + 1
    return HttpResponse("ok")


def forget(request: HttpRequest) -> HttpResponse:
    """Ends the session without logout(): no signal."""
    request.session.flush()
    return HttpResponse("gone")


async def awhoami(request: HttpRequest) -> HttpResponse:
    if hasattr(request, "auser"):  # Django 5.0 and later
        user = await request.auser()
        return HttpResponse(user.get_username() if user.is_authenticated else "anonymous")
    # Django 4.2: the lazy request.user reads the database, off the event loop.
    return await sync_to_async(whoami)(request)


def login_page(request: HttpRequest) -> HttpResponse:
    """A login form for the browser test (it posts to ``/login``)."""
    return HttpResponse(
        '<form method="post" action="/login">'
        '<input name="username"><input name="password" type="password">'
        '<button type="submit">Log in</button></form>'
    )
