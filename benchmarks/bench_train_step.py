"""Training step time of ViT-B/16 CLIP with all patches vs kept patches (keep_ratio 0.5), same batch, this CPU.

One full optimizer step each time (forward, ClipLoss, backward, clip, AdamW), the two settings alternating so
machine load drifts hit both alike; median and spread over several reps. The FLOPs bound is computed for the
actual token counts (197 vs 1 + 98, [CLS] included) from the model's own widths and depths: attention and MLP
linear layers scale with tokens, attention scores with tokens squared; the patch embedding runs on the whole
image (the gather comes after it) and the text tower is untouched. Training costs ~3x the forward FLOPs in both
settings, so the bound on the speed-up is the ratio of forward FLOPs.

    python benchmarks/bench_train_step.py --quick     # batch 4, 5 reps each: under ~3 min on 2 cores
    python benchmarks/bench_train_step.py             # batch 16, 7 reps each
    python benchmarks/bench_train_step.py --stream --batch 16 --buffer 16 --rounds 3 --buckets 1,4
        # mass retention bucketed in the data stream (train/data.py length_bucketed) vs fixed retention
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from open_clip import ClipLoss

from datajuicer_ray.train.data import length_bucketed
from datajuicer_ray.train.factory import create_model, model_config
from datajuicer_ray.train.kept_patches import KeptPatchCLIP
from datajuicer_ray.train.schedule import make_optimizer

MODEL = "ViT-B-16"
REFERENCE_IMAGE_GFLOPS = 35.1  # open_clip's model profile, ViT-B-16 image tower at 224 px
REFERENCE_TEXT_GFLOPS = 6.0


def tower_gflops(width: int, layers: int, mlp_ratio: float, tokens: int) -> float:
    """Forward GFLOPs (2 per multiply-add) of a pre-norm transformer stack over ``tokens`` tokens."""
    linear = (4 + 2 * mlp_ratio) * width * width * tokens  # qkv + out projections + MLP, multiply-adds
    attention = 2 * width * tokens * tokens  # Q K^T and A V
    return 2 * layers * (linear + attention) / 1e9


def flops(kept: int | None) -> tuple[float, float]:
    """(image tower, text tower) forward GFLOPs; ``kept=None`` means every patch."""
    cfg = model_config(MODEL)
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    grid = v["image_size"] // v["patch_size"]
    patches = grid * grid
    tokens = 1 + (patches if kept is None else kept)
    patch_embed = 2 * patches * 3 * v["patch_size"] ** 2 * v["width"] / 1e9  # conv1 sees the whole image
    image = tower_gflops(v["width"], v["layers"], v.get("mlp_ratio", 4.0), tokens) + patch_embed
    text = tower_gflops(t["width"], t["layers"], t.get("mlp_ratio", 4.0), t["context_length"])
    return image, text


def _step(model, optimizer, loss_fn, images, text, index) -> float:
    began = time.perf_counter()
    image_f, text_f, scale = model(images, text, index)
    loss = loss_fn(image_f, text_f, scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return time.perf_counter() - began


def _alternate(batch: int, reps: int, make_index, buckets: int = 4) -> tuple[list[float], list[float]]:
    """Step times of one model on one batch with two kept-patch index tensors, alternated A B A B ...;
    ``make_index()`` returns (A, B), each a [batch, L] tensor or None (all patches)."""
    torch.manual_seed(0)
    model = KeptPatchCLIP(create_model(MODEL), buckets=buckets).train()
    optimizer = make_optimizer(model.clip, 5e-4, 0.2)
    loss_fn = ClipLoss()
    images = torch.randn(batch, 3, 224, 224)
    text = torch.randint(1, 49407, (batch, 77))
    sides = make_index()
    for index in sides:  # warm-up: allocator, first-call dispatch
        _step(model, optimizer, loss_fn, images, text, index)
    a, b = [], []
    for _ in range(reps):
        a.append(_step(model, optimizer, loss_fn, images, text, sides[0]))
        b.append(_step(model, optimizer, loss_fn, images, text, sides[1]))
    return a, b


def _kept(batch: int, counts: list[int]) -> torch.Tensor:
    """[batch, max(counts)] random kept indices, ascending, padded with -1."""
    index = torch.full((batch, max(counts)), -1, dtype=torch.long)
    for row, n in enumerate(counts):
        index[row, :n] = torch.randperm(196)[:n].sort().values
    return index


def measure(batch: int, reps: int, keep: int) -> tuple[list[float], list[float]]:
    """All patches against ``keep`` kept patches, same batch."""
    return _alternate(batch, reps, lambda: (None, _kept(batch, [keep] * batch)))


def measure_variable(
    batch: int, reps: int, keep: int, spread: float = 0.5, buckets: int = 4
) -> tuple[list[float], list[float]]:
    """Fixed retention (every row ``keep`` patches) against mass retention's varied counts with the same mean
    (uniform over keep*(1-spread)..keep*(1+spread), deterministic), same batch, alternated."""
    lo, hi = round(keep * (1 - spread)), round(keep * (1 + spread))
    counts = [round(lo + (hi - lo) * i / max(1, batch - 1)) for i in range(batch)]
    return _alternate(batch, reps, lambda: (_kept(batch, [keep] * batch), _kept(batch, counts)), buckets)


def mass_counts(rows: int, keep: int, spread: float = 0.5, seed: int = 0) -> list[int]:
    """``rows`` kept counts spread evenly over keep*(1-spread)..keep*(1+spread) (mean ``keep``), shuffled as
    the data stream would deliver them."""
    lo, hi = round(keep * (1 - spread)), round(keep * (1 + spread))
    counts = [round(lo + (hi - lo) * i / max(1, rows - 1)) for i in range(rows)]
    return [counts[i] for i in torch.randperm(rows, generator=torch.Generator().manual_seed(seed)).tolist()]


def stream_batches(batch: int, buffer: int, keep: int) -> list[torch.Tensor]:
    """The index tensors the training loop gets for one buffer of mass-retention rows: the real
    ``length_bucketed`` regrouping (similar counts per batch, trimmed to each batch's longest row)."""
    counts = mass_counts(batch * buffer, keep)
    index = _kept(len(counts), counts).numpy()
    out = length_bucketed([{"patch_index": index}], batch, buffer, seed=0)
    return [torch.from_numpy(b["patch_index"]) for b in out]


def measure_stream(
    batch: int, buffer: int, rounds: int, keep: int, buckets: int
) -> tuple[list[float], list[float], float]:
    """Per round: every batch of one stream-bucketed buffer of mass rows (mean ``keep``) against as many
    fixed-``keep`` batches, the two sides alternating which goes first. Returns the per-round totals (fixed,
    mass) and the padded tokens per row of the mass side."""
    torch.manual_seed(0)
    model = KeptPatchCLIP(create_model(MODEL), buckets=buckets).train()
    optimizer = make_optimizer(model.clip, 5e-4, 0.2)
    loss_fn = ClipLoss()
    images = torch.randn(batch, 3, 224, 224)
    text = torch.randint(1, 49407, (batch, 77))
    mass = stream_batches(batch, buffer, keep)
    fixed = [_kept(batch, [keep] * batch) for _ in mass]
    padded = statistics.mean(m.shape[1] for m in mass)
    for index in (fixed[0], mass[0], mass[-1]):  # warm-up: allocator, first-call dispatch
        _step(model, optimizer, loss_fn, images, text, index)
    t_fixed, t_mass = [], []
    for r in range(rounds):
        sides = [(t_fixed, fixed), (t_mass, mass)]
        for times, indices in sides if r % 2 == 0 else sides[::-1]:
            times.append(sum(_step(model, optimizer, loss_fn, images, text, i) for i in indices))
    return t_fixed, t_mass, padded


def _spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.2f} s, range {min(xs):.2f}-{max(xs):.2f} s over {len(xs)}"


