"""The HTTP backend: rewrites from an OpenAI-compatible chat-completions endpoint (``rewrite.url``), sent by
our own actor stage with aiohttp, so that no answer of the endpoint can fail the job.

Ray 2.60's ``ray.data.llm`` HTTP stage raised out of the batch when its retries ran out, when a connection
was refused, or when an error page was not JSON (an HTML 500), which failed the job; it also ignored
``Retry-After`` and had no request timeout of its own. Here every request ends in its row's status:

- A row the rewrite plans (:func:`.rows.plan_row`) sends one chat-completions request with the same prompt,
  sampling settings and answer schema (OpenAI ``response_format``) as the other backends; skipped rows send
  none. All planned rows of a batch (``rewrite.batch_size``) are in flight at once, on each of
  ``rewrite.concurrency`` actors; ``rewrite.qps`` caps the job's request rate, retries included (each actor
  sends at most ``qps / concurrency`` per second).
- Every attempt has a deadline, ``rewrite.request_timeout_s``, for connecting, sending and the whole answer.
- Retried, :data:`HTTP_ATTEMPTS` attempts in all (the policy of OpenAI's own client): a refused or dropped
  connection, a timeout, HTTP 408, 409, 429 and every 5xx. Between attempts: exponential backoff with
  jitter (tenacity), or the answer's ``Retry-After`` (seconds or an HTTP date) where it gives one, waited
  in full up to :data:`MAX_RETRY_AFTER_S`.
- A fault that outlasts the attempts, and any other non-2xx answer (400, 401, a redirect), becomes the row's
  ``failed:http_error``; a 2xx answer that is not a chat completion ``failed:bad_response``. Both count as
  system faults: ``output.retry_failed=true`` sends those rows again. Nothing escapes the batch.
- The API key (:mod:`.endpoint`) goes only to ``rewrite.url``: redirects are not followed, no proxy is taken
  from the environment (as in the preflight's request), and a failure is logged by its status code or
  exception class, never with a request, a header or an answer's body.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pyarrow as pa
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from datajuicer_ray.config import ConfigError, CurateConfig, RewriteConfig
from datajuicer_ray.text.endpoint import ApiKey, checked_key
from datajuicer_ray.text.llm_processors import (
    caption_tokenizer,
    guard_settings,
    response_format,
    sampling_params,
)
from datajuicer_ray.text.models import BUILTINS, resolve
from datajuicer_ray.text.rows import Generation, RowPlan, attach, plan_table, settle

log = logging.getLogger(__name__)

HTTP_ATTEMPTS = 4  # the first request and three retries
RETRIED_STATUSES = frozenset({408, 409, 429})  # and every 5xx
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is waited this long, then the request is tried again
BACKOFF = wait_exponential_jitter(initial=0.5, max=8.0, jitter=0.5)

Sleep = Callable[[float], Awaitable[Any]]


class EndpointFault(Exception):
    """One attempt that got no chat completion: an HTTP status (``status``) or a transport fault (None).
    Its message is the status code or the exception's class: nothing of the request or the answer."""

    def __init__(self, what: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(what)
        self.status, self.retry_after = status, retry_after

    @property
    def retried(self) -> bool:
        return self.status is None or self.status in RETRIED_STATUSES or self.status >= 500


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None if it gives none."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer


def wait_before_retry(state: RetryCallState) -> float:
    """The endpoint's Retry-After (capped), else exponential backoff with jitter."""
    err = state.outcome.exception() if state.outcome else None
    if isinstance(err, EndpointFault) and err.retry_after is not None:
        return min(err.retry_after, MAX_RETRY_AFTER_S)
    return BACKOFF(state)


def _is_retried(err: BaseException) -> bool:
    return isinstance(err, EndpointFault) and err.retried


class RateLimit:
    """At most ``qps`` request starts per second from this process (0: no limit), across batches."""

    def __init__(self, qps: float):
        self.interval = 1.0 / qps if qps > 0 else 0.0
        self.next_slot = 0.0

    async def wait(self, sleep: Sleep) -> None:
        if not self.interval:
            return
        # One event loop: nothing runs between reading and moving the slot, so no lock is needed.
        now = time.monotonic()
        slot = max(now, self.next_slot)
        self.next_slot = slot + self.interval
        if slot > now:
            await sleep(slot - now)


def check_settings(rewrite: RewriteConfig) -> None:
    """The settings this stage needs, named when wrong (config/load.py checks the keys every backend shares)."""
    if not rewrite.url:
        raise ConfigError("rewrite.url: required when rewrite.backend=http")
    if not rewrite.request_timeout_s > 0:  # aiohttp reads 0 as "no deadline"
        raise ConfigError("rewrite.request_timeout_s: must be > 0 (every request has a deadline)")


def payload(rewrite: RewriteConfig, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The chat-completions request body for one row."""
    return {
        "model": rewrite.model,
        "messages": messages,
        "response_format": response_format(),
        **sampling_params(rewrite),
    }


def completion(body: bytes) -> Generation:
    """The answer in a 2xx chat-completions response body, or why there is none."""
    try:
        resp = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Generation(error="bad_response: not JSON")
    if not isinstance(resp, dict):
        return Generation(error="bad_response: not a JSON object")
    if resp.get("error"):
        return Generation(error="http_error: an error object in a 2xx answer")
    choices = resp.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        return Generation(error="bad_response: no choices[0].message.content")
    usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
    tokens = usage.get("completion_tokens")
    return Generation(content, first.get("finish_reason") == "length", None, int(tokens or 0))


class HttpRewriter:
    """The stage: ``__init__`` checks the key against the rule and loads the tokenizer and guard settings,
    ``__call__`` maps a pyarrow batch to the same batch plus the rewrite columns (:func:`.rows.attach`)."""

    def __init__(self, rewrite: RewriteConfig, key: ApiKey | None = None, sleep: Sleep = asyncio.sleep):
        check_settings(rewrite)
        self.rewrite = rewrite
        self.headers = {"Content-Type": "application/json"}
        if key is not None:
            checked_key(rewrite, key)
            self.headers.update(key.header())
        self.tokenizer = caption_tokenizer(rewrite.model, rewrite.revision)
        self.settings = guard_settings(rewrite)
        self.limit = RateLimit(rewrite.qps / max(1, rewrite.concurrency))
        self.timeout = aiohttp.ClientTimeout(total=rewrite.request_timeout_s)
        self.sleep = sleep

    def __call__(self, batch: pa.Table) -> pa.Table:
        plans = plan_table(batch, self.rewrite, self.tokenizer)
        gens = asyncio.run(self.generate(plans))
        return attach(batch, [settle(plan, gens.get(i), self.settings) for i, plan in enumerate(plans)])

    async def generate(self, plans: Sequence[RowPlan]) -> dict[int, Generation]:
        """Each planned row's answer or error, by its index; all requests of the batch at once."""
        todo = [i for i, plan in enumerate(plans) if plan.messages]
        if not todo:
            return {}
        connector = aiohttp.TCPConnector(limit=len(todo))
        async with aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, headers=self.headers, trust_env=False
        ) as session:
            gens = await asyncio.gather(*(self._ask(session, plans[i].messages or []) for i in todo))
        failures = Counter(g.error for g in gens if g.error and g.error.startswith("http_error"))
        if failures:
            detail = ", ".join(f"{what} x{n}" for what, n in failures.most_common())
            log.warning(
                "rewrite: %d of %d endpoint requests failed (%s)", sum(failures.values()), len(gens), detail
            )
        return dict(zip(todo, gens, strict=True))

    async def _ask(self, session: aiohttp.ClientSession, messages: list[dict[str, str]]) -> Generation:
        body = payload(self.rewrite, messages)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(HTTP_ATTEMPTS),
            wait=wait_before_retry,
            retry=retry_if_exception(_is_retried),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post(session, body)
        except EndpointFault as err:
            tries = retrying.statistics.get("attempt_number", 1)
            return Generation(error=f"http_error: {err} ({tries} attempt{'s' if tries > 1 else ''})")
        except Exception as err:  # whatever else goes wrong costs this row only, never the batch
            return Generation(error=f"http_error: {type(err).__name__}")
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> Generation:
        await self.limit.wait(self.sleep)
        try:
            async with session.post(str(self.rewrite.url), json=body, allow_redirects=False) as resp:
                if not 200 <= resp.status < 300:
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise EndpointFault(f"HTTP {resp.status}", resp.status, wait)
                data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as err:  # refused, reset, cut short, timed out
            raise EndpointFault(type(err).__name__) from None
        return completion(data)


def http_map_args(cfg: CurateConfig) -> dict[str, Any]:
    """The ``map_batches`` arguments of :class:`HttpRewriter`: ``rewrite.concurrency`` actors, each holding
    ``rewrite.num_cpus`` (the guard runs there), ``rewrite.batch_size`` rows per call. The key is read
    here, on the driver (the workers' environment need not hold it), and refused where it would travel
    over plain http to another machine."""
    import ray

    from datajuicer_ray.runtime import actor_pool_kwargs

    r = cfg.rewrite
    check_settings(r)
    key = checked_key(r)
    if r.model in BUILTINS:
        resolve(r.model)  # the tokenizer's cached folder, built once, before the actors start
    kwargs = actor_pool_kwargs(r)
    kwargs["compute"] = ray.data.ActorPoolStrategy(size=r.concurrency)
    return dict(batch_format="pyarrow", fn_constructor_kwargs={"rewrite": r, "key": key}, **kwargs)
