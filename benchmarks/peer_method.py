"""The method the peer scripts write plainly, shared so that the peers differ only in their framework.

DINO's last-layer [CLS] attention, averaged over heads, keeps the top half of each image's patches; the
model's classification head (where it has one) names the objects at probability >= 0.7. Eager attention
with ``output_attentions=True``, as transformers documents it; fp32 unless bf16 autocast is asked for.
Nothing of this project is used: a peer must stand on its own framework's parts.
"""

from __future__ import annotations

import numpy as np

KEEP_RATIO = 0.5
MIN_CONFIDENCE = 0.7
SIZE = 224


class PlainDino:
    """Canonical views (uint8 [B, SIZE, SIZE, 3]) -> kept patch indices (int16 [B, k]) and object names."""

    def __init__(self, model_dir: str, dtype: str):
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

        cfg = AutoConfig.from_pretrained(model_dir)
        head = any(a.endswith("ForImageClassification") for a in cfg.architectures or [])
        auto = AutoModelForImageClassification if head else AutoModel
        self.model = auto.from_pretrained(model_dir, attn_implementation="eager").eval()
        self.labels = cfg.id2label if head else {}
        proc = AutoImageProcessor.from_pretrained(model_dir)
        self.mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
        self.amp = torch.bfloat16 if dtype == "bf16" else None
        self.torch = torch

    def __call__(self, views: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
        torch = self.torch
        x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        amp = torch.autocast("cpu", dtype=self.amp, enabled=self.amp is not None)
        with torch.inference_mode(), amp:
            out = self.model(pixel_values=x, output_attentions=True)
        cls = out.attentions[-1][:, :, 0, 1:].float().mean(dim=1)  # [B, patches]
        k = round(KEEP_RATIO * cls.shape[1])
        kept = torch.topk(cls, k, dim=1).indices.sort(dim=1).values.numpy().astype(np.int16)
        objects: list[list[str]] = [[] for _ in range(len(views))]
        if self.labels:
            probs = out.logits.float().softmax(-1)
            for i, p in enumerate(probs):
                top = torch.nonzero(p >= MIN_CONFIDENCE).flatten().tolist()
                objects[i] = [self.labels[j] for j in sorted(top, key=lambda j: -float(p[j]))]
        return kept, objects
