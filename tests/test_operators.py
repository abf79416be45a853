"""The operator list: its columns chain from the reader to the contract, and the capacity check sums what
its operators hold, for every backend (no pipeline runs here; the vLLM case builds its processor)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from datajuicer_ray.config import ConfigError, load_curate_config
from datajuicer_ray.io import columns as c
from datajuicer_ray.io.location import Location
from datajuicer_ray.operators import ColumnChainError, check_columns
from datajuicer_ray.pipeline import check_capacity
from datajuicer_ray.plan import operators

CONTRACT = Path(__file__).resolve().parents[1] / "docs" / "contract.md"


def contract_columns(image_column: str) -> set[str]:
    """The column names of docs/contract.md's output table (the image column under its input name)."""
    text = CONTRACT.read_text().split("| column | type | meaning |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for line in text.splitlines()[2:]:
        first = line.split("|")[1].strip()
        names |= {image_column} if first == "image column" else set(re.findall(r"`([^`]+)`", first))
    return names


def ops_for(tmp_path, *overrides: str, num_gpus: float = 0.0, image_column: str | None = "jpg"):
    cfg = load_curate_config(
        None,
        [f"input.path={tmp_path / 'in'}", f"output.path={tmp_path / 'out'}", "vision.model=tiny-random-dino"]
        + list(overrides),
    )
    return operators(cfg, [], image_column, "run-x", num_gpus, Location.of(str(tmp_path / "out")))


CASES = {
    "vision only": ((), {}),
    "transformers rewrite": (("rewrite.enabled=true", "rewrite.model=tiny-random"), {}),
    "decoded on the device": (("vision.decode=gpu",), {"num_gpus": 1.0}),
    "caption-guided scorer": (("vision.scorer=text_guided",), {}),
    "rewrite only": (("rewrite.enabled=true", "rewrite.only=true", "rewrite.model=tiny-random"), {}),
    "no image kept": (("output.keep_image=false",), {"image_column": None}),
}


@pytest.mark.parametrize("case", CASES)
def test_the_columns_chain_from_the_reader_to_the_contract(tmp_path, case):
    overrides, kwargs = CASES[case]
    ops = ops_for(tmp_path, *overrides, **kwargs)
    have = check_columns(ops)
    image = kwargs.get("image_column", "jpg")
    expected = contract_columns(image or "jpg") - ({"jpg"} if image is None else set())
    assert have == expected
    assert not {col for col in have if col.startswith("_")}  # nothing internal reaches the table


def test_a_read_nobody_wrote_fails_naming_the_stage_and_the_column(tmp_path):
    read, decode, *rest = ops_for(tmp_path)
    assert decode.name == "decode" and c.UPSTREAM_ERROR_COL in decode.reads
    reader_without = dataclasses.replace(
        read, writes=tuple(w for w in read.writes if w != c.UPSTREAM_ERROR_COL)
    )
    with pytest.raises(ColumnChainError, match=rf"stage 'decode' reads {c.UPSTREAM_ERROR_COL}, which no"):
        check_columns([reader_without, decode, *rest])
    # a stage that stops writing a column breaks the stage after it
    decode_without = dataclasses.replace(decode, writes=tuple(w for w in decode.writes if w != c.PIXELS_COL))
    with pytest.raises(ColumnChainError, match=rf"stage 'score' reads {c.PIXELS_COL}"):
        check_columns([read, decode_without, *rest])
    # and a column a stage drops is gone for the stages after it
    read_dropping = dataclasses.replace(read, writes=(*read.writes, "extra"))
    score_reading = dataclasses.replace(rest[0], reads=(*rest[0].reads, c.UPSTREAM_STATUS_COL))
    with pytest.raises(ColumnChainError, match=rf"stage 'score' reads {c.UPSTREAM_STATUS_COL}"):
        check_columns([read_dropping, decode, score_reading, *rest[1:]])


def test_the_capacity_check_sums_what_the_operators_hold(ray_local, tmp_path):
    ops = ops_for(tmp_path, "vision.num_cpus=3", "rewrite.enabled=true", "rewrite.num_cpus=1")
    # read 0.25 + decode 1 + scorer 3 + rewriter 1 + write 0.25
    assert sum(op.holds.cpus for op in ops) == 5.5
    with pytest.raises(
        ConfigError, match=r"ray.num_cpus: the pipeline holds 5.5 CPUs at once .* but Ray has 4"
    ):
        check_capacity(ops, "local")
    check_capacity(ops, "cluster")  # an autoscaling cluster may still grow: a warning, not an error
    check_capacity(ops_for(tmp_path), "local")
    # decoding on the device: no decode operator, so its CPUs are not counted
    on_device = ops_for(tmp_path, "vision.decode=gpu", num_gpus=1.0)
    assert [op.name for op in on_device] == ["read", "score", "write"]
    assert sum(op.holds.gpus for op in on_device) == 1.0


def test_a_vllm_rewriter_on_cpu_counts_the_engine_and_its_row_tasks(ray_local, tmp_path):
    """The vLLM processor holds its engine's CPU bundle for the whole run, beside the scorer: on the test
    Ray's 4 CPUs that no longer fits, which the check says before anything runs (read off the built
    processor's own stages, so a change to its config is counted as it will run)."""
    ops = ops_for(tmp_path, "rewrite.enabled=true", "rewrite.backend=vllm", "rewrite.model=tiny-random")
    rewrite = next(op for op in ops if op.name == "rewrite")
    rest = sum(op.holds.cpus for op in ops if op is not rewrite)
    assert rest == 2.5 <= 4  # read, decode, scorer, write: what the check counted before
    # the engine's bundle (rewrite.num_cpus=1) and its preprocess, postprocess and finalize tasks
    assert rewrite.holds.cpus == pytest.approx(1 + 3 * 0.25)
    with pytest.raises(
        ConfigError, match=r"rewrite \(the vLLM engine and its row tasks\)=1.75.* but Ray has 4"
    ):
        check_capacity(ops, "local")
    assert check_columns(ops) >= set(c.REWRITE_COLUMNS)
