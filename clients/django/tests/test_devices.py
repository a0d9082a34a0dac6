"""The "Your devices" page (session_guard_django.urls) against the real
worker's sessions API, the real broker and the listener in its own process."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.checks import run_checks
from django.test import Client

from conftest import free_port, wait_until

#: What the test project's urls.py includes the page as.
PAGE = "/account/devices/"
WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
LINUX_FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"

#: A URL include without the page, for the system check.
urlpatterns: list[Any] = []


def log_in(username: str, agent: str) -> Client:
    """A browser of ``username``'s that sends CSRF tokens as a real one must."""
    client = Client(HTTP_USER_AGENT=agent, enforce_csrf_checks=True)
    response = client.post("/login", {"username": username, "password": "pw"})
    assert response.status_code == 200, response.content
    return client


def handles(page: str) -> list[str]:
    """The handles of the page's "Sign out" forms."""
    return re.findall(r'name="handle" value="([^"]+)"', page)


def csrf(client: Client) -> str:
    return str(client.cookies["csrftoken"].value)


def use_api(settings: Any, worker: Any, app: str) -> None:
    settings.SESSION_GUARD_API_URL = worker.api_url
    settings.SESSION_GUARD_API_TOKEN = worker.token(f"devices-{app}", app)


@pytest.mark.django_db(transaction=True)
def test_lists_the_users_sessions_marks_this_one_and_signs_another_out(
    names: Any, settings: Any, worker: Any, listener: Any
) -> None:
    ada = User.objects.create_user("ada", password="pw")
    bob = User.objects.create_user("bob", password="pw")
    w = worker(max_sessions=3)
    use_api(settings, w, names.app)
    lst = listener()

    laptop = log_in("ada", WINDOWS)
    phone = log_in("ada", IPHONE)
    bobs = log_in("bob", LINUX_FIREFOX)
    phone_key = phone.session.session_key
    wait_until("ada's two logins in the log", lambda: len(w.sessions(ada.pk)) == 2)
    wait_until("bob's login in the log", lambda: len(w.sessions(bob.pk)) == 1)

    response = laptop.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    # Ada's two sessions, not bob's; her own is "This device", with no button.
    assert "Chrome on Windows 10" in page and "Safari on iPhone" in page, page
    assert "Firefox" not in page
    assert page.count("This device") == 1
    current = re.search(r'<li class="current">(.*?)</li>', page, re.S)
    assert current is not None and "Chrome on Windows 10" in current.group(1)
    assert "Sign out of all other sessions" in page
    assert len(handles(page)) == 1
    # The page never shows a session id: the cookie is a credential.
    assert laptop.session.session_key not in page and phone_key not in page

    # Without the CSRF token the form is refused, and nothing ends.
    other = handles(page)[0]
    assert laptop.post(PAGE, {"handle": other}).status_code == 403
    # A handle of another user's session (bob's, from his own page) is not
    # the user's to end.
    bobs_handle = handles(log_in("bob", WINDOWS).get(PAGE).content.decode())
    assert bobs_handle
    refused = laptop.post(PAGE, {"handle": bobs_handle[0], "csrfmiddlewaretoken": csrf(laptop)})
    assert refused.status_code == 400

    done = laptop.post(PAGE, {"handle": other, "csrfmiddlewaretoken": csrf(laptop)})
    assert done.status_code == 302 and done["Location"] == PAGE + "?signed_out=1"
    # The worker published the revoke, the listener ended the session.
    wait_until("the phone's session to end", lambda: not Session.objects.filter(session_key=phone_key).exists())
    assert phone.get("/whoami").content == b"anonymous"
    assert laptop.get("/whoami").content == b"ada"
    assert bobs.get("/whoami").content == b"bob"
    assert "ended session" in lst.output()
    ended = {s["session_id"]: s for s in w.sessions(ada.pk)}[phone_key]
    assert (ended["state"], ended["end_reason"]) == ("revoked", "user")

    after = laptop.get(done["Location"]).content.decode()
    assert "Signed out of 1 session." in after
    assert "Safari on iPhone" not in after and handles(after) == []


@pytest.mark.django_db(transaction=True)
def test_signs_out_of_all_other_sessions(names: Any, settings: Any, worker: Any, listener: Any) -> None:
    ada = User.objects.create_user("ada", password="pw")
    w = worker(max_sessions=3)
    use_api(settings, w, names.app)
    listener()

    browsers = [log_in("ada", agent) for agent in (WINDOWS, IPHONE, LINUX_FIREFOX)]
    keys = [b.session.session_key for b in browsers]
    wait_until("three logins in the log", lambda: len(w.sessions(ada.pk)) == 3)
    mine = browsers[0]
    assert len(handles(mine.get(PAGE).content.decode())) == 2

    done = mine.post(PAGE, {"all_others": "1", "csrfmiddlewaretoken": csrf(mine)})
    assert done.status_code == 302 and done["Location"] == PAGE + "?signed_out=2"
    for key, browser in zip(keys[1:], browsers[1:]):
        wait_until("another session to end", lambda: not Session.objects.filter(session_key=key).exists())
        assert browser.get("/whoami").content == b"anonymous"
    assert mine.get("/whoami").content == b"ada"
    states = {s["session_id"]: (s["state"], s["end_reason"]) for s in w.sessions(ada.pk)}
    assert states == {keys[0]: ("active", None), keys[1]: ("revoked", "user"), keys[2]: ("revoked", "user")}


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_api_is_said_and_the_site_carries_on(settings: Any) -> None:
    settings.SESSION_GUARD_ENABLED = False
    settings.SESSION_GUARD_API_URL = f"http://127.0.0.1:{free_port()}"
    user = User.objects.create_user("ada", password="pw")
    client = Client()
    # Anonymous: the login page first.
    assert client.get(PAGE).status_code == 302
    client.force_login(user)
    response = client.get(PAGE)
    assert response.status_code == 503
    assert "Your list of devices is unavailable right now" in response.content.decode()
    assert client.get("/whoami").content == b"ada"


@pytest.mark.django_db(transaction=True)
def test_a_refused_token_is_said_too(names: Any, settings: Any, worker: Any) -> None:
    w = worker()
    settings.SESSION_GUARD_API_URL = w.api_url
    settings.SESSION_GUARD_API_TOKEN = "sgt_" + "x" * 43
    client = Client()
    client.force_login(User.objects.create_user("ada", password="pw"))
    response = client.get(PAGE)
    assert response.status_code == 503
    assert "unavailable" in response.content.decode()


def test_the_system_check_wants_the_api_settings_when_the_page_is_included(settings: Any) -> None:
    def ours() -> list[str]:
        return [m.id or "" for m in run_checks(include_deployment_checks=False) if (m.id or "").startswith("session_guard.E0")]

    assert "session_guard.E009" not in ours()
    settings.SESSION_GUARD_API_TOKEN = None
    assert "session_guard.E009" in ours()
    del settings.SESSION_GUARD_API_URL
    message = [m for m in run_checks() if m.id == "session_guard.E009"][0].msg
    assert "SESSION_GUARD_API_URL and SESSION_GUARD_API_TOKEN are not set" in message
    # A site without the page needs neither.
    settings.ROOT_URLCONF = "test_devices"
    assert "session_guard.E009" not in ours()
    settings.ROOT_URLCONF = "testproject.urls"
    settings.SESSION_GUARD_API_URL = "127.0.0.1:9465"
    settings.SESSION_GUARD_API_TOKEN = "sgt_x"
    assert "session_guard.E010" in ours()
