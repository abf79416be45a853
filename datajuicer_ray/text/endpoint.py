"""The HTTP rewrite endpoint's key and its one rule, and the endpoint before any work starts: may the API key
go to it, and does it answer (one tiny chat request, 1 token)?

The rule: the key goes only to ``rewrite.url``, never over plain ``http://`` to a host that is not this machine
(unless ``rewrite.allow_insecure_http``), and never into a log, an error or a record. It is read on the driver
and handed to the rewrite stage as an :class:`ApiKey`, whose ``repr`` and ``str`` hide it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from datajuicer_ray.config import ConfigError, RewriteConfig


@dataclass(frozen=True)
class ApiKey:
    """An API key that prints as ``***``: a traceback, a log line or Ray's record of a stage's arguments
    never shows it."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "***"

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def api_key(r: RewriteConfig) -> str | None:
    """The endpoint's key from ``$rewrite.api_key_env``; None when the name or the value is empty."""
    return (os.environ.get(r.api_key_env) or None) if r.api_key_env else None


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and localhost are this machine: traffic to them never reaches a network, so a key
    sent there in clear text is not exposed (a local vLLM server or SSH tunnel is the usual case)."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_key_error(r: RewriteConfig, key: str | None = None) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) when the API key (``key``, else the one in the environment) would
    travel unencrypted to another machine: plain ``http://`` to a host that is not loopback, with
    ``rewrite.allow_insecure_http`` off; else None."""
    if r.allow_insecure_http or not r.url or (key or api_key(r)) is None:
        return None
    parts = urlsplit(str(r.url))
    if parts.scheme.lower() != "http" or is_loopback(parts.hostname):
        return None
    return (
        f"rewrite.url is plain http:// to {parts.hostname}, and ${r.api_key_env} holds an API key that would "
        "cross the network unencrypted",
        "use an https:// URL; or set rewrite.allow_insecure_http=true on a network you trust; or "
        "rewrite.api_key_env='' if the endpoint needs no key",
    )


def checked_key(r: RewriteConfig, key: ApiKey | None = None) -> ApiKey | None:
    """``key`` (else the environment's) if the rule lets it go to ``rewrite.url``; a ConfigError naming
    ``rewrite.allow_insecure_http`` if not. The preflight refuses this first; the stage checks again where
    the header is built, for callers without a preflight."""
    if key is None:
        value = api_key(r)
        key = ApiKey(value) if value else None
    insecure = insecure_key_error(r, key.value if key else None)
    if insecure:
        raise ConfigError(f"rewrite.allow_insecure_http: {insecure[0]}; {insecure[1]}")
    return key


def endpoint_error(r: RewriteConfig, timeout: float) -> tuple[str, str] | None:
    """None if ``rewrite.url`` answers a 1-token chat request, else (what is wrong, how to fix it). Nothing of
    the request or the data goes into the message."""
    body = {"model": r.model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}
    headers = {"Content-Type": "application/json"}
    key = api_key(r)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(str(r.url), json.dumps(body).encode(), headers, method="POST")
    # No proxy from the environment: the job's HTTP client (aiohttp) does not use one either.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as resp:
            resp.read(1 << 16)
        return None
    except urllib.error.HTTPError as err:
        return f"{r.url} answered HTTP {err.code} {err.reason}", _http_fix(err.code, r)
    except ValueError:
        return f"{r.url!r} is not an http(s) URL", "give the endpoint's full URL"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        return (
            f"{r.url} did not answer a test request ({reason}; timeout {timeout:g} s)",
            "start the endpoint, or fix rewrite.url (e.g. http://host:8000/v1/chat/completions)",
        )


def _http_fix(code: int, r: RewriteConfig) -> str:
    if code in (401, 403):
        return f"set ${r.api_key_env} (rewrite.api_key_env) to a key the endpoint accepts"
    if code in (404, 405):
        return (
            "rewrite.url must be the OpenAI-compatible chat-completions URL (…/v1/chat/completions) "
            f"and rewrite.model ({r.model}) a model it serves"
        )
    return "check the endpoint's logs"
