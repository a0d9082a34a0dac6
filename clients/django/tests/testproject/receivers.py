"""The README's receiver of new_device_login: it emails the user (the test
project's email backend prints the email to the listener's output)."""

from typing import Any

from django.core.mail import send_mail
from django.dispatch import receiver

from session_guard_django.notices import Notice
from session_guard_django.signals import new_device_login


@receiver(new_device_login)
def email_the_user(sender: Any, user: Any, notice: Notice, **kwargs: Any) -> None:
    if not user.email:
        return
    where = f" from {notice.ip}" if notice.ip else ""
    send_mail(
        subject="A new sign-in to your account",
        message=(
            f"A new sign-in to your account: {notice.device.describe()}{where} "
            f"at {notice.signed_in_at:%Y-%m-%d %H:%M} UTC. If it was not you, change your password."
        ),
        from_email=None,
        recipient_list=[user.email],
    )
