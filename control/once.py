"""One submission per rendered form, for forms whose answer shows a secret once (API tokens, webhook receivers).

Those pages answer the POST itself (the secret must not be stored anywhere to survive a redirect), so a reload
re-sends the form. Each rendered form carries a fresh nonce; a nonce seen before is a resubmission, answered with
"already done" instead of a second token or a "name exists" error. Only nonces are kept (in the session).
"""

from __future__ import annotations

import secrets

from django.http import HttpRequest

FIELD = "once"
SESSION_KEY = "sy:used-form-nonces"
KEEP = 50  # the most recent nonces remembered per session; older forms are long gone


def nonce() -> str:
    return secrets.token_urlsafe(12)


def first_submission(request: HttpRequest) -> bool:
    """False when this form (its nonce) was submitted before in this session. A POST without a nonce (a script
    that did not render the form) counts as a first submission."""
    value = request.POST.get(FIELD, "")
    if not value:
        return True
    used: list[str] = request.session.get(SESSION_KEY, [])
    if value in used:
        return False
    request.session[SESSION_KEY] = [*used[-(KEEP - 1):], value]
    return True
