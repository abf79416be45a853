"""An open_clip model and its tokenizer from ``model.name``: a registered name (ViT-B-16) or an inline config.

Training starts from scratch (no pretrained weights): the point is to train on the curated table. An inline
config is the dict open_clip keeps in its ``model_configs/*.json`` (``embed_dim``, ``vision_cfg``, ``text_cfg``),
which is how the dry run defines a tiny ViT and text tower without a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from datajuicer_ray.config import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """What the data pipeline and the loop need to know about the model, without building it."""

    image_size: int
    patch_size: int
    context_length: int
    mean: tuple[float, ...] = tuple(OPENAI_DATASET_MEAN)
    std: tuple[float, ...] = tuple(OPENAI_DATASET_STD)


def model_config(name: Any) -> dict:
    """The architecture dict for a name or an inline config (a copy, safe to mutate)."""
    if isinstance(name, dict):
        cfg = dict(name)
    else:
        cfg = open_clip.get_model_config(str(name))
        if cfg is None:
            raise ConfigError(
                f"model.name: {name!r} is not an open_clip model (e.g. ViT-B-16, ViT-S-16) or an inline config"
            )
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ConfigError(f"model.name: inline model config lacks {', '.join(missing)}")
    if cfg["vision_cfg"].get("timm_model_name") or cfg["text_cfg"].get("hf_model_name"):
        raise ConfigError("model.name: kept-patch training needs open_clip's own ViT and text transformer")
    return cfg


def spec(name: Any) -> ModelSpec:
    cfg = model_config(name)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return ModelSpec(
        image_size=int(v.get("image_size", 224)),
        patch_size=int(v.get("patch_size", 16)),
        context_length=int(t.get("context_length", 77)),
    )


def create_model(name: Any, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised CLIP (fp32 weights; mixed precision is autocast in the loop)."""
    cfg = model_config(name)
    torch.manual_seed(seed)
    if isinstance(name, dict):
        model = open_clip.CLIP(
            embed_dim=int(cfg["embed_dim"]),
            vision_cfg=dict(cfg["vision_cfg"]),
            text_cfg=dict(cfg["text_cfg"]),
            quick_gelu=bool(cfg.get("quick_gelu", False)),
        )
    else:
        model = open_clip.create_model(str(name), pretrained=None)
    return model


def tokenizer(name: Any):
    """open_clip's tokenizer for the model: the CLIP BPE (shipped with open_clip, no download)."""
    if isinstance(name, dict):
        return open_clip.SimpleTokenizer(context_length=spec(name).context_length)
    return open_clip.get_tokenizer(str(name))
