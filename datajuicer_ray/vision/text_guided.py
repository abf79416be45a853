"""Caption-aware scoring (``vision.scorer=text_guided``): patches the caption talks about are kept even when
DINO's [CLS] attention is elsewhere.

The TRIPS / A-CLIP idea, done offline and once: an open_clip model embeds the caption and every patch of the
canonical view (its image tower's patch tokens, projected into the joint space); their cosine similarity,
negative values clipped, is a second map. Both maps are normalised to sum 1 on the G x G grid and blended,
``(1 - w) * attention + w * similarity`` with ``w = vision.text_guided.weight``; a row without a caption keeps
the attention map alone. Any open_clip model loads through one path: ``hf-hub:org/repo``, a registered name,
a local folder (``local-dir:``), or the built-in ``tiny-random-clip`` (seeded, saved as a local folder, for
tests and the dry run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datajuicer_ray.config import ConfigError

TINY_CLIP = "tiny-random-clip"
TINY_CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip(seed: int = 0) -> Path:
    """A small open_clip CLIP with seeded random weights, saved the way open_clip's ``local-dir:`` reads."""
    import open_clip

    from datajuicer_ray.cache import cache_dir

    target = cache_dir() / "models" / f"{TINY_CLIP}-v1-seed{seed}"
    if (target / "open_clip_pytorch_model.bin").exists():
        return target
    torch.manual_seed(seed)
    cfg = TINY_CLIP_CFG
    model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save(model.state_dict(), tmp / "open_clip_pytorch_model.bin")
    tmp.rename(target)
    return target


def resolve_clip(spec: str) -> str:
    """The name open_clip is given: built-in -> its local folder, a folder -> ``local-dir:``, else as is."""
    if spec == TINY_CLIP:
        return f"local-dir:{build_tiny_clip()}"
    if Path(spec).is_dir():
        return f"local-dir:{Path(spec).resolve()}"
    return spec


class TextGuide:
    """Patch-to-caption similarity maps from an open_clip model."""

    def __init__(self, spec: str, device: str):
        import open_clip

        name = resolve_clip(spec)
        try:
            model, _, _ = open_clip.create_model_and_transforms(name, device=device)
            self.tokenizer = open_clip.get_tokenizer(name)
        except Exception as err:  # noqa: BLE001 - any load failure is a config problem to the user
            raise ConfigError(f"vision.text_guided.model: cannot load {spec!r}: {err}") from err
        self.model = model.eval()
        self.device = device
        visual = model.visual
        self.size = int(visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=device).view(
            1, 3, 1, 1
        )
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, N, D]: the image tower's patch tokens in the joint space (after ln_post and the projection)."""
        visual = self.model.visual
        x = visual.transformer(visual._embeds(pixels))
        _, tokens = visual._pool(x)
        if visual.final_ln_after_pool:  # open_clip normalises only the pooled token then; do the tokens too
            tokens = visual.ln_post(tokens)
        return tokens @ visual.proj if visual.proj is not None else tokens

    @torch.inference_mode()
    def similarity(self, views: np.ndarray, captions: list[str | None]) -> list[np.ndarray | None]:
        """uint8 views [B, S, S, 3] -> per row a [g, g] map of clipped cosine similarity (None: no caption)."""
        x = torch.from_numpy(views).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True).clamp_(0, 1)
        tokens = F.normalize(self.patch_tokens((x - self.mean) / self.std).float(), dim=-1)
        have = [i for i, c in enumerate(captions) if c and c.strip()]
        out: list[np.ndarray | None] = [None] * len(captions)
        if not have:
            return out
        text = self.model.encode_text(
            self.tokenizer([captions[i] for i in have]).to(self.device), normalize=True
        )
        sims = torch.einsum("bnd,bd->bn", tokens[have], text.float()).clamp_(min=0)
        side = int(round(sims.shape[1] ** 0.5))
        for row, sim in zip(have, sims.reshape(-1, side, side).double().cpu().numpy()):
            out[row] = sim
        return out


def blend(attention: np.ndarray, similarity: np.ndarray | None, weight: float) -> np.ndarray:
    """``(1 - w) * attention + w * similarity``, each normalised to sum 1 first (same G x G grid)."""
    a = attention / attention.sum() if attention.sum() > 0 else attention
    if similarity is None or similarity.sum() <= 0:
        return a
    return (1.0 - weight) * a + weight * (similarity / similarity.sum())
