"""rewrite.backend=http: no answer of the endpoint fails the job (issue 23).

A scripted OpenAI-compatible endpoint on 127.0.0.1 answers each row by a word in its caption: an HTML 500
page, a 503 then an answer, a 429 whose Retry-After it enforces, a 429 for ever, an answer slower than the
request timeout, a dropped connection, a redirect, a 2xx that is not JSON, and a good chat completion for
the rest. The job runs through the CLI on a real local Ray; each row ends as its status says, the job exits
0, and ``output.retry_failed=true`` redoes the failed rows once the endpoint is well again. The API key
reaches the endpoint and nothing else: not the redirect target, not a log, not the output.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datajuicer_ray import cli
from datajuicer_ray.config import ConfigError, CurateConfig, RewriteConfig
from datajuicer_ray.text import http_backend as hb
from datajuicer_ray.text.endpoint import ApiKey
from datajuicer_ray.text.prompt import ANSWER_SCHEMA
from tests.support.inputs import img2dataset_parquet
from tests.support.tables import read_rows

KEY = "sk-dj-test-7f3a9c-never-logged"
KEY_ENV = "DJ_HTTP_TEST_KEY"
THROTTLE_S = 2  # the Retry-After of the "throttled" row, which the endpoint enforces
TIMEOUT_S = 5  # rewrite.request_timeout_s in these tests: a good answer on a busy machine fits

# caption -> (rewrite_status, requests the endpoint gets for it)
ROWS = {
    "a brown dog on the grass": ("ok", 1),
    "a red car near the sea": ("ok", 1),
    "a white cat htmlpage": ("failed:http_error", hb.HTTP_ATTEMPTS),  # HTML 500 every time
    "a small bird busy": ("ok", 2),  # 503 once
    "a grey horse throttled": ("ok", 2),  # 429 + Retry-After once
    "a gold fish ratelimited": ("failed:http_error", hb.HTTP_ATTEMPTS),  # 429 every time
    "a tall tree slow": ("failed:http_error", hb.HTTP_ATTEMPTS),  # never answers in time
    "a blue boat reset": ("failed:http_error", hb.HTTP_ATTEMPTS),  # connection dropped
    "a green lamp redirected": ("failed:http_error", 1),  # 307 elsewhere: not followed
    "a yellow kite garbled": ("failed:bad_response", 1),  # 200 with an HTML page
}
FAILED_UPSTREAM = len(ROWS)  # one more row, failed_to_download upstream: never sent


class Endpoint:
    """A chat-completions server on 127.0.0.1 that misbehaves as scripted, and remembers every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []  # {"path", "auth", "caption", "t"}
        self.early = 0  # requests of the throttled row before its Retry-After had passed
        self.healthy = False  # answer every row well (the retry_failed re-run)
        self.refuse_after_preflight = False  # close the port once the preflight's request is answered
        self.release = threading.Event()  # ends the "slow" handlers at teardown
        self._throttled_until: float | None = None
        self._lock = threading.Lock()
        self.server = self._serve(0)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def _serve(self, port: int) -> ThreadingHTTPServer:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                endpoint.handle(self)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # a whole batch connects at once

        server = Server(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reopen(self) -> None:
        """Listen again on the same port (the URL in the table's run record stays valid)."""
        self.server = self._serve(self.port)

    def count(self, word: str) -> int:
        return sum(1 for r in self.requests if word in (r["caption"] or ""))

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        try:
            caption = json.loads(user)["caption"] or ""
        except ValueError:  # the preflight's "Say OK."
            caption = None
        now = time.monotonic()
        with self._lock:
            self.requests.append({"path": h.path, "auth": h.headers.get("Authorization"), "caption": caption})
        if caption is None:
            self._send(h, 200, _completion("OK"))
            if self.refuse_after_preflight:
                threading.Thread(target=self.close, daemon=True).start()
            return
        if self.healthy:
            return self._send(h, 200, _completion(_tidy(caption)))
        word = caption.rsplit(" ", 1)[-1]
        if word == "htmlpage":
            page = b"<html><body><h1>500 Internal Server Error</h1><p>nginx</p></body></html>"
            return self._send(h, 500, page, "text/html")
        if word == "busy" and self.count("busy") == 1:
            return self._send(h, 503, b"upstream busy", "text/plain")
        if word == "throttled":
            with self._lock:
                until = self._throttled_until
                if until is None or now < until:
                    self.early += until is not None
                    self._throttled_until = now + THROTTLE_S
                    wait = THROTTLE_S
                else:
                    wait = 0
            if wait:
                return self._send(h, 429, _error("rate limited"), headers={"Retry-After": str(wait)})
        if word == "ratelimited":
            return self._send(h, 429, _error("rate limited"), headers={"Retry-After": "1"})
        if word == "slow":
            self.release.wait(TIMEOUT_S * 10)
            return None  # the client gave up long ago
        if word == "reset":
            h.close_connection = True
            return None  # no status line at all: the connection just closes
        if word == "redirected":
            location = f"http://127.0.0.1:{self.port}/elsewhere"
            return self._send(h, 307, b"", "text/plain", headers={"Location": location})
        if word == "garbled":
            return self._send(h, 200, b"<html>maintenance</html>", "text/html")
        return self._send(h, 200, _completion(_tidy(caption)))

    @staticmethod
    def _send(h, code: int, body, ctype: str = "application/json", headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:  # the client went away (a timed-out request)
            pass


def _tidy(caption: str) -> str:
    return caption[0].upper() + caption[1:] + "."


def _completion(text: str) -> dict:
    content = json.dumps({"caption": text}) if text != "OK" else text
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    return {"object": "chat.completion", "choices": [choice], "usage": {"completion_tokens": 7}}


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "rate_limit_error"}}


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.release.set()
    e.close()