def run(quick: bool) -> list[dict]:
    batch, reps, keep = (4, 5, 98) if quick else (16, 7, 98)
    img_all, txt = flops(None)
    img_kept, _ = flops(keep)
    bound = (img_all + txt) / (img_kept + txt)
    full, kept = measure(batch, reps, keep)
    t_full, t_kept = statistics.median(full), statistics.median(kept)
    speedup = t_full / t_kept
    rows = [
        {
            "figure": "image tower GFLOPs, all patches (197 tokens)",
            "ours": img_all,
            "reference": REFERENCE_IMAGE_GFLOPS,
            "target": "within 2% of open_clip's profile",
        },
        {
            "figure": "text tower GFLOPs (77 tokens)",
            "ours": txt,
            "reference": REFERENCE_TEXT_GFLOPS,
            "target": "within 2% of open_clip's profile",
        },
        {
            "figure": f"image tower GFLOPs, {keep} kept patches ({keep + 1} tokens)",
            "ours": img_kept,
            "reference": REFERENCE_IMAGE_GFLOPS / 2,
            "target": "about half the full tower (within 5%)",
        },
        {
            "figure": f"step time, all patches, batch {batch} ({_spread(full)})",
            "ours": t_full,
            "reference": None,
            "target": "measured",
        },
        {
            "figure": f"step time, keep_ratio 0.5, batch {batch} ({_spread(kept)})",
            "ours": t_kept,
            "reference": None,
            "target": "measured",
        },
        {
            "figure": "speed-up per step, kept vs all (reference: FLOPs bound, image+text)",
            "ours": speedup,
            "reference": bound,
            "target": ">= 0.8 of the FLOPs bound",
        },
    ]
    for r in rows:
        r["ratio"] = None if r["reference"] is None else r["ours"] / r["reference"]
    rows[0]["met"] = abs(rows[0]["ratio"] - 1) < 0.02
    rows[1]["met"] = abs(rows[1]["ratio"] - 1) < 0.02
    rows[2]["met"] = abs(rows[2]["ratio"] - 1) < 0.05
    rows[3]["met"] = rows[4]["met"] = True
    rows[5]["met"] = rows[5]["ratio"] >= 0.8
    fixed, varied = measure_variable(batch, reps, keep)
    ratio = statistics.median([f / v for f, v in zip(fixed, varied)])  # per alternated round
    rows.append(
        {
            "figure": f"step rate, mass retention (kept {round(keep * 0.5)}-{round(keep * 1.5)}, mean {keep}, "
            f"bucketed) vs fixed {keep}, batch {batch} (fixed {_spread(fixed)}; mass {_spread(varied)})",
            "ours": statistics.median(fixed) / statistics.median(varied),
            "reference": 1.0,
            "ratio": ratio,
            "target": ">= 0.9 of fixed retention's rate",
            "met": ratio >= 0.9,
        }
    )
    return rows


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batch, few reps (under ~3 min)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    ap.add_argument(
        "--buckets",
        default=None,
        help="only the mass-vs-fixed step rate, at these bucket counts (e.g. 1,2,4,8) and --batch",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument(
        "--stream",
        action="store_true",
        help="mass rows bucketed in the data stream (data.bucket_buffer) vs fixed; --buckets: in-model buckets",
    )
    ap.add_argument("--buffer", type=int, default=16, help="--stream: batches per bucketing buffer")
    ap.add_argument("--rounds", type=int, default=3, help="--stream: alternated rounds")
    args = ap.parse_args()
    if args.stream:
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {MODEL}, {os.getloadavg()=}"
        )
        for buckets in (int(b) for b in (args.buckets or "1").split(",")):
            fixed, mass, padded = measure_stream(args.batch, args.buffer, args.rounds, 98, buckets)
            ratios = [f / m for f, m in zip(fixed, mass)]  # rate mass / rate fixed, per alternated round
            print(
                f"STREAM batch {args.batch} buffer {args.buffer} in-model buckets {buckets}: "
                f"fixed 98 tokens {_spread(fixed)}; mass 49-147 (mean 98, padded to {padded:.1f}) "
                f"{_spread(mass)}; RATIO mass/fixed rate median {statistics.median(ratios):.3f} "
                f"(range {min(ratios):.3f}-{max(ratios):.3f}, n={len(ratios)}) [target >= 0.9: "
                f"{'met' if statistics.median(ratios) >= 0.9 else 'NOT met'}]",
                flush=True,
            )
        return
    if args.buckets:
        for buckets in (int(b) for b in args.buckets.split(",")):
            fixed, varied = measure_variable(args.batch, args.reps, 98, buckets=buckets)
            ratio = statistics.median([f / v for f, v in zip(fixed, varied)])
            print(
                f"batch {args.batch}, {buckets} buckets: fixed {_spread(fixed)}; mass {_spread(varied)}; rate {ratio:.3f}"
            )
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {MODEL}")
    rows = run(args.quick)
    for r in rows:
        print(
            f"{r['figure']:<88} ours {_fmt(r['ours']):>8}  ref {_fmt(r['reference']):>8}  "
            f"ratio {_fmt(r['ratio']):>6}  [{r['target']}: {'met' if r['met'] else 'NOT met'}]"
        )
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
