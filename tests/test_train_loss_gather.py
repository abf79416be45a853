"""The cross-worker loss of the training loop: two Ray Train workers (CPU, gloo), each with half of a global
batch, give the loss and the (DDP-averaged) gradients of one process on the whole batch.

This is what ``loop.make_loss`` (open_clip's ``ClipLoss`` with ``local_loss`` and ``gather_with_grad``) must get
right: each rank builds only its rows of the logit matrix against every rank's features, and the gradient has
to flow back through the gathered features of the other ranks. Gathering without the graph, or a loss over
the local rows only, gives other gradients, and training on N workers would not be training on the global
batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from datajuicer_ray.train.factory import create_model
from datajuicer_ray.train.kept_patches import KeptPatchCLIP
from datajuicer_ray.train.loop import make_loss

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

WORLD, LOCAL = 2, 3  # 6 rows in the global batch, 3 per worker


def tiny() -> dict:
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
    }


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, tokens and kept indices (different counts per row, as mass retention gives) of all ranks."""
    g = torch.Generator().manual_seed(7)
    images = torch.randn(WORLD * LOCAL, 3, 32, 32, generator=g)
    text = torch.randint(1, 1000, (WORLD * LOCAL, 8), generator=g)
    index = torch.tensor(
        [[0, 1, 2, 3], [1, 3, -1, -1], [2, -1, -1, -1], [0, 2, 3, -1], [3, 1, 0, 2], [1, -1, -1, -1]]
    )
    return images, text, index


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(config: dict) -> None:
    """One rank: its slice of the global batch through the DDP-wrapped model and the loop's loss."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    clip = create_model(tiny(), seed=0)
    model = ray.train.torch.prepare_model(KeptPatchCLIP(clip))  # DDP over gloo, as the loop does
    images, text, index = (t[rank * LOCAL : (rank + 1) * LOCAL] for t in global_batch())
    loss = make_loss(rank, world)(*model(images, text, index))
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    torch.save(
        {"local": float(loss), "mean": float(mean) / world, "grads": _gradients(clip)},
        Path(config["out"]) / f"rank{rank}.pt",
    )
    ray.train.report({"loss": float(loss)})


@pytest.fixture(scope="module")
def ray_two_cpus():
    """One small Ray for this module; a Ray already started by another module is reused as it is."""
    import ray
    import ray.cloudpickle

    # The workers cannot import this test module (tests/ is not a package on their path): ship its
    # functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def test_two_workers_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(ray_two_cpus, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    out = tmp_path / "ranks"
    out.mkdir()
    TorchTrainer(
        _worker,
        train_loop_config={"out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=WORLD, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="gather", storage_path=str(tmp_path / "runs")),
    ).fit()
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    clip = create_model(tiny(), seed=0)
    images, text, index = global_batch()
    loss = make_loss(0, 1)(*KeptPatchCLIP(clip)(images, text, index))
    loss.backward()
    expected = _gradients(clip)

    # Each rank's loss covers only its rows, so the two differ; their mean is the whole batch's loss.
    assert abs(ranks[0]["local"] - ranks[1]["local"]) > 1e-4
    assert ranks[0]["mean"] == pytest.approx(float(loss.detach()), abs=1e-5)
    for rank in ranks:  # DDP averaged the ranks' gradients: every rank holds the whole batch's gradient
        assert rank["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(rank["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
