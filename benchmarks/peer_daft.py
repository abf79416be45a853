"""The method written plainly for Daft (native runner): the peer `datajuicer-ray curate` is measured against.

DINO's last-layer [CLS] attention, averaged over heads, keeps the top half of each image's patches; the
model's classification head (where it has one) names the objects at probability >= 0.7. What a competent
Daft user writes, from Daft's documented parts and nothing of this project: ``read_parquet`` -> Daft's own
image decode and resize to 224 x 224 (Rust, off the GIL) -> one model instance in a ``@daft.cls`` class whose
``@daft.method.batch`` method runs the model with eager attention and ``output_attentions=True`` ->
``write_parquet``. fp32 unless ``--dtype bf16`` (bf16 autocast): transformers' default is fp32, and so is a
plain script's.

Runs in a venv of its own (Daft's pins are not the project's): ``benchmarks/bench_peers.py`` builds
``.venv-daft`` with the project venv's torch and transformers versions.

    [PEER_BATCH=64] .venv-daft/bin/python benchmarks/peer_daft.py INPUT_DIR OUTPUT_DIR MODEL_DIR [--dtype fp32]

The batch size is an environment variable because Daft takes it on the method's decorator, at import.

Prints one JSON line: rows written, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("DO_NOT_TRACK", "1")  # Daft's usage analytics: no network here

import daft  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from daft import DataType, col  # noqa: E402
from daft.functions import decode_image, resize  # noqa: E402

KEEP_RATIO = 0.5
MIN_CONFIDENCE = 0.7
SIZE = 224
BATCH = int(os.environ.get("PEER_BATCH", "64"))  # curate's default vision.batch_size
RESULT = DataType.struct(
    {"patch_index": DataType.list(DataType.int16()), "objects": DataType.list(DataType.string())}
)


@daft.cls(max_concurrency=1)  # one model instance
class Scorer:
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

    @daft.method.batch(return_dtype=RESULT, unnest=True, batch_size=BATCH)
    def score(self, images: daft.Series) -> pa.Array:
        torch = self.torch
        views = np.stack(images.to_pylist())
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
        return pa.array(
            [{"patch_index": list(r), "objects": o} for r, o in zip(kept.tolist(), objects)],
            RESULT.to_arrow_dtype(),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("model")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    began = time.perf_counter()
    daft.set_runner_native()
    scorer = Scorer(args.model, args.dtype)
    df = daft.read_parquet(os.path.join(args.input, "*.parquet")).select("key", "jpg")
    df = df.with_column("image", resize(decode_image(col("jpg"), mode="RGB"), SIZE, SIZE))
    df = df.select("key", scorer.score(col("image")))
    df.write_parquet(args.output)
    rows = pq.ParquetDataset(args.output).read(columns=["key"]).num_rows
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - began, 3)}))


if __name__ == "__main__":
    main()
