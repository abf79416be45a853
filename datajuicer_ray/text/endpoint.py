"""Does the HTTP rewrite endpoint answer? One tiny chat request (1 token) before any work starts."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from datajuicer_ray.config import RewriteConfig


def endpoint_error(r: RewriteConfig, timeout: float) -> tuple[str, str] | None:
    """None if ``rewrite.url`` answers a 1-token chat request, else (what is wrong, how to fix it). Nothing of
    the request or the data goes into the message."""
    body = {"model": r.model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(r.api_key_env) if r.api_key_env else None
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
