"""The ray.data.llm backends: vLLM and HTTP processor configs from our config, their prompt rows, and the
HTTP path end to end through Ray Data against an OpenAI-compatible server started here on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from datajuicer_ray.config import CurateConfig, RewriteConfig
from datajuicer_ray.io.schema import OBJECT_TYPE
from datajuicer_ray.text import llm_processors as lp
from datajuicer_ray.text.http_backend import HTTP_ATTEMPTS
from datajuicer_ray.text.prompt import ANSWER_SCHEMA, PROMPT_VERSION, prompt_hash
from datajuicer_ray.text.stage import add_rewrite_stage, rewrite_run_info


def _answer(user: str) -> tuple[int, dict]:
    """Deterministic chat completions: the caption tidied (or the first object named) as the JSON answer
    asked for, or a scripted misbehaviour."""
    fenced = json.loads(user)
    caption = fenced["caption"]
    if "SERVER_ERROR" in caption:
        return 500, {"error": {"message": "boom", "type": "server_error"}}
    if "REFUSE" in caption:
        text, finish = json.dumps({"caption": "I'm sorry, but I cannot help with that."}), "stop"
    elif "RAMBLE" in caption:
        text, finish = '{"caption": "A dog and a dog and a dog and', "length"
    elif "NOJSON" in caption:
        text, finish = "A dog.", "stop"
    else:
        body = caption.rstrip("!. ") or "a " + fenced["objects"][0]["label"]
        text, finish = json.dumps({"caption": body[0].upper() + body[1:] + "."}), "stop"
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    return 200, {
        "id": "x",
        "object": "chat.completion",
        "choices": [choice],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 0},
    }


class _ChatServer(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **payload})
        code, body = _answer(payload["messages"][-1]["content"])
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    _ChatServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions", _ChatServer.requests
    server.shutdown()
    server.server_close()


def _collect(ray, ds) -> pa.Table:
    # promote: a block whose test-only expectation column is all null comes back typed null.
    return pa.concat_tables([t for t in ray.get(ds.to_arrow_refs()) if t.num_rows], promote_options="default")


def _cfg(**rewrite) -> CurateConfig:
    return CurateConfig(rewrite=RewriteConfig(enabled=True, **rewrite))


def _rows() -> pa.Table:
    dog = [{"label": "Border collie", "score": 0.9}]
    rows = [
        # key, caption, objects, status, expected rewrite_status, expected rewrite, expected candidate
        ("k0", "a dog n a frisbe at park!!", dog, "ok", "ok", "A dog n a frisbe at park.", None),
        ("k1", None, [{"label": "goldfish", "score": 0.95}], "ok", "ok", "A goldfish.", None),
        ("k2", "   ", None, "ok", "skipped:no_caption", None, None),
        ("k3", "a cat", None, "decode_error", "skipped:decode_error", None, None),
        ("k4", "dog SERVER_ERROR", dog, "ok", "failed:http_error", None, None),
        ("k5", "dog REFUSE", dog, "ok", "rejected:refusal", None, "I'm sorry, but I cannot help with that."),
        (
            "k6",
            "dog RAMBLE",
            dog,
            "ok",
            "rejected:truncated",
            None,
            '{"caption": "A dog and a dog and a dog and',
        ),
        ("k7", "a red car\x00 by the sea<|im_end|> <eos>", [], "ok", "ok", "A red car by the sea.", None),
        ("k8", "dog NOJSON", dog, "ok", "failed:unparsable", None, "A dog."),
    ]
    n = len(rows)
    return pa.table(
        {
            "key": [r[0] for r in rows],
            "jpg": pa.array([f"img{i}".encode() for i in range(n)], pa.binary()),
            "caption": pa.array([r[1] for r in rows], pa.string()),
            "objects": pa.array([r[2] for r in rows], pa.list_(OBJECT_TYPE)),
            "status": [r[3] for r in rows],
            "patch_grid": pa.array([14] * n, pa.int16()),
            "patch_index": pa.array([[0, 5, 195]] * n, pa.list_(pa.int16())),
            "error": pa.array([None] * n, pa.string()),
            "_row": pa.array(range(n), pa.int64()),
            "expected_status": [r[4] for r in rows],
            "expected_text": pa.array([r[5] for r in rows], pa.string()),
            "expected_candidate": pa.array([r[6] for r in rows], pa.string()),
        }
    )


def test_vllm_config_comes_from_our_config():
    cfg = _cfg(
        backend="vllm",
        model="Qwen/Qwen2.5-1.5B-Instruct",
        max_model_len=1024,
        gpu_memory_utilization=0.6,
        tensor_parallel_size=2,
        concurrency=3,
        batch_size=24,
        revision="abc123",
    )
    config = lp.vllm_config(cfg, lp.EngineDevice("gpu", "auto", "test"))
    assert config.model_source == "Qwen/Qwen2.5-1.5B-Instruct"
    assert config.engine_kwargs["max_model_len"] == 1024
    assert config.engine_kwargs["gpu_memory_utilization"] == 0.6
    assert config.engine_kwargs["tensor_parallel_size"] == 2
    # The revision reaches the engine's weights and its tokenizer (our preprocess loads it at the same one).
    assert config.engine_kwargs["revision"] == config.engine_kwargs["tokenizer_revision"] == "abc123"
    assert config.engine_kwargs["enable_prefix_caching"] is True
    # GPUs: Ray's default bundles (a GPU per worker), the checkpoint's dtype, the KV cache left to
    # gpu_memory_utilization.
    assert config.placement_group_config is None
    assert not {"dtype", "enforce_eager", "kv_cache_memory_bytes"} & set(config.engine_kwargs)
    assert (config.batch_size, config.concurrency, config.should_continue_on_error) == (24, 3, True)
    assert config.detokenize_stage is False  # the engine's own text; no stage that skipped rows can break


def test_vllm_on_a_cpu_holds_cpus_and_sizes_its_kv_cache_from_the_config():
    cfg = _cfg(backend="vllm", model="tiny-random", batch_size=8, max_model_len=512, num_cpus=2)
    config = lp.vllm_config(cfg, lp.EngineDevice("cpu", "bfloat16", "test"))
    [bundle] = config.placement_group_config["bundles"]
    assert bundle["CPU"] == 2.0 and not bundle.get("GPU")  # Ray's default bundle asks for a GPU
    kwargs = config.engine_kwargs
    assert (kwargs["dtype"], kwargs["enforce_eager"]) == ("bfloat16", True)
    assert "gpu_memory_utilization" not in kwargs  # on a CPU it would reserve that share of the RAM
    # tiny-random: 2 layers x 2 KV heads x 16 dims, keys and values, 2 bytes: 256 B a token; 8 x 512 tokens.
    assert kwargs["kv_cache_memory_bytes"] == 8 * 512 * 256 == 2**20
    fp32 = lp.vllm_config(cfg, lp.EngineDevice("cpu", "float32", "test")).engine_kwargs
    assert (fp32["dtype"], fp32["kv_cache_memory_bytes"]) == ("float32", 2 * 2**20)
    cfg.rewrite.kv_cache_gib = 0.5
    assert (
        lp.vllm_config(cfg, lp.EngineDevice("cpu", "bfloat16", "test")).engine_kwargs["kv_cache_memory_bytes"]
        == 2**29
    )


def test_the_engine_device_is_found_on_the_cluster(ray_local, monkeypatch):
    import datajuicer_ray.runtime as runtime
    import datajuicer_ray.vision.precision as precision

    found = lp.engine_device()  # the test's local Ray has no GPU
    assert found.kind == "cpu" and found.dtype == ("bfloat16" if precision.cpu_native_bf16() else "float32")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: None)  # a CPU without bf16 arithmetic
    assert (lp.engine_device().kind, lp.engine_device().dtype) == ("cpu", "float32")
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: "amx_bf16")
    assert (lp.engine_device().kind, lp.engine_device().dtype) == ("cpu", "bfloat16")
    monkeypatch.setattr(runtime, "gpus_available_or_scalable", lambda: True)
    assert (lp.engine_device().kind, lp.engine_device().dtype) == ("gpu", "auto")


def test_vllm_prompt_rows():
    r = _cfg(backend="vllm", model="tiny-random", max_new_tokens=40).rewrite
    row = {
        "key": "k",
        "caption": "a dog n a frisbe",
        "status": "ok",
        "jpg": b"x",
        "objects": [{"label": "frisbee", "score": 0.8}],
    }
    out = lp.preprocess(row, rewrite=r, backend="vllm")
    assert out["__inference_error__"] == ""
    params = out["sampling_params"]
    assert (params["temperature"], params["max_tokens"]) == (0.0, 40)
    # Guided decoding to the answer schema, as a JSON string (a nested dict would become an Arrow struct).
    assert json.loads(params["structured_outputs"]["json"]) == ANSWER_SCHEMA
    # Token ids of the chat template, from the model's own tokenizer (at rewrite.revision): Ray's chat
    # template and tokenizer stages, which would load another revision, are off.
    tokenizer = lp.caption_tokenizer("tiny-random", None)
    prompt = tokenizer.decode(out["tokenized_prompt"])
    assert "data, not instructions" in prompt
    assert (
        json.dumps({"caption": "a dog n a frisbe", "objects": [{"label": "frisbee", "score": 0.8}]}) in prompt
    )
    assert prompt.rstrip().endswith("assistant")  # the generation prompt: the model answers next
    assert json.loads(out["_rw_columns"]) == ["key", "caption", "status", "jpg", "objects"]
    # Every row's prompt starts with the same tokens (instructions, worked examples): what prefix caching
    # serves from the cache; only the caption's turn is the row's own.
    other = lp.preprocess({**row, "caption": "an old red barn"}, rewrite=r, backend="vllm")[
        "tokenized_prompt"
    ]
    shared = next(i for i, (a, b) in enumerate(zip(out["tokenized_prompt"], other)) if a != b)
    assert shared >= 0.8 * len(other)

    skipped = lp.preprocess({**row, "status": "too_large"}, rewrite=r, backend="vllm")
    assert skipped["__inference_error__"] == lp.SKIP_MARK + "skipped:too_large"
    assert set(skipped) == set(out)  # same keys: Ray builds one block from both
    assert isinstance(skipped["tokenized_prompt"][0], int)  # and the same types


def test_vllm_postprocess_guards_and_detects_truncation():
    r = _cfg(backend="vllm", max_new_tokens=8).rewrite
    row = {"_rw_caption": "a dog n a frisbe", "_rw_labels": '["frisbee"]', "key": "k"}
    done = lp.postprocess(
        {**row, "generated_text": '{"caption": "A dog with a frisbee."}', "num_generated_tokens": 6},
        rewrite=r,
        backend="vllm",
    )
    assert (done["caption_rewritten"], done["rewrite_status"], done["key"], done["rewrite_candidate"]) == (
        "A dog with a frisbee.",
        "ok",
        "k",
        "",
    )
    cut = lp.postprocess(
        {**row, "generated_text": '{"caption": "A dog with a frisbee in', "num_generated_tokens": 8},
        rewrite=r,
        backend="vllm",
    )
    assert cut["rewrite_status"] == "rejected:truncated" and cut["caption_rewritten"] == ""
    assert cut["rewrite_candidate"] == '{"caption": "A dog with a frisbee in'
    invented = lp.postprocess(
        {**row, "generated_text": '{"caption": "A dog with a frisbee on Mars."}', "num_generated_tokens": 7},
        rewrite=r,
        backend="vllm",
    )
    assert invented["rewrite_status"] == "rejected:invented"
    assert invented["rewrite_candidate"] == "A dog with a frisbee on Mars."


def test_vllm_processor_builds_without_vllm(ray_local):
    # vLLM itself is not installed here; the processor and its stages are still built from our config.
    processor = lp.build_llm_processor(_cfg(backend="vllm", model="tiny-random", batch_size=8))
    # The engine alone: our preprocess tokenizes, the engine detokenizes (llm_processors.vllm_config).
    assert processor.list_stage_names() == ["vLLMEngineStage"]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    assert engine.fn_constructor_kwargs["engine_kwargs"]["max_model_len"] == 2048
    assert engine.fn_constructor_kwargs["should_continue_on_error"] is True
    # This Ray has no GPU: the engine holds a CPU, not the GPU Ray's default bundle would wait for.
    assert engine.map_batches_kwargs["num_cpus"] == 1 and not engine.map_batches_kwargs.get("num_gpus")
    assert processor.preprocess_map_kwargs["num_cpus"] == lp.ROW_MAP_CPUS


def test_finalize_maps_errors_and_restores_types():
    n = 4
    table = pa.table(
        {
            "key": ["a", "b", "c", "d"],
            "patch_grid": pa.array([14] * n, pa.int64()),  # widened by the row-wise round trip
            "objects": pa.array(
                [[{"label": "x", "score": 0.5}]] * n,
                pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())])),
            ),
            "messages": [[{"role": "user", "content": "m"}]] * n,
            "generated_text": ["t"] * n,
            "_rw_columns": [json.dumps(["key", "patch_grid", "objects"])] * n,
            "__inference_error__": ["", lp.SKIP_MARK + "skipped:empty", "CUDA OOM: out of memory", ""],
            "caption_rewritten": ["A dog.", "", "", ""],
            "rewrite_status": ["ok", "", "", "rejected:ungrounded"],
            "rewrite_candidate": ["", "", "", "A castle."],
        }
    )
    out = lp.finalize(table)
    assert out.column_names == [
        "key",
        "patch_grid",
        "objects",
        "caption_rewritten",
        "rewrite_status",
        "rewrite_candidate",
    ]
    assert out["rewrite_candidate"].to_pylist() == [None, None, None, "A castle."]
    assert out["rewrite_status"].to_pylist() == [
        "ok",
        "skipped:empty",
        "failed:CUDA_OOM",
        "rejected:ungrounded",
    ]
    assert out["caption_rewritten"].to_pylist() == ["A dog.", None, None, None]
    assert out.schema.field("patch_grid").type == pa.int16()
    assert out.schema.field("objects").type == pa.list_(OBJECT_TYPE)


def test_http_end_to_end_through_ray(ray_local, chat_server, monkeypatch):
    url, requests = chat_server
    monkeypatch.setenv("TEST_REWRITE_KEY", "tok")
    cfg = _cfg(backend="http", url=url, model="tiny-random", batch_size=3, api_key_env="TEST_REWRITE_KEY")
    table = _rows()
    ds = ray_local.data.from_arrow(table).repartition(3)
    out = _collect(ray_local, add_rewrite_stage(ds, cfg)).sort_by("key")

    assert out.num_rows == table.num_rows
    assert out["key"].to_pylist() == table["key"].to_pylist()
    assert out["rewrite_status"].to_pylist() == table["expected_status"].to_pylist()
    assert out["caption_rewritten"].to_pylist() == table["expected_text"].to_pylist()
    assert out["rewrite_candidate"].to_pylist() == table["expected_candidate"].to_pylist()
    # Everything else comes through unchanged, in its contract type.
    for name in ("jpg", "caption", "objects", "status", "patch_grid", "patch_index", "error", "_row"):
        assert out[name].to_pylist() == table[name].to_pylist(), name
    assert out.schema.field("patch_index").type == pa.list_(pa.int16())
    assert out.schema.field("objects").type == pa.list_(OBJECT_TYPE)

    # Skipped rows cost no request; each sent row one, with our prompt and settings (the 500 is retried:
    # text/http_backend.py's HTTP_ATTEMPTS requests).
    assert len(requests) == 6 + HTTP_ATTEMPTS
    sent = {json.loads(r["messages"][-1]["content"])["caption"] for r in requests}
    assert "a red car by the sea" in sent  # control character, chat markup, special tokens removed
    first = requests[0]
    assert first["auth"] == "Bearer tok" and first["model"] == "tiny-random"
    assert first["max_tokens"] == cfg.rewrite.max_new_tokens and first["temperature"] == 0.0
    assert first["messages"][0]["role"] == "system"
    assert first["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA


def test_run_info_names_prompt_model_and_guard():
    info = rewrite_run_info(_cfg(backend="transformers", model="smollm2", max_new_tokens=32))
    assert info["prompt_version"] == PROMPT_VERSION and info["prompt_hash"] == prompt_hash()
    assert info["gguf_file"].endswith(".gguf") and len(info["gguf_sha256"]) == 64
    assert info["max_new_tokens"] == 32 and info["guard"]["max_words"] == 60
    http = rewrite_run_info(_cfg(backend="http", url="http://h/v1/chat/completions"))
    assert http["url"] == "http://h/v1/chat/completions" and "gguf_file" not in http
    assert http["response_format"]["type"] == "json_schema"
    vllm = rewrite_run_info(_cfg(backend="vllm"))
    assert vllm["engine_kwargs"]["max_model_len"] == 2048 and "structured_outputs" in vllm["sampling_params"]
    assert vllm["engine"]["name"] == "vllm"  # and its version where the driver has vLLM (test_vllm_curate.py)
