"""Talking HTTP to a server: its API root from a URL, whether it is on this machine, the proxy
the environment names, request bodies, reading answers (bounded), Retry-After and the server's
own words for an error."""

from __future__ import annotations

import email.utils
import ipaddress
import json
import socket
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bonito.errors import BonitoError

try:
    import aiohttp
except ImportError:  # pragma: no cover - a dependency of bonito; only a broken install lacks it
    aiohttp = None  # type: ignore[assignment]

MAX_ERROR_CHARS = 200
"""Longest server message kept in an error."""
MAX_ANSWER_BYTES = 8 * 2**20
"""Longest answer body read; a longer one is unreadable (and its rest is not read)."""


def api_root(url: str) -> str:
    """The server's API root ending in /v1, from its root, its /v1 or its /v1/completions;
    BonitoError for anything but an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BonitoError(
            "base_url (--base-url) must be an http:// or https:// URL such as "
            f"http://127.0.0.1:8000/v1, got '{url}'."
        )
    if parts.username or parts.password:
        raise BonitoError(
            "base_url (--base-url) must not carry a user name or password (they would show in "
            "logs); put the key in an environment variable and name it with api_key_env "
            "(--api-key-env)."
        )
    path = parts.path.rstrip("/")
    path = path.removesuffix("/completions").removesuffix("/chat")
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def is_local(host: str) -> bool:
    """Whether `host` is this machine or a private network (every address it resolves to is
    loopback, private or link-local); unresolvable names count as not local."""
    host = host.strip("[]").split("%")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return bool(addresses) and all(
        a.is_loopback or a.is_private or a.is_link_local for a in addresses
    )


def retry_after(value: str | None, longest: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), at most `longest`;
    None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), longest)


def env_proxy(url: str) -> str | None:
    """The proxy HTTP_PROXY or HTTPS_PROXY names for `url`, unless NO_PROXY exempts its host,
    read as requests reads them; None if there is none."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def to_json(value: Any) -> str:
    """A request body: compact JSON, UTF-8 text left as it is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass
class Answer:
    """An HTTP answer: its body read in full, or its first MAX_ANSWER_BYTES if `cut`."""

    status: int
    reason: str
    body: bytes
    retry_after: str | None = None
    cut: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not, or was too long to read."""
        if self.cut:
            raise ValueError(f"an answer over {MAX_ANSWER_BYTES // 2**20} MiB")
        return json.loads(self.body)


async def fetch(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None
) -> Answer:
    """GET `url`, or POST `body` to it as JSON, and read the answer (up to MAX_ANSWER_BYTES);
    aiohttp.ClientError or asyncio.TimeoutError if no answer came."""
    request = session.get(url) if body is None else session.post(url, json=body)
    async with request as response:
        content = bytearray()
        async for chunk in response.content.iter_any():
            content += chunk
            if len(content) > MAX_ANSWER_BYTES:
                break
        cut = len(content) > MAX_ANSWER_BYTES
        return Answer(
            response.status,
            response.reason or "",
            bytes(content[:MAX_ANSWER_BYTES]),
            response.headers.get("Retry-After"),
            cut,
        )


def error_message(answer: Answer, secret: str | None = None) -> str:
    """The server's own words for an error answer in one short line of printable text, with
    the API key blanked out: a JSON error's message, the first line of a text, the reason phrase
    of an HTML page."""
    try:
        payload = answer.json()
    except ValueError:
        text = answer.body.decode("utf-8", "replace").strip()
        payload = answer.reason if text.startswith("<") else text.partition("\n")[0]
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            payload = error.get("message") or error.get("detail") or error
        else:
            payload = payload.get("message") or payload.get("detail") or error
    text = " ".join(str(payload).split()) or answer.reason
    if secret:
        text = text.replace(secret, "***")  # before the cut, which could leave a part of it
    return "".join(c if c.isprintable() else "\ufffd" for c in text[:MAX_ERROR_CHARS])
