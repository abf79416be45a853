"""Evaluation: image-text retrieval on held-out curated rows, zero-shot classification on a labelled set.

Full images (all patches) by default, as FLIP found masking at inference hurts; ``eval.kept_patches=true``
feeds the kept patches instead (retrieval only: a labelled set has no patch indices).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from open_clip import (
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_IMAGENET_TEMPLATES,
    build_zero_shot_classifier,
)

from datajuicer_ray.config import ConfigError
from datajuicer_ray.train.kept_patches import encode_image_kept
from datajuicer_ray.vision.decode import canonical_pixels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float, scaled by the model's mean and std."""
    return (images.float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def recall_at_k(similarity: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Query i's match is item i. Returns R@k for each k (the fraction of queries whose match ranks < k)."""
    n = similarity.shape[0]
    target = similarity.diagonal().unsqueeze(1)
    rank = (similarity > target).sum(dim=1)  # ties count in the query's favour
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks if n > 0}


def retrieval(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, float]:
    """Image->text and text->image R@1/5/10 on paired, normalised features."""
    sim = image_features.float() @ text_features.float().T
    out = {f"i2t_{k}": v for k, v in recall_at_k(sim).items()}
    out.update({f"t2i_{k}": v for k, v in recall_at_k(sim.T).items()})
    out["pairs"] = int(sim.shape[0])
    return out


@torch.no_grad()
def retrieval_on_batches(
    clip: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    kept_patches: bool,
) -> dict[str, float]:
    was_training = clip.training
    clip.eval()
    img, txt = [], []
    for b in batches:
        images = normalise(b["image"].to(device), mean, std)
        index = b["patch_index"].to(device) if kept_patches else None
        img.append(encode_image_kept(clip, images, index))
        txt.append(clip.encode_text(b["text"].to(device), normalize=True))
    clip.train(was_training)
    if not img:
        return {"pairs": 0}
    return retrieval(torch.cat(img), torch.cat(txt))


# ----------------------------------------------------------------------------------------------
# zero-shot


def load_labelled(
    path: str, image_column: str = "jpg", label_column: str = "label"
) -> tuple[list, list[str]]:
    """A labelled set: a folder with one sub-folder per class, or a Parquet table (image bytes, label).

    Returns ([(encoded image bytes or file path, class id)], class names). Sub-folders named by ImageNet
    synsets (n01440764, ... 1000 of them) get IMAGENET_CLASSNAMES; other folder names are used as class names.
    A table's label is a class name or an index into IMAGENET_CLASSNAMES.
    """
    p = Path(path)
    if p.is_dir() and any(c.is_dir() for c in p.iterdir()):
        return _labelled_folder(p)
    if p.suffix == ".parquet" or p.is_dir():
        return _labelled_table(path, image_column, label_column)
    raise ConfigError(
        f"eval.zero_shot_path: {path!r} is neither a class-per-folder directory nor a Parquet table"
    )


def _labelled_folder(root: Path) -> tuple[list, list[str]]:
    classes = sorted(c.name for c in root.iterdir() if c.is_dir())
    if len(classes) == len(IMAGENET_CLASSNAMES) and all(
        c.startswith("n") and c[1:].isdigit() for c in classes
    ):
        names = list(IMAGENET_CLASSNAMES)  # sorted synsets are ImageNet's class order
    else:
        names = [c.replace("_", " ") for c in classes]
    items = [
        (str(f), label)
        for label, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise ConfigError(f"eval.zero_shot_path: no images under {root}")
    return items, names


def _labelled_table(path: str, image_column: str, label_column: str) -> tuple[list, list[str]]:
    table = pq.read_table(path, columns=[image_column, label_column])
    labels = table.column(label_column).to_pylist()
    if all(isinstance(v, int) for v in labels):
        names = list(IMAGENET_CLASSNAMES)
        ids = labels
    else:
        names = sorted({str(v) for v in labels})
        ids = [names.index(str(v)) for v in labels]
    return list(zip(table.column(image_column).to_pylist(), ids, strict=True)), names


def _read(item: Any) -> bytes:
    return Path(item).read_bytes() if isinstance(item, str) else item


@torch.no_grad()
def zero_shot(
    clip: torch.nn.Module,
    tokenizer: Any,
    path: str,
    size: int,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 64,
    templates: str = "simple",
) -> dict[str, float]:
    """Top-1/top-5 accuracy of the zero-shot classifier open_clip builds from class names and templates."""
    items, names = load_labelled(path)
    tmpl = SIMPLE_IMAGENET_TEMPLATES if templates == "simple" else OPENAI_IMAGENET_TEMPLATES
    was_training = clip.training
    clip.eval()
    classifier = build_zero_shot_classifier(
        clip, tokenizer, names, tmpl, num_classes_per_batch=10, device=device
    )
    top1 = top5 = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        pixels = np.stack([canonical_pixels(_read(x), size).transpose(2, 0, 1) for x, _ in chunk])
        images = normalise(torch.from_numpy(pixels).to(device), mean, std)
        logits = clip.encode_image(images, normalize=True) @ classifier
        target = torch.tensor([y for _, y in chunk], device=device)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        top1 += int((top[:, 0] == target).sum())
        top5 += int((top == target[:, None]).any(dim=1).sum())
    clip.train(was_training)
    n = len(items)
    return {
        "zero_shot_top1": top1 / n,
        "zero_shot_top5": top5 / n,
        "zero_shot_images": n,
        "classes": len(names),
    }
