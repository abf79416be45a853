"""A user's mistakes with the CLI, as a table: each gives its one-line error and exit code before Ray starts,
and leaves every file outside the output as it was (issue 16).

The CLI runs in-process (``cli.main(argv)``); Ray must not start for any of these, so starting it fails the
case. Only Ctrl-C needs a real process (and a real Ray).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datajuicer_ray import cli, preflight
from datajuicer_ray.config import RewriteConfig, load_curate_config
from datajuicer_ray.io.reader import InputFile, read_file
from datajuicer_ray.io.table import OutputTable
from tests.support.inputs import img2dataset_parquet, photo, webdataset_tar
from tests.support.tables import write_table

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One folder holding every input, output and config the cases point at (built once: the cases only
    read it, which is what they check)."""
    w = tmp_path_factory.mktemp("world")
    img2dataset_parquet(w / "data" / "00000.parquet", 4)
    img2dataset_parquet(w / "data" / "00001.parquet", 4, start=10)
    (w / "sibling").mkdir()
    (w / "sibling" / "notes.txt").write_text("a user's file next to the input")
    for name, drop in (("nocap", "caption"), ("noimg", "jpg")):
        (w / name).mkdir()
        pq.write_table(
            pq.read_table(w / "data" / "00000.parquet").drop_columns([drop]), w / name / "a.parquet"
        )
    (w / "junk").mkdir()
    (w / "junk" / "urls.csv").write_text("url,caption\n")
    (w / "junk" / "_SUCCESS").write_text("")
    webdataset_tar(w / "wds" / "00000.tar", 3)
    with tarfile.open(w / "wds_nocap.tar", "w") as tar:  # an image and a .json without a caption
        for name, data in (("000.jpg", photo(0)), ("000.json", b'{"key": "000"}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (w / "file.txt").write_text("not a folder")
    (w / "locked").mkdir()
    (w / "spark").mkdir()  # someone's Spark output: curate must never delete it
    (w / "spark" / "part-00000-1f2e.snappy.parquet").write_bytes(b"PAR1 user data PAR1")
    from deltalake import write_deltalake

    write_deltalake(str(w / "their_delta"), pq.read_table(w / "data" / "00000.parquet").select(["key"]))
    run = {"config": {"input": {"columns": {"image": "jpg"}}}, "geometry": {"S": 224, "P": 16, "G": 14}}
    rejected = [
        {"key": f"k{i}", "caption": "c", "status": "decode_error", "rewrite_status": "disabled"}
        for i in range(3)
    ]
    write_table(w / "no_ok", [rejected], run)
    write_table(w / "table", [[{**rejected[0], "status": "ok"}]], run)
    (w / "empty.yaml").write_text("{}\n")
    (w / "bad.yaml").write_text("input:\n  path: data\n output: x\n")
    (w / "train.yaml").write_text("train: {steps: 2, batch_size: 2, num_workers: 1}\n")
    (w / "repo" / "jobs").mkdir(parents=True)  # what `submit` needs to find in its working dir
    (w / "repo" / "jobs" / "curate.py").write_text("")
    (w / "repo" / "conf").mkdir()
    (w / "repo" / "conf" / "c.yaml").write_text("input: {path: data/*.parquet}\noutput: {path: out/c}\n")
    (w / "locked" / "keep").write_text("")
    (w / "locked").chmod(0o555)
    return w


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with what would show a change (folders too: an added file moves their mtime)."""
    return {
        str(p.relative_to(root)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@dataclass
class Case:
    argv: str  # {w}: the world folder, {repo}: this repository, {port}: a port nobody answers at
    code: int
    words: tuple[str, ...]  # in stderr (stdout for exit 0)
    lines: int = 1  # error lines expected
    cwd: str = "."  # relative to the world
    absent: tuple[str, ...] = ("Traceback",)
    setup: str = ""  # "locked": the output's parent is not writable


CURATE = "curate {w}/empty.yaml vision.model=tiny-random-dino"
CASES = {
    # -- the harm the issue lists first: user files deleted, written into, read back as input
    "overwrite a folder of someone else's files": Case(
        CURATE + " input.path={w}/data output.path={w}/spark output.mode=overwrite",
        2,
        ("error: output.path:", "not empty and not a curated table", "part-00000-1f2e.snappy.parquet"),
    ),
    "overwrite a Delta table we did not create": Case(
        CURATE + " input.path={w}/data output.path={w}/their_delta output.mode=overwrite",
        2,
        ("error: output.path:", "Delta table that datajuicer_ray did not create"),
    ),
    "dry-run config with a real input.path": Case(
        "curate {repo}/conf/dry_run.yaml input.path={w}/data output.path={w}/out",
        2,
        ("error: input.path:", "built-in sample, not the files at", "input.format=parquet"),
    ),
    "output.path inside input.path": Case(
        CURATE + " input.path={w}/data output.path={w}/data/curated",
        2,
        ("error: output.path:", "is inside input.path", "outside the input folder"),
    ),
    "output.path equal to input.path": Case(
        CURATE + " input.path={w}/data output.path={w}/data",
        2,
        ("error: output.path:", "is input.path", "not empty and not a curated table"),
        lines=2,
    ),
    "output.path holding the input": Case(
        CURATE + " input.path={w}/data output.path={w}",
        2,
        ("error: output.path:", "holds input.path"),
        lines=2,
    ),
    # -- silently wrong output
    "no caption column": Case(
        CURATE + " input.path={w}/nocap output.path={w}/out",
        2,
        ("error: input.columns.caption:", "'caption' is not in", "input.columns.caption=null"),
    ),
    "no caption in a WebDataset shard": Case(
        CURATE + " input.path={w}/wds_nocap.tar input.format=webdataset output.path={w}/out",
        2,
        ("error: input.columns.caption:", "no .txt member or .json 'caption' key", "jpg, json"),
    ),
    "no image column": Case(
        CURATE + " input.path={w}/noimg output.path={w}/out",
        2,
        ("error: input.columns.image:", "'jpg' is not in", "caption, url", "set input.columns.image="),
    ),
    # -- late failures
    "http rewrite endpoint down": Case(
        CURATE + " input.path={w}/data output.path={w}/out rewrite.enabled=true rewrite.backend=http "
        "rewrite.model=tiny-random rewrite.url=http://127.0.0.1:{port}/v1/chat/completions",
        2,
        ("error: rewrite.url: http://127.0.0.1:", "did not answer", "start the endpoint"),
        absent=("Traceback", "Say OK", "photo number", "messages"),
    ),
    "train on a table with no ok row": Case(
        "train {w}/train.yaml data.path={w}/no_ok",
        2,
        ("error: data.path:", "no row with status ok", "3 decode_error", "datajuicer-ray inspect"),
        absent=("Traceback", "train.batch_size"),
    ),
    # -- success that did nothing
    "a shard that selects no file": Case(
        CURATE + " input.path={w}/data/00000.parquet output.path={w}/out input.shard=1/2",
        2,
        ("error: input.shard: 1/2 selects no file", "the input has 1 file"),
    ),
    "a glob that matches only non-data files": Case(
        CURATE + " input.path={w}/junk/* output.path={w}/out",
        2,
        ("error: input.path:", "not Parquet input", "urls.csv", "point input.path at the Parquet files"),
    ),
    "a folder with no file of the format": Case(
        CURATE + " input.path={w}/wds output.path={w}/out",
        2,
        ("error: input.path:", "matches no .parquet file", "00000.tar", "set input.format=webdataset"),
    ),
    "webdataset declared on a Parquet file": Case(
        CURATE + " input.path={w}/data/00000.parquet output.path={w}/out input.format=webdataset",
        2,
        ("error: input.path:", "is a Parquet file", "set input.format=parquet"),
    ),
    # -- inconsistent exits
    "YAML syntax error": Case(
        "curate {w}/bad.yaml", 2, ("error: ", "bad.yaml: line 3, column 2: YAML syntax error", "fix the file")
    ),
    "config file missing": Case(
        "curate {w}/nope.yaml",
        2,
        (
            "error: ",
            "nope.yaml: does not exist",
        ),
    ),
    "unknown key": Case(
        CURATE + " input.path={w}/data output.path={w}/out vision.keep_ration=0.3",
        2,
        ("error: vision.keep_ration: unknown key (did you mean vision.keep_ratio?)",),
    ),
    "missing input": Case(
        CURATE + " input.path={w}/nowhere output.path={w}/out", 2, ("error: input.path:", "does not exist")
    ),
    "output.path is a file": Case(
        CURATE + " input.path={w}/data output.path={w}/file.txt",
        2,
        ("error: output.path:", "is a file, not a folder"),
    ),
    "output.path under a file": Case(
        CURATE + " input.path={w}/data output.path={w}/file.txt/out", 2, ("error: output.path:", "is a file")
    ),
    "output.path not writable": Case(
        CURATE + " input.path={w}/data output.path={w}/locked/out",
        2,
        ("error: output.path:", "permission denied"),
        setup="locked",
    ),
    "every problem at once": Case(
        CURATE + " input.path={w}/nocap output.path={w}/file.txt input.columns.image=png",
        2,
        ("error: output.path:", "error: input.columns.image:", "error: input.columns.caption:"),
        lines=3,
    ),
    "submit to an address nobody answers at": Case(
        "submit curate conf/c.yaml --address http://127.0.0.1:{port}",
        2,
        ("error: --address: no Ray dashboard answers at http://127.0.0.1:", "port-forward", "RAY_ADDRESS"),
        cwd="repo",
    ),
    "submit a job whose output is inside its input": Case(
        "submit curate conf/c.yaml output.path=data/curated --dry-print",
        2,
        ("error: output.path: data/curated is inside input.path data/*.parquet",),
        cwd="repo",
    ),
    "inspect --out an existing folder": Case(
        "inspect {w}/table --out {w}/sibling", 2, ("error: --out:", "is a folder", "report.html")
    ),
    "inspect a folder that is no table": Case(
        "inspect {w}/sibling --out {w}/r.html", 2, ("no committed rows", "not a curated table")
    ),
    "no command": Case("", 2, ("error: datajuicer-ray: the following arguments are required",)),
    "unknown command": Case("curat x.yaml", 2, ("error: datajuicer-ray: argument command: invalid choice",)),
    "--version": Case("--version", 0, ("datajuicer_ray 0.2.0", "ray 2.", "torch "), lines=0),
    "submit's help names the default it uses": Case(
        "submit --help", 0, ("RAY_API_SERVER_ADDRESS", "$RAY_ADDRESS", "http://127.0.0.1:8265"), lines=0
    ),
}


def _no_ray(*_args, **_kwargs):
    raise AssertionError("Ray was started: this mistake should have been caught before")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_usage(name, world, monkeypatch, capsys):
    case = CASES[name]
    import datajuicer_ray.pipeline
    import datajuicer_ray.report.inspect
    import datajuicer_ray.train.job

    monkeypatch.setattr(datajuicer_ray.pipeline, "init_ray", _no_ray)
    monkeypatch.setattr(datajuicer_ray.train.job, "init_ray", _no_ray)
    monkeypatch.setattr(datajuicer_ray.report.inspect, "build_report", _no_ray)
    if case.setup == "locked" and os.geteuid() == 0:  # root writes anywhere: make the folder read-only to us
        real = os.access
        locked = str(world / "locked")
        monkeypatch.setattr(preflight.os, "access", lambda p, m: not str(p).startswith(locked) and real(p, m))
    monkeypatch.chdir(world / case.cwd)
    argv = case.argv.format(w=world, repo=REPO, port=free_port()).split()
    before = snapshot(world)
    t0 = time.time()
    code = cli.main(argv)
    elapsed = time.time() - t0
    out, err = capsys.readouterr()
    said = out if case.code == 0 else err
    assert code == case.code, err
    for words in case.words:
        assert words in said, said
    for words in case.absent:
        assert words not in out + err
    assert sum(line.startswith("error: ") for line in err.splitlines()) == case.lines, err
    assert snapshot(world) == before, "a file outside the output changed"
    assert elapsed < 30, f"took {elapsed:.0f} s"


def test_a_failed_run_is_one_line_and_exit_1_with_the_traceback_under_debug(world, monkeypatch, capsys):
    import datajuicer_ray.pipeline

    def boom(cfg):
        raise RuntimeError("the scorer actor died\nand a long story after")

    monkeypatch.setattr(datajuicer_ray.pipeline, "curate", boom)
    argv = [*CURATE.format(w=world).split(), f"input.path={world}/data", f"output.path={world}/out"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: the run failed: RuntimeError: the scorer actor died; see the log above, or run again with "
        "--debug for the traceback"
    ]
    assert cli.main([*argv[:3], "--debug", *argv[3:]]) == 1  # anywhere, even between overrides
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_what_the_preflight_lets_through(world, tmp_path):
    """No false alarms: the inputs our users have pass, and a caption-less input passes once it says so."""

    def problems(*overrides: str):
        cfg = load_curate_config(None, [f"output.path={tmp_path / 'out'}", *overrides])
        return preflight.curate_problems(cfg, OutputTable(cfg.output.path))

    assert problems(f"input.path={world}/data") == []
    assert problems(f"input.path={world}/data/*.parquet", "input.shard=1/2") == []
    assert problems(f"input.path={world}/wds", "input.format=webdataset") == []
    assert problems(f"input.path={world}/nocap", "input.columns.caption=null") == []
    assert (
        problems("input.format=sample") == []
    )  # the dry run: no input.path, the sample is built in the cache
    assert not (tmp_path / "out").exists()  # the preflight wrote nothing


def test_a_null_caption_column_reads_no_caption_from_a_shard(world):
    cfg = load_curate_config(None, ["input.path=x", "output.path=y", "input.columns.caption=null"])
    f = InputFile(str(world / "wds" / "00000.tar"), "w", "webdataset")
    rows = [t for t in read_file(f, cfg.input.columns, 8)]
    assert {c for t in rows for c in t.column("caption").to_pylist()} == {None}


def test_ctrl_c_exits_130_and_says_how_to_resume(world, tmp_path):
    inp = tmp_path / "in"
    for i in range(4):
        img2dataset_parquet(inp / f"{i:05d}.parquet", 4, start=10 * i)
    before = snapshot(inp)
    cmd = [
        sys.executable,
        "-m",
        "datajuicer_ray.cli",
        "curate",
        str(world / "empty.yaml"),
        f"input.path={inp}",
        f"output.path={tmp_path / 'out'}",
        "vision.model=tiny-random-dino",
        "vision.num_gpus=0",
        "ray.num_cpus=4",
        "ray.progress=false",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # the first progress line: Ray is up and the job is under way
            if line.startswith("[curate]"):
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    assert snapshot(inp) == before


class _Endpoint(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.headers.get("Authorization") == "Bearer good"
        body = json.dumps({"choices": [{"message": {"content": "OK"}}]} if ok else {"error": "no"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_endpoint_check_names_the_key_it_needs(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
        r = RewriteConfig(enabled=True, backend="http", url=url, api_key_env="DJ_TEST_KEY")
        monkeypatch.delenv("DJ_TEST_KEY", raising=False)
        (problem,) = preflight.endpoint_problems(r)
        assert (
            str(problem).startswith(f"rewrite.url: {url} answered HTTP 401") and "$DJ_TEST_KEY" in problem.fix
        )
        monkeypatch.setenv("DJ_TEST_KEY", "good")
        assert preflight.endpoint_problems(r) == []
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("url", "allow", "key", "refused"),
    [
        ("http://vllm-server:8000/v1/chat/completions", False, "s3cret", True),
        ("HTTP://10.0.0.7/v1/chat/completions", False, "s3cret", True),
        ("http://vllm-server:8000/v1/chat/completions", True, "s3cret", False),  # said so, on purpose
        ("http://vllm-server:8000/v1/chat/completions", False, None, False),  # no key to leak
        ("https://api.example.com/v1/chat/completions", False, "s3cret", False),
        # Loopback never leaves the machine: a local server or an SSH tunnel needs no opt-in.
        ("http://127.0.0.1:8000/v1/chat/completions", False, "s3cret", False),
        ("http://127.0.0.5:8000/v1/chat/completions", False, "s3cret", False),
        ("http://localhost:8000/v1/chat/completions", False, "s3cret", False),
        ("http://[::1]:8000/v1/chat/completions", False, "s3cret", False),
    ],
)
def test_an_api_key_never_goes_over_plain_http_to_another_machine(url, allow, key, refused, monkeypatch):
    import datajuicer_ray.text.endpoint as endpoint

    sent = []
    monkeypatch.setattr(endpoint, "endpoint_error", lambda r, timeout: sent.append(r.url))
    monkeypatch.delenv("DJ_TEST_KEY", raising=False)
    if key:
        monkeypatch.setenv("DJ_TEST_KEY", key)
    r = RewriteConfig(
        enabled=True, backend="http", url=url, api_key_env="DJ_TEST_KEY", allow_insecure_http=allow
    )
    problems = preflight.endpoint_problems(r)
    if refused:
        (problem,) = problems
        assert problem.where == "rewrite.allow_insecure_http" and "https://" in problem.fix
        assert key not in str(problem)
        assert sent == [], "the test request would have carried the key"
    else:
        assert problems == [] and sent == [url]


def test_the_cli_refuses_a_key_over_plain_http_before_any_work(world, monkeypatch, capsys):
    import datajuicer_ray.pipeline

    monkeypatch.setattr(datajuicer_ray.pipeline, "init_ray", _no_ray)
    monkeypatch.setenv("DJ_TEST_KEY", "s3cret")
    before = snapshot(world)
    code = cli.main(
        (
            CURATE + " input.path={w}/data output.path={w}/out rewrite.enabled=true rewrite.backend=http "
            "rewrite.model=tiny-random rewrite.url=http://10.0.0.7:8000/v1/chat/completions "
            "rewrite.api_key_env=DJ_TEST_KEY"
        )
        .format(w=world)
        .split()
    )
    err = capsys.readouterr().err
    assert code == 2 and "error: rewrite.allow_insecure_http: rewrite.url is plain http:// to 10.0.0.7" in err
    assert "s3cret" not in err and "Traceback" not in err
    assert snapshot(world) == before
