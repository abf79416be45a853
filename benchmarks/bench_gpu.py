"""GPU figures: scorer images/s per GPU with CPU vs GPU JPEG decode, GPU utilisation, vLLM captions/s.

Runs where ``torch.cuda.is_available()``; anywhere else every figure is reported as skipped (never an error),
so ``run_all.py`` stays runnable on a CPU machine.

- CPU decode: the pipeline's Decoder (Pillow, canonical view) on a thread pool of all cores, feeding
  ``PatchScorer.score`` on the GPU (bf16 autocast, the GPU default), batch by batch.
- GPU decode: ``torchvision.io.decode_jpeg(..., device="cuda")`` on the whole batch, then the canonical
  view on the device (shorter side to S, bicubic with antialias, centre crop), straight into the same
  model forward and [CLS]-attention probe. (Pillow's and torchvision's bicubic differ in the last bits: this
  measures throughput, the pipeline keeps the CPU decoder that defines the canonical view.)
- GPU utilisation: the GPU's busy share (NVML, or `nvidia-smi` where the NVML bindings are not installed),
  sampled every 0.1 s while a real `datajuicer-ray curate` run works through the images, once with CPU
  decode tasks (`vision.decode=cpu`) and once with the scorer actor decoding on its GPU (`vision.decode=gpu`).
- vLLM captions/s: the rewrite stage's own ray.data.llm processor (``apply_llm_processor``) over N rows,
  for the model named by $DATAJUICER_RAY_BENCH_LLM (a 0.5-1.5B instruct model; default
  Qwen/Qwen2.5-0.5B-Instruct, which needs the hub or a local copy); skipped when vLLM is not installed.

    python benchmarks/bench_gpu.py --quick   # N=512 images, 128 captions
    python benchmarks/bench_gpu.py           # N=4096 images, 1024 captions
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.common import bench_dir, main_for, photo_parquet, row, skipped, vit_s16_dir

BATCH = 128
FIGURES = {
    "cpu_decode": ("scorer images/s per GPU, CPU decode (Pillow, all cores)", "measured"),
    "gpu_decode": ("scorer images/s per GPU, GPU decode (torchvision.io.decode_jpeg on device) vs CPU decode", "measured"),
    "util": ("GPU utilisation of the scorer stage in `datajuicer-ray curate`, CPU decode tasks", ">= 0.8 busy"),
    "util_gpu": ("GPU utilisation of the scorer stage in `datajuicer-ray curate`, vision.decode=gpu", ">= 0.8 busy"),
    "vllm": ("vLLM captions/s (rewrite stage, ray.data.llm), 0.5-1.5B instruct model", "measured"),
}  # fmt: skip


def gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


def jpegs(n: int) -> list[bytes]:
    import pyarrow.parquet as pq

    folder = photo_parquet(n)
    return [
        b
        for f in sorted(folder.glob("*.parquet"))
        for b in pq.read_table(f, columns=["jpg"])["jpg"].to_pylist()
    ]


def scorer(batch: int):
    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.scorer import PatchScorer

    return PatchScorer(VisionConfig(model=str(vit_s16_dir()), device="cuda", dtype="auto", batch_size=batch))


def cpu_decode_rate(data: list[bytes], batch: int) -> float:
    import torch

    from datajuicer_ray.config import VisionConfig
    from datajuicer_ray.vision.decode import Decoder

    s = scorer(batch)
    decoder = Decoder(VisionConfig())

    def view(b: bytes) -> np.ndarray:
        return np.frombuffer(decoder.decode_one(b, "success", None)[2], np.uint8).reshape(224, 224, 3)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        s.score(np.stack(list(pool.map(view, data[:batch]))))  # warm-up
        torch.cuda.synchronize()
        began = time.perf_counter()
        for i in range(0, len(data), batch):
            s.score(np.stack(list(pool.map(view, data[i : i + batch]))))
        torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - began)


def gpu_views(data: list[bytes], size: int):
    """uint8 [B, 3, S, S] canonical views decoded and cropped on the GPU."""
    import torch
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    images = decode_jpeg(raw, mode=ImageReadMode.RGB, device="cuda")
    views = []
    for img in images:
        h, w = img.shape[-2:]
        scale = size / min(h, w)
        img = TF.resize(img, [max(size, round(h * scale)), max(size, round(w * scale))],
                        interpolation=TF.InterpolationMode.BICUBIC, antialias=True)  # fmt: skip
        views.append(TF.center_crop(img, [size, size]))
    return torch.stack(views)


def gpu_decode_rate(data: list[bytes], batch: int) -> float:
    import torch

    s = scorer(batch)
    lm = s.scorer
    mean = torch.tensor(lm.mean, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(lm.std, device="cuda").view(1, 3, 1, 1)

    def step(chunk: list[bytes]) -> None:
        x = gpu_views(chunk, s.size).float().div_(255.0)
        s._forward(lm, (x - mean) / std, s.size)
        s.probe.cls_attention()

    step(data[:batch])  # warm-up (nvjpeg handles, kernels)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for i in range(0, len(data), batch):
        step(data[i : i + batch])
    torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - began)


def _visible_gpu() -> str:
    """The physical index of the GPU this process sees first (NVML and nvidia-smi ignore
    CUDA_VISIBLE_DEVICES; a UUID there is passed on as it is)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"


