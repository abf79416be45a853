"""The method written plainly for Ray Data: the peer `datajuicer-ray curate` is measured against.

DINO's last-layer [CLS] attention, averaged over heads, keeps the top half of each image's patches; the
model's classification head (where it has one) names the objects at probability >= 0.7. What a competent
Ray Data user writes, from the library's documented parts and nothing of this project:
``read_parquet`` -> one ``map_batches`` actor that decodes the JPEGs (Pillow: shorter side to 224, centre
crop) and runs the model with eager attention and ``output_attentions=True`` -> ``write_parquet``.
fp32 unless ``--dtype bf16`` (bf16 autocast): transformers' default is fp32, and so is a plain script's.

    python benchmarks/peer_raydata.py INPUT_DIR OUTPUT_DIR MODEL_DIR [--batch 64] [--dtype fp32]

Prints one JSON line: rows written, seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import ray

KEEP_RATIO = 0.5
MIN_CONFIDENCE = 0.7
SIZE = 224


class Scorer:
    """Decodes and scores a batch: key + jpg in, key + kept patch indices + objects out."""

    def __init__(self, model_dir: str, dtype: str):
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1): on a small machine the model would use one
        # core of several. The machine's cores, as a user who watched `top` would set.
        torch.set_num_threads(os.cpu_count() or 1)
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

    @staticmethod
    def view(data: bytes) -> np.ndarray:
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        s = SIZE / min(w, h)
        img = img.resize((max(SIZE, round(w * s)), max(SIZE, round(h * s))), Image.Resampling.BICUBIC)
        left, top = (img.width - SIZE) // 2, (img.height - SIZE) // 2
        return np.asarray(img.crop((left, top, left + SIZE, top + SIZE)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        views = np.stack([self.view(b) for b in batch["jpg"]])
        x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        amp = torch.autocast("cpu", dtype=self.amp, enabled=self.amp is not None)
        with torch.inference_mode(), amp:
            out = self.model(pixel_values=x, output_attentions=True)
        cls = out.attentions[-1][:, :, 0, 1:].float().mean(dim=1)  # [B, patches]
        k = round(KEEP_RATIO * cls.shape[1])
        kept = torch.topk(cls, k, dim=1).indices.sort(dim=1).values.numpy().astype(np.int16)
        objects = np.empty(len(views), dtype=object)  # one list of names per row
        objects[:] = [[] for _ in range(len(views))]
        if self.labels:
            probs = out.logits.float().softmax(-1)
            for i, p in enumerate(probs):
                top = torch.nonzero(p >= MIN_CONFIDENCE).flatten().tolist()
                objects[i] = [self.labels[j] for j in sorted(top, key=lambda j: -float(p[j]))]
        return {"key": batch["key"], "patch_index": kept, "objects": objects}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    began = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.read_parquet(args.input).select_columns(["key", "jpg"])
    ds = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"model_dir": args.model, "dtype": args.dtype},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=args.batch,
        batch_format="numpy",
    )
    ds.write_parquet(args.output)
    rows = pq.ParquetDataset(args.output).read(columns=["key"]).num_rows
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - began, 3)}))


if __name__ == "__main__":
    main()
