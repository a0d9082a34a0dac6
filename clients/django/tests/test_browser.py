"""The "Your devices" page in a real browser: Debian's chromium driven by
playwright, against gunicorn, the real worker (with its sessions API), the
real broker and the listener. Two browser contexts are two devices of one
user; the first signs the second out."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from conftest import TESTS, wait_until
from test_gunicorn import serve, stop

#: Debian's package (apt-get install chromium): no browser is downloaded.
CHROMIUM = Path("/usr/bin/chromium")
#: Where the test leaves its screenshot of the page (README shows a copy,
#: docs/images/devices.png).
SCREENSHOT = TESTS / "screenshots" / "devices.png"
#: How soon the signed-out device must be anonymous.
WITHIN_SECONDS = 10.0
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")
@pytest.mark.django_db(transaction=True)
def test_a_user_signs_another_device_out_in_a_real_browser(
    names: Any, worker: Any, listener: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    from playwright.sync_api import sync_playwright

    user = User.objects.create_user("ada", password="pw")
    w = worker(max_sessions=3)
    listener()
    server, base, log = serve(
        names, tmp_path, "gunicorn.log", SG_TEST_API_URL=w.api_url, SG_TEST_API_TOKEN=w.token("devices", names.app)
    )
    # playwright's sync API runs an event loop in this thread: the ORM calls
    # below (the worker's log is read through the CLI) are still plain ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            laptop = browser.new_context(viewport={"width": 900, "height": 560})
            phone = browser.new_context(user_agent=PHONE, viewport={"width": 390, "height": 700})
            pages = []
            for context in (laptop, phone):
                page = context.new_page()
                page.goto(base + "/login-page")
                page.fill("input[name=username]", "ada")
                page.fill("input[name=password]", "pw")
                page.click("button[type=submit]")
                page.goto(base + "/whoami")
                assert page.inner_text("body") == "ada"
                pages.append(page)
            wait_until("both logins in the worker's log", lambda: len(w.sessions(user.pk)) == 2)

            mine = pages[0]
            mine.goto(base + "/account/devices/")
            rows = mine.locator("ul.sessions li")
            assert rows.count() == 2
            current = mine.locator("ul.sessions li.current")
            assert current.count() == 1
            assert "This device" in current.inner_text()
            other = mine.locator("ul.sessions li:not(.current)")
            assert "Safari on iPhone" in other.inner_text()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            mine.screenshot(path=str(SCREENSHOT), full_page=True)
            shutil.copy(SCREENSHOT, tmp_path / "devices.png")

            other.get_by_role("button", name="Sign out").click()
            assert "Signed out of 1 session." in mine.inner_text("main")
            assert mine.locator("ul.sessions li").count() == 1

            # The worker published the revoke, the listener ended the
            # session: the phone's next page is anonymous within seconds.
            signed_out_at = time.monotonic()
            while True:
                pages[1].goto(base + "/whoami")
                if pages[1].inner_text("body") == "anonymous":
                    break
                assert time.monotonic() - signed_out_at < WITHIN_SECONDS, "the phone is still signed in"
                time.sleep(0.2)
            mine.goto(base + "/whoami")
            assert mine.inner_text("body") == "ada"
            browser.close()
    finally:
        stop(server, log, tmp_path, "gunicorn.log")
    ended = [s for s in w.sessions(user.pk) if s["state"] != "active"]
    assert [(s["state"], s["end_reason"]) for s in ended] == [("revoked", "user")]
    assert os.path.getsize(SCREENSHOT) > 10_000