class UtilSampler(threading.Thread):
    """The GPU's busy share every 0.1 s; keeps only samples after the GPU first became busy."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.stop = threading.Event()
        gpu = _visible_gpu()
        try:
            import pynvml  # nvidia-ml-py: in the GPU image (vLLM needs it), not in the CPU install

            pynvml.nvmlInit()
            handle = (
                pynvml.nvmlDeviceGetHandleByUUID(gpu)
                if gpu.startswith(("GPU-", "MIG-"))
                else pynvml.nvmlDeviceGetHandleByIndex(int(gpu))
            )
            self.read = lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
        except ImportError:
            query = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                f"--id={gpu}",
            ]
            self.read = lambda: int(subprocess.run(query, capture_output=True, text=True, check=True).stdout)

    def run(self) -> None:
        while not self.stop.is_set():
            u = self.read()
            if u > 0 or self.samples:
                self.samples.append(u)
            self.stop.wait(0.1)


def pipeline_utilisation(n: int, batch: int, decode: str) -> float:
    from benchmarks.bench_pipeline import curate_args

    out_dir = bench_dir() / f"gpu-out-{decode}"
    shutil.rmtree(out_dir, ignore_errors=True)
    args = curate_args(photo_parquet(n), out_dir, vit_s16_dir(), batch)
    args = [a for a in args if not a.startswith("ray.num_cpus")] + [
        "ray.num_cpus=0",
        f"vision.decode={decode}",
    ]
    sampler = UtilSampler()
    sampler.start()
    try:
        subprocess.run([sys.executable, "-m", "datajuicer_ray.cli", *args], check=True, capture_output=True)
    finally:
        sampler.stop.set()
        sampler.join()
    busy = sampler.samples
    while busy and busy[-1] == 0:  # the tail after the last batch (writing, shutdown)
        busy.pop()
    return float(np.mean(busy)) / 100 if busy else 0.0


def vllm_rate(n: int) -> float:
    import ray

    from datajuicer_ray.config import load_curate_config
    from datajuicer_ray.text.llm_processors import apply_llm_processor, llm_processor

    model = os.environ.get("DATAJUICER_RAY_BENCH_LLM", "Qwen/Qwen2.5-0.5B-Instruct")
    cfg = load_curate_config(
        None,
        ["input.path=unused", "output.path=unused", "rewrite.enabled=true", "rewrite.backend=vllm",
         f"rewrite.model={model}", "rewrite.batch_size=64"],
    )  # fmt: skip
    rows = [
        {"key": f"{i:09d}", "caption": f"photo {i} of a dog on a beach, sunny", "status": "ok",
         "objects": [{"label": "dog", "score": 0.9}]}
        for i in range(n)
    ]  # fmt: skip
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    began = time.perf_counter()
    count = apply_llm_processor(ray.data.from_items(rows), llm_processor(cfg)).materialize().count()
    return count / (time.perf_counter() - began)


def _guard(figure_key: str, fn) -> dict:
    """One figure: its row, or an error row; a failing figure never stops the others."""
    figure, target = FIGURES[figure_key]
    try:
        return fn(figure, target)
    except Exception as err:  # noqa: BLE001 - reported in the table instead
        return row(f"{figure} [error: {type(err).__name__}: {str(err)[:200]}]", None, None, target, False)


def run(quick: bool) -> list[dict]:
    why = gpu_reason()
    if why:
        return [skipped(f, t, why) for f, t in FIGURES.values()]
    import torch

    n, captions = (512, 128) if quick else (4096, 1024)
    data = jpegs(n)
    name = torch.cuda.get_device_name(0)
    rates: dict[str, float] = {}

    def cpu(figure, target):
        rates["cpu"] = cpu_decode_rate(data, BATCH)
        return row(
            f"{figure} [{name}, ViT-S/16 bf16, N={n}, batch {BATCH}]", rates["cpu"], None, target, None
        )

    def gpu(figure, target):
        rate = gpu_decode_rate(data, BATCH)
        return row(f"{figure} [{name}]", rate, rates.get("cpu"), target, None)

    def util(decode: str):
        def figure_row(figure, target):
            u = pipeline_utilisation(n, BATCH, decode)
            return row(f"{figure} [{name}, N={n}, mean of samples while busy]", u, 1.0, target, u >= 0.8)

        return figure_row

    def llm(figure, target):
        try:
            import vllm  # noqa: F401
        except ImportError:
            return skipped(figure, target, "vllm not installed")
        return row(f"{figure} [{name}, {captions} captions]", vllm_rate(captions), None, target, None)

    return [
        _guard("cpu_decode", cpu),
        _guard("gpu_decode", gpu),
        _guard("util", util("cpu")),
        _guard("util_gpu", util("gpu")),
        _guard("vllm", llm),
    ]


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
