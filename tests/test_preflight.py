"""The preflight's look at inputs as people hold them: column types the reader cannot take are refused
before Ray, one line naming the column, its type and the fix; a Hugging Face image column passes; storage
settings that cannot work (a plain-http endpoint without AWS_ALLOW_HTTP, credentials in a URL) are named
without echoing a secret."""

from __future__ import annotations

import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datajuicer_ray.config import load_curate_config
from datajuicer_ray.preflight import input_problems
from tests.support.drills import curate_argv
from tests.support.exports import HF_IMAGE, hf_image_parquet
from tests.support.inputs import photo


def curate_cfg(inp, out, *extra: str):
    return load_curate_config(None, [f"input.path={inp}", f"output.path={out}", *extra])


def test_a_hugging_face_export_passes_with_its_image_struct_and_text_caption(tmp_path):
    hf_image_parquet(tmp_path / "in" / "train-00000.parquet", 3)
    cfg = curate_cfg(
        tmp_path / "in", tmp_path / "out", "input.columns.image=image", "input.columns.caption=text"
    )
    assert input_problems(cfg) == []


@pytest.mark.parametrize(
    ("column", "values", "kind", "key", "said"),
    [
        ("url", pa.array(["https://example.org/1.jpg"]), "image", "input.columns.image", "string: text"),
        (
            "image",
            pa.array([{"path": "1.jpg"}], pa.struct([("path", pa.string())])),
            "image",
            "input.columns.image",
            "struct<path: string>: a struct without a binary 'bytes' field",
        ),
        (
            "captions",
            pa.array([["a dog", "a brown dog"]]),
            "caption",
            "input.columns.caption",
            "list<element: string>: a list",
        ),
    ],
)
def test_a_column_of_a_type_the_reader_cannot_take_is_named_with_its_type(
    tmp_path, column, values, kind, key, said
):
    cols = {"jpg": pa.array([photo(1)]), "caption": pa.array(["a dog"]), column: values}
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table(cols), tmp_path / "in" / "0.parquet")
    cfg = curate_cfg(tmp_path / "in", tmp_path / "out", f"input.columns.{kind}={column}")
    (problem,) = input_problems(cfg)
    assert problem.where == key
    assert f"column {column!r} of {tmp_path / 'in' / '0.parquet'} is {said}" in problem.what
    assert problem.fix.startswith("set input.columns." + kind)


def test_the_cli_refuses_an_unreadable_image_column_before_ray_in_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table({"image": pa.array([{"path": "1.jpg"}] * 2, HF_IMAGE), "text": ["a", "b"]}),
        tmp_path / "in" / "0.parquet",
    )
    pq.write_table(
        pa.table({"url": ["https://example.org/1.jpg"], "text": ["a"]}), tmp_path / "in" / "1.parquet"
    )
    run = subprocess.run(
        curate_argv(
            tmp_path,
            [
                f"input.path={tmp_path / 'in'}",
                f"output.path={tmp_path / 'out'}",
                "input.columns.image=url",
                "input.columns.caption=text",
            ],
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    # One file lacks the column, the other holds it as text: both said, one line each, nothing else.
    assert len(lines) == 2 and all(line.startswith("error: input.columns.image: ") for line in lines), lines
    assert "column 'url' of " in lines[1] and " is string: text (a path or URL" in lines[1]
    assert "set input.columns.image to a column of encoded image bytes" in lines[1]
    assert "Started a local Ray instance" not in run.stdout + run.stderr
    assert not (tmp_path / "out").exists()


def test_a_plain_http_endpoint_needs_aws_allow_http(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: refused before asking
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    (problem,) = input_problems(curate_cfg("s3://laion/in", tmp_path / "out"))
    assert problem.where == "AWS_ENDPOINT_URL"
    assert problem.what == "http://127.0.0.1:9 is plain http" and "AWS_ALLOW_HTTP=true" in problem.fix


def test_credentials_in_an_input_url_are_refused_without_echoing_them(tmp_path):
    (problem,) = input_problems(curate_cfg("s3://AKIDEXAMPLE:s3cr3t-v4lue@laion/in", tmp_path / "out"))
    assert problem.where == "input.path"
    assert "s3://<credentials>@laion/in carries credentials" in problem.what
    assert "s3cr3t-v4lue" not in str(problem) and "AKIDEXAMPLE" not in str(problem)
