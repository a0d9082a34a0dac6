"""Several broker URLs (the nodes of a RabbitMQ cluster): how the setting is
written, how its URLs are shown, and in which order a connection attempt
tries them.

``SESSION_GUARD_AMQP_URL`` is one URL, a list or tuple of URLs, or several
URLs in one string separated by commas. The rules are the Rust side's
(``amqp/src/url.rs``, ``amqp/src/brokers.rs``), so that one value means the
same to the worker, the Rust client and this package:

- a comma starts a new URL only where what follows it is one
  (``scheme://``), so a comma in a password stays where it is; spaces
  around the commas are dropped;
- passwords (and ``password=`` query parameters) are masked wherever a URL
  is shown;
- each connection attempt tries every URL once, in an order shuffled anew,
  so that many processes given the same list do not all pick its first
  node, nor all move to the same next one when a node dies; the URL of the
  last connection made is tried last, since after a lost connection that
  node may be gone. pika itself goes through the list
  (``BlockingConnection`` and ``SelectConnection.create_connection`` take a
  sequence of connection parameters and try them in order).
"""

from __future__ import annotations

import random
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

#: What :func:`mask` shows for a URL that does not parse: where its
#: password would be cannot be told, so none of it is shown.
UNPARSEABLE_URL = "(a URL that does not parse)"

#: ``scheme://`` at the start of a text (RFC 3986 scheme).
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def split_urls(text: str) -> list[str]:
    """The URLs of a comma-separated list; one URL is a list of one."""
    urls: list[str] = []
    start = 0
    for found in re.finditer(",", text):
        at = found.start()
        if _SCHEME.match(text[at + 1 :].lstrip()):
            urls.append(text[start:at].strip())
            start = at + 1
    urls.append(text[start:].strip())
    return urls


def urls_of(value: Any) -> list[str]:
    """The URLs a value of ``SESSION_GUARD_AMQP_URL`` names: a string is
    split at its commas (:func:`split_urls`), a list or tuple is taken item
    by item. Anything else is returned as one item, for the checks to
    refuse."""
    if isinstance(value, str):
        return split_urls(value)
    if isinstance(value, (list, tuple)):
        return [item.strip() if isinstance(item, str) else item for item in value]
    return [value]


def mask(url: str) -> str:
    """``url`` with its password, and any ``password=`` query parameter,
    replaced by ``***``; a comma-separated list has each URL masked."""
    urls = split_urls(url)
    if len(urls) > 1:
        return ",".join(_mask_one(u) for u in urls)
    return _mask_one(url)


def mask_all(urls: Sequence[str]) -> str:
    """Every URL of a list, masked, comma-separated."""
    return ",".join(_mask_one(u) for u in urls)


def _mask_one(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        return UNPARSEABLE_URL
    netloc = parts.netloc
    if "@" in netloc:
        # The last @ ends the user information: one in a password (badly
        # escaped) stays on the masked side.
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            query = urllib.parse.urlencode(
                [(key, "***" if key.lower() == "password" else value) for key, value in pairs], safe="*"
            )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def passwords(urls: Sequence[str]) -> list[str]:
    """The passwords the URLs carry, as written and unescaped, longest
    first: what :func:`scrub` takes out of a message."""
    found: set[str] = set()
    for url in urls:
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError:
            continue
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() == "password":
                found.add(value)
    for password in list(found):
        found.add(urllib.parse.unquote(password))
    return sorted((p for p in found if p), key=len, reverse=True)


def scrub(text: str, urls: Sequence[str]) -> str:
    """``text`` (an error's message, say) with the URLs' passwords masked,
    and any of the URLs themselves shown masked."""
    for url in sorted(urls, key=len, reverse=True):
        if url:
            text = text.replace(url, _mask_one(url))
    for password in passwords(urls):
        text = text.replace(password, "***")
    return text


def user_of(url: str) -> str | None:
    """The user a URL logs in as (pika's default, guest, without one); None
    if the URL does not parse."""
    try:
        import pika

        credentials = pika.URLParameters(url).credentials
    except Exception:
        return None
    return getattr(credentials, "username", None)


def common_user(urls: Sequence[str]) -> str | None:
    """The user every URL logs in as. The publisher's events carry it in
    their ``user-id`` property, which RabbitMQ checks against the
    connection's user (and the worker's ``amqp.require_user_id`` relies
    on), so a list whose URLs log in as different users is refused, as the
    Rust client refuses it: ValueError, naming the users."""
    users = [user_of(url) for url in urls]
    if len(set(users)) > 1:
        shown = ", ".join(f"{mask(url)} as {user!r}" for url, user in zip(urls, users))
        raise ValueError(
            "every URL of SESSION_GUARD_AMQP_URL must log in as the same user (the events' "
            f"user-id property names it): {shown}"
        )
    return users[0] if users else None


def order(count: int, last: int | None) -> list[int]:
    """The order of one connection attempt over ``count`` URLs: shuffled
    anew each time, the URL of the last connection (``last``) last."""
    others = [index for index in range(count) if index != last]
    random.shuffle(others)
    if last is not None and 0 <= last < count:
        others.append(last)
    return others


def index_of(urls: Sequence[Any], parameters: Any) -> int | None:
    """Which of the parsed ``urls`` (pika parameters, in the setting's
    order) a connection's parameters came from (pika copies them)."""
    for index, given in enumerate(urls):
        if (given.host, given.port, given.virtual_host) == (
            parameters.host,
            parameters.port,
            parameters.virtual_host,
        ):
            return index
    return None
