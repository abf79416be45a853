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
import peer_method  # beside this script: the method both peers share
import pyarrow.parquet as pq
import ray
from peer_method import SIZE, PlainDino


class Scorer:
    """Decodes and scores a batch: key + jpg in, key + kept patch indices + objects out."""

    def __init__(self, model_dir: str, dtype: str):
        import torch

        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1): on a small machine the model would use one
        # core of several. The machine's cores, as a user who watched `top` would set.
        torch.set_num_threads(os.cpu_count() or 1)
        self.method = PlainDino(model_dir, dtype)

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
        kept, names = self.method(np.stack([self.view(b) for b in batch["jpg"]]))
        objects = np.empty(len(names), dtype=object)  # one list of names per row
        objects[:] = names
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
    ray.cloudpickle.register_pickle_by_value(peer_method)  # the workers get the method with the actor
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
