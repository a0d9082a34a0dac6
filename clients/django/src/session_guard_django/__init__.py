"""Django side of session-guard.

Publishes ``login``, ``request`` and ``logout`` events to session-guard and
ends the sessions it revokes (``manage.py session_guard_listen``). See the
package README for settings and deployment.
"""

__version__ = "0.1.0"
