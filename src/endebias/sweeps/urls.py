"""Storage URLs as they may be shown: never with a password (no torch here).

The URL is read the way the database layer reads it (SQLAlchemy's ``make_url``), so a
password holding ``/``, ``:`` or a space is found whole. An ``@`` that is not
percent-encoded ends the driver's password early and the rest lands in the host name or
the database; the shown host is then the part after the last ``@``, and everything before
it is treated as secret too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, unquote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
_SHORT = 4  # secrets shorter than this are masked only as whole words, not inside others


@dataclass
class _Parts:
    scheme: str
    user: str | None
    host: str
    database: str | None
    query: dict
    secrets: list[str] = field(default_factory=list)
    password_in_netloc: bool = False
    unencoded_at: bool = False


def _parts(url: str) -> _Parts:
    """The pieces of ``url`` to show; ValueError when it cannot be read at all.

    The user part ends at the *last* ``@``: the driver may stop earlier (at the first), but
    then what it takes for host or database is the rest of a password, so everything up
    to the last ``@`` is treated as secret and the host shown is the one meant.
    """
    scheme, rest = url.split("://", 1)
    try:
        parsed = make_url(url)  # as the driver reads it
        at = rest.rfind("@")
        meant = make_url(f"{scheme}://{rest[at + 1:]}") if at >= 0 else parsed
    except (ArgumentError, ValueError):
        raise ValueError(url) from None
    user, has_password, raw_password = rest[:at].partition(":") if at >= 0 else ("", "", "")
    parts = _Parts(meant.drivername, user if at >= 0 else None, meant.host or "",
                   meant.database, dict(meant.query))
    if has_password:
        parts.secrets.append(raw_password)
        parts.secrets.append(unquote(raw_password))
        parts.password_in_netloc = True
        parts.unencoded_at = parsed.password != unquote(raw_password)
        if parts.unencoded_at:  # the driver's host and database are pieces of the password
            parts.secrets += [p for p in (parsed.host, parsed.database) if p]
    if parsed.password is not None:
        parts.secrets.append(str(parsed.password))
    for key, value in parts.query.items():
        if key.lower() == "password":
            parts.secrets += [value] if isinstance(value, str) else list(value)
    if ":" in parts.host:  # an IPv6 address
        parts.host = f"[{parts.host}]"
    if meant.port is not None:
        parts.host = f"{parts.host}:{meant.port}"
    return parts


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: in the user part or the query."""
    if "://" not in url or url.startswith("sqlite"):
        return url
    try:
        parts = _parts(url)
    except ValueError:
        return url.split("://", 1)[0] + "://" + MASK  # nothing can be told apart
    auth = ""
    if parts.user is not None or parts.password_in_netloc:
        password = f":{MASK}" if parts.password_in_netloc else ""
        auth = f"{parts.user or ''}{password}@"
    shown = f"{parts.scheme}://{auth}{parts.host}"
    if parts.database is not None:
        shown += f"/{parts.database}"
    pairs = []
    for key, value in parts.query.items():
        for item in [value] if isinstance(value, str) else value:
            pairs.append(f"{key}={MASK if key.lower() == 'password' else item}")
    return shown + ("?" + "&".join(pairs) if pairs else "")


def url_secrets(url: str) -> list[str]:
    """Every string of ``url`` that may be (part of) a password, longest first, in the
    forms a driver message may quote it: as written, decoded and percent-encoded."""
    if "://" not in url:
        return []
    try:
        secrets = _parts(url).secrets
    except ValueError:
        return [url.split("://", 1)[1]]
    forms = {f for s in secrets if s for f in (s, quote(s, safe=""), quote_plus(s))}
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's error, a log line) with ``url`` masked and any password it
    holds replaced by ``***`` wherever it appears."""
    text = text.replace(url, mask_url(url))
    for secret in url_secrets(url):
        if len(secret) >= _SHORT:
            text = text.replace(secret, MASK)
        else:  # a short one inside other words would garble the message, not hide more
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", MASK, text)
    return text


def encoding_hint(url: str) -> str:
    """A hint for a URL whose password holds an ``@`` that is not percent-encoded."""
    try:
        unencoded = _parts(url).unencoded_at
    except ValueError:
        return ""
    if not unencoded:
        return ""
    return "; an @ in the password must be percent-encoded as %40 (a / as %2F, a space as %20)"
