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
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from datajuicer_ray.config import ConfigError
from datajuicer_ray.vision.geometry import Geometry


@dataclass(frozen=True)
class ModelSpec:
    """What the data pipeline and the loop need to know about the model, without building it."""

    image_size: int
    patch_size: int
    context_length: int
    mean: tuple[float, ...] = tuple(OPENAI_DATASET_MEAN)
    std: tuple[float, ...] = tuple(OPENAI_DATASET_STD)

    @property
    def geometry(self) -> Geometry:
        """The S and P the model sees: a curated table must have been made for the same."""
        return Geometry(self.image_size, self.patch_size)


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
    # Read through open_clip's own config classes, as open_clip.CLIP builds the towers: a key the config
    # leaves out takes open_clip's default (224 px, /16, 77 tokens), not one of ours that could drift.
    try:
        v, t = CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"])
    except TypeError as err:
        raise ConfigError(f"model.name: not an open_clip vision/text config ({err})") from None
    size = v.image_size
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ConfigError(f"model.name: image_size {tuple(size)} is not square; the patch grid is G x G")
        size = size[0]
    try:
        Geometry(int(size), int(v.patch_size))  # S must be a whole number of patches
    except ValueError as err:
        raise ConfigError(f"model.name: {err}") from None
    return ModelSpec(image_size=int(size), patch_size=int(v.patch_size), context_length=int(t.context_length))


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