def _inputs(folder: Path) -> Path:
    path = img2dataset_parquet(folder / "00000.parquet", len(ROWS) + 1, failed=(FAILED_UPSTREAM,))
    table = pq.read_table(path)
    captions = [*ROWS, "a photo that never downloaded"]
    pq.write_table(
        table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions)), path
    )
    return folder


def _curate(tmp_path: Path, url: str, *extra: str) -> int:
    (tmp_path / "empty.yaml").write_text("{}\n")
    argv = [
        "curate",
        str(tmp_path / "empty.yaml"),
        f"input.path={tmp_path / 'in'}",
        f"output.path={tmp_path / 'out'}",
        "vision.model=tiny-random-dino",
        "rewrite.enabled=true",
        "rewrite.backend=http",
        "rewrite.model=tiny-random",
        f"rewrite.url={url}",
        f"rewrite.api_key_env={KEY_ENV}",
        f"rewrite.request_timeout_s={TIMEOUT_S}",
        "rewrite.batch_size=16",
        "ray.progress=false",
        *extra,
    ]
    return cli.main(argv)


def _by_caption(out: Path) -> dict[str, dict]:
    rows = read_rows(out)
    assert len({r["key"] for r in rows}) == len(rows) == len(ROWS) + 1  # every row once
    return {r["caption"]: r for r in rows}


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_no_endpoint_answer_fails_the_job(ray_local, endpoint, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(KEY_ENV, KEY)
    _inputs(tmp_path / "in")

    assert _curate(tmp_path, endpoint.url) == 0, capfd.readouterr().err[-3000:]
    rows = _by_caption(tmp_path / "out")
    for caption, (status, requests) in ROWS.items():
        row = rows[caption]
        assert row["status"] == "ok", caption
        assert row["rewrite_status"] == status, caption
        assert (row["caption_rewritten"] == _tidy(caption)) == (status == "ok"), caption
        assert endpoint.count(caption) == requests, caption
    assert rows["a photo that never downloaded"]["rewrite_status"] == "skipped:upstream:failed_to_download"
    assert endpoint.count("never downloaded") == 0
    assert endpoint.early == 0, "a retry came before the Retry-After the endpoint asked for"
    # The key went to rewrite.url with every request, and to nothing else: the redirect was not followed.
    assert {r["path"] for r in endpoint.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in endpoint.requests} == {f"Bearer {KEY}"}

    # output.retry_failed=true redoes the input file of the failed rows, once the endpoint is well again.
    endpoint.healthy = True
    sent_before = len(endpoint.requests)
    assert _curate(tmp_path, endpoint.url, "output.retry_failed=true") == 0, capfd.readouterr().err[-3000:]
    again = {r["caption"] for r in endpoint.requests[sent_before:]}
    assert {c for c, (status, _) in ROWS.items() if status != "ok"} <= again
    rows = _by_caption(tmp_path / "out")
    assert all(rows[c]["rewrite_status"] == "ok" and rows[c]["caption_rewritten"] == _tidy(c) for c in ROWS)

    # The key is in no log line, error or file of the run (Ray's worker logs included).
    captured = capfd.readouterr()
    assert KEY not in captured.out and KEY not in captured.err
    assert _files_holding(tmp_path / "out", KEY) == []
    logs = Path(ray_local._private.worker._global_node.get_logs_dir_path())
    assert _files_holding(logs, KEY) == []


def test_a_refused_connection_fails_rows_not_the_job(ray_local, endpoint, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(KEY_ENV, KEY)
    _inputs(tmp_path / "in")
    endpoint.refuse_after_preflight = True  # the endpoint answers the preflight, then goes away

    assert _curate(tmp_path, endpoint.url) == 0, capfd.readouterr().err[-3000:]
    rows = _by_caption(tmp_path / "out")
    assert [r["caption"] for r in endpoint.requests] == [None]  # the preflight's; then nothing got through
    assert {rows[c]["rewrite_status"] for c in ROWS} == {"failed:http_error"}

    endpoint.refuse_after_preflight, endpoint.healthy = False, True
    endpoint.reopen()
    assert _curate(tmp_path, endpoint.url, "output.retry_failed=true") == 0, capfd.readouterr().err[-3000:]
    rows = _by_caption(tmp_path / "out")
    assert {rows[c]["rewrite_status"] for c in ROWS} == {"ok"}
    assert rows["a photo that never downloaded"]["rewrite_status"] == "skipped:upstream:failed_to_download"


# ------------------------------------------------------------------------------ the stage without Ray


class Sleeps(list):
    """Records the waits asked for instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _rewriter(url: str, key: ApiKey | None = None, **settings) -> tuple[hb.HttpRewriter, Sleeps]:
    sleeps = Sleeps()
    r = RewriteConfig(enabled=True, backend="http", url=url, model="tiny-random", **settings)
    return hb.HttpRewriter(r, key, sleep=sleeps), sleeps


def _batch(*captions: str) -> pa.Table:
    n = len(captions)
    return pa.table({"key": [f"k{i}" for i in range(n)], "caption": list(captions), "status": ["ok"] * n})


def test_retry_after_is_waited_in_full_up_to_a_bound_and_backoff_grows(endpoint):
    rewriter, sleeps = _rewriter(endpoint.url)
    out = rewriter(_batch("a gold fish ratelimited"))  # Retry-After: 1
    assert out["rewrite_status"].to_pylist() == ["failed:http_error"]
    assert sleeps == [1.0] * (hb.HTTP_ATTEMPTS - 1)

    rewriter, sleeps = _rewriter(endpoint.url)
    assert rewriter(_batch("a white cat htmlpage"))["rewrite_status"].to_pylist() == ["failed:http_error"]
    assert len(sleeps) == hb.HTTP_ATTEMPTS - 1 and sleeps == sorted(sleeps) and sleeps[0] >= 0.5

    assert hb.retry_after_seconds("120") == 120.0
    assert hb.retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert hb.retry_after_seconds("soon") is None and hb.retry_after_seconds(None) is None
    fault = hb.EndpointFault("HTTP 429", 429, retry_after=3600.0)
    assert not hb.EndpointFault("HTTP 400", 400).retried and fault.retried

    class State:
        outcome = type("Outcome", (), {"exception": staticmethod(lambda: fault)})

    assert hb.wait_before_retry(State()) == hb.MAX_RETRY_AFTER_S  # type: ignore[arg-type]


def test_a_refused_connection_is_retried_then_fails_its_row_only():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rewriter, sleeps = _rewriter(f"http://127.0.0.1:{port}/v1/chat/completions")
    out = rewriter(_batch("a brown dog on the grass", " "))
    assert out["rewrite_status"].to_pylist() == ["failed:http_error", "skipped:no_caption"]
    assert len(sleeps) == hb.HTTP_ATTEMPTS - 1


def test_requests_carry_our_prompt_settings_and_key_at_the_set_rate(endpoint):
    rewriter, sleeps = _rewriter(endpoint.url, ApiKey(KEY), qps=4.0, concurrency=2, max_new_tokens=24)
    out = rewriter(_batch("a brown dog on the grass", "a red car near the sea", "a green lamp redirected"))
    assert out["rewrite_status"].to_pylist() == ["ok", "ok", "failed:http_error"]
    # The key goes to rewrite.url alone: a redirect is not followed.
    assert {(r["path"], r["auth"]) for r in endpoint.requests} == {("/v1/chat/completions", f"Bearer {KEY}")}
    # qps is the job's: each of the 2 actors starts at most 2 requests a second.
    assert sleeps == pytest.approx([0.5, 1.0], abs=0.1)
    body = hb.payload(rewriter.rewrite, [{"role": "user", "content": "x"}])
    assert body["model"] == "tiny-random" and body["max_tokens"] == 24 and body["temperature"] == 0.0
    assert body["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA


def test_the_key_never_goes_over_plain_http_to_another_machine(monkeypatch):
    key = ApiKey(KEY)
    assert KEY not in repr(key) and KEY not in str(key) and KEY not in repr({"key": key})
    plain = "http://10.0.0.7:8000/v1/chat/completions"
    with pytest.raises(ConfigError, match="rewrite.allow_insecure_http: rewrite.url is plain http") as err:
        _rewriter(plain, key)
    assert KEY not in str(err.value)
    _rewriter(plain, key, allow_insecure_http=True)  # said so, on purpose
    assert _rewriter("https://api.example.com/v1/chat/completions", key)[0].headers["Authorization"] == (
        f"Bearer {KEY}"
    )
    assert "Authorization" not in _rewriter(plain)[0].headers  # no key, nothing to leak
    # The driver reads the key from the environment and refuses before any stage is built.
    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = CurateConfig(rewrite=RewriteConfig(enabled=True, backend="http", url=plain, api_key_env=KEY_ENV))
    with pytest.raises(ConfigError, match="rewrite.allow_insecure_http"):
        hb.http_map_args(cfg)
    with pytest.raises(ConfigError, match="rewrite.request_timeout_s: must be > 0"):
        _rewriter("https://api.example.com/v1/chat/completions", request_timeout_s=0)
