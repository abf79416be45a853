"""The run fingerprint covers everything that changes a row, and nothing that only changes speed."""

from __future__ import annotations

import copy

import datajuicer_ray.provenance as provenance
from datajuicer_ray.config import load_curate_config, to_dict
from datajuicer_ray.provenance import local_revision, run_fingerprint


def _cfg(*extra):
    return load_curate_config(None, ["input.path=/in", "output.path=/out", *extra])


MODELS = {
    "scorer": {"id": "facebook/dino-vits16", "revision": "abc123"},
    "classifier": None,
    "rewriter": {
        "model": "Qwen/Qwen2.5-1.5B-Instruct",
        "revision": None,
        "prompt_hash": "p1",
        "guard_version": "g1",
    },
}


def test_what_changes_a_row_changes_the_fingerprint(monkeypatch):
    base = run_fingerprint(_cfg(), MODELS)
    assert run_fingerprint(_cfg("vision.batch_size=7", "input.shard=1/4"), MODELS) == base  # speed, slicing
    assert run_fingerprint(_cfg("vision.keep_ratio=0.3"), MODELS) != base
    for path, value in [
        (("scorer", "revision"), "def456"),
        (("rewriter", "prompt_hash"), "p2"),
        (("rewriter", "guard_version"), "g2"),
        (("rewriter", "model"), "other/model"),
    ]:
        models = copy.deepcopy(MODELS)
        models[path[0]][path[1]] = value
        assert run_fingerprint(_cfg(), models) != base, path
    monkeypatch.setattr(provenance, "__version__", "9.9.9")
    assert run_fingerprint(_cfg(), MODELS) != base


def test_a_local_model_directory_has_a_revision_from_its_files(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    first = local_revision(str(tmp_path))
    assert first == local_revision(str(tmp_path)) and first.startswith("local-")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)  # other weights
    assert local_revision(str(tmp_path)) != first
    assert local_revision("facebook/dino-vits16") is None  # a hub id: its own revision is used


def test_a_conflict_names_only_the_settings_a_resume_must_match():
    old = to_dict(_cfg())
    new = to_dict(
        _cfg("vision.keep_ratio=0.3", "vision.max_actors=4", "input.shard=1/4", "ray.progress=false")
    )
    assert provenance.config_difference(old, new) == "vision.keep_ratio: 0.5 -> 0.3"
