"""`ray_cluster.yaml`: Ray's own schema and checks, the files it ships, and its setup commands run here.

The cluster's images are not here, so each command is checked as far as this machine allows:
- every command of the file: ``bash -n`` (syntax);
- commands that need the cloud image (``sudo``/``apt-get`` on Ubuntu, ``nvidia-smi`` on a GPU node):
  presence and syntax only;
- the rest run for real, in the order Ray runs them on a head node and on a GPU worker, in ``bash`` with
  HOME set to a temporary folder that holds ``judo-inspect`` (a link to this checkout: the file_mounts
  target): the virtualenv is created, pip upgraded, the ``.bashrc`` line added; the project installs run
  as written with ``--dry-run --no-deps --report FILE`` inserted after ``pip install``, so pip builds the
  project from the checkout path, checks the extras named, and fetches the pinned Ray from PyPI, without
  installing gigabytes of torch/CUDA/vLLM (a full install takes many minutes).
  ``JUDO_CLUSTER_FULL_RESOLVE=1`` drops ``--no-deps``: pip then resolves the complete dependency tree of
  each node type against PyPI (several minutes and several GB of downloads; not part of ``make test``).
The setup test needs PyPI and skips, saying so, when it cannot reach it. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "ray_cluster.yaml"
VENV = "~/judo-venv"
#: Commands that only the cloud image can run: checked for presence and syntax, never run here.
CLOUD_ONLY = re.compile(r"\bsudo\b|\bapt-get\b|\bnvidia-smi\b")
#: A project install line (the ones run here as a dry run).
PROJECT_INSTALL = re.compile(r"pip install\b(?=.*judo-inspect)")
FULL_RESOLVE = os.environ.get("JUDO_CLUSTER_FULL_RESOLVE") == "1"


def load() -> dict:
    return yaml.safe_load(CLUSTER_FILE.read_text())


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    commands = [c for key in keys for c in config.get(key) or []]
    for node_type in config["available_node_types"].values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node_type.get(key) or []
    return commands


def node_setup(config: dict, node_type: str) -> list[str]:
    """The setup commands Ray runs on a node of this type, in order (the per-type list overrides the top one)."""
    if node_type == config["head_node_type"]:
        return config["setup_commands"] + config["head_setup_commands"]
    own = config["available_node_types"][node_type].get("worker_setup_commands")
    return config["setup_commands"] + (own if own is not None else config["worker_setup_commands"])


def test_cluster_yaml_passes_rays_validation():
    config = load()
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["max_workers"] >= 1


def test_schema_rejects_a_broken_config():
    config = load()
    config["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_every_command_is_valid_bash():
    for command in all_commands(load()):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


def test_images_are_named_and_marked_for_replacement():
    """Each ImageId says which image it is and how to replace it in another region; GPU nodes get a driver image."""
    lines = CLUSTER_FILE.read_text().splitlines()
    image_lines = [i for i, line in enumerate(lines) if line.strip().startswith("ImageId:")]
    assert len(image_lines) == len(load()["available_node_types"])
    for i in image_lines:
        comments = []
        for line in reversed(lines[:i]):
            if not line.strip().startswith("#"):
                break
            comments.append(line)
        assert "replace with your region's" in " ".join(comments), f"line {i + 1}: no replacement note"
    types = load()["available_node_types"]
    assert types["gpu_worker"]["node_config"]["ImageId"] != types["head"]["node_config"]["ImageId"]
    assert "nvidia-driver-gpu" in types["gpu_worker"]["node_config"]["ImageId"]
    assert any("nvidia-smi" in c for c in node_setup(load(), "gpu_worker"))


def test_nodes_install_into_the_venv_and_run_ray_from_it():
    config = load()
    assert not any("python3 -m pip" in c for c in all_commands(config)), "system pip: Ubuntu 24.04 has none"
    for node_type in config["available_node_types"]:
        installs = [c for c in node_setup(config, node_type) if PROJECT_INSTALL.search(c)]
        assert len(installs) == 1, node_type
        assert installs[0].startswith(f"{VENV}/bin/python -m pip install")
        assert ("[gpu]" in installs[0]) == (node_type == "gpu_worker"), node_type
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in config[key]:
            ray_calls = re.findall(r"(\S*\bray) (?:start|stop)", command)
            assert ray_calls and all(call == f"{VENV}/bin/ray" for call in ray_calls), command


def test_one_ray_version_on_every_node():
    """Nodes with different Ray versions cannot form a cluster: every install pins the Ray of this checkout."""
    pins = {re.search(r'"ray\[serve\]==([^"]+)"', c).group(1)
            for node_type in load()["available_node_types"]
            for c in node_setup(load(), node_type) if PROJECT_INSTALL.search(c)}
    assert pins == {version("ray")}, f"ray pins {pins}, the project's venv has {version('ray')}"


def test_every_node_and_shell_uses_token_auth():
    """Ray 2.60 nodes and drivers must agree on RAY_AUTH_MODE; the token file goes to every node."""
    config = load()
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if " start " in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert any("export RAY_AUTH_MODE=token" in c for c in config["setup_commands"])


def test_shipped_files_exist_and_the_pipeline_config_fits_the_cluster():
    config = load()
    # Sources under ~ are the user's own (the Ray auth token); the others ship from this checkout.
    mounts = {target: ROOT / source for target, source in config["file_mounts"].items() if not source.startswith("~")}
    for target, source in mounts.items():
        assert source.exists(), f"file_mounts {target}: {source} is missing (ray up stops on it)"
    pipeline_target = next(t for t in mounts if t.endswith("pipeline.yaml"))
    pipeline = load_config(mounts[pipeline_target])
    assert pipeline.kafka.mode == "external" and pipeline.kafka.settings.bootstrap_servers
    assert pipeline.ray.address == "auto"
    assert pipeline.judo.engine == "vllm" and pipeline.judo.num_gpus >= 1
    assert set(pipeline.judo.resources) == set(config["available_node_types"]["gpu_worker"]["resources"])
    serve = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deploy/serve_judo.yaml").read_text()))
    assert serve.applications[0].args["config"] == pipeline_target
    assert serve.applications[0].import_path == "pipelines.serve_app:app"


def _pypi_unreachable() -> str | None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        urllib.request.urlopen(f"{index}/pip/", timeout=15).close()
    except OSError as exc:
        return f"PyPI ({index}) is unreachable: {exc}"
    return None


def _as_run_here(command: str, report: Path) -> str:
    """The command as this test runs it: project installs become dry runs that write a report."""
    if not PROJECT_INSTALL.search(command):
        return command
    flags = "--dry-run --report " + str(report) + ("" if FULL_RESOLVE else " --no-deps")
    return command.replace("pip install", f"pip install {flags}", 1)


def _bash(command: str, home: Path, interactive: bool = False) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(HOME=str(home), PATH=f"{home / 'bin'}:{os.environ['PATH']}")
    args = ["bash", "-i", "-c", command] if interactive else ["bash", "-c", command]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800 if FULL_RESOLVE else 300,
                          stdin=subprocess.DEVNULL)


def test_setup_commands_run_in_a_fresh_virtualenv(tmp_path):
    reason = _pypi_unreachable()
    if reason:
        print(reason)
        pytest.skip(reason)
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / "judo-inspect").symlink_to(ROOT)      # the file_mounts target of the checkout
    # `python3` on the images is the system Python; here it is the interpreter this project's venv was made from.
    (home / "bin" / "python3").symlink_to(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    config = load()
    reports: dict[str, list[dict]] = {}
    ran: set[str] = set()
    for node_type in ("head", "gpu_worker"):
        for i, command in enumerate(node_setup(config, node_type)):
            if CLOUD_ONLY.search(command):
                continue                                  # syntax-checked in test_every_command_is_valid_bash
            report = tmp_path / f"{node_type}-{i}.json"
            result = _bash(_as_run_here(command, report), home)
            assert result.returncode == 0, f"{node_type}: {command!r} failed:\n{result.stdout}\n{result.stderr}"
            ran.add(command)
            if report.exists():
                reports.setdefault(node_type, []).append(json.loads(report.read_text()))
    venv_python = home / "judo-venv" / "bin" / "python"
    assert venv_python.exists()
    pip_version = subprocess.run([venv_python, "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip_version.returncode == 0 and int(pip_version.stdout.split()[1].split(".")[0]) >= 23
    # Ray re-runs setup on every `ray up`: a second pass must leave one activation line, and shells find the venv.
    for command in config["setup_commands"]:
        if not CLOUD_ONLY.search(command) and not PROJECT_INSTALL.search(command):
            assert _bash(command, home).returncode == 0
    assert (home / ".bashrc").read_text().count("judo-venv/bin/activate") == 1
    shell = _bash('command -v python; echo "$RAY_AUTH_MODE"', home, interactive=True)
    assert shell.stdout.split() == [str(home / "judo-venv" / "bin" / "python"), "token"], shell.stderr

    def installs(node_type: str) -> dict[str, dict]:
        (report,) = reports[node_type]
        return {item["metadata"]["name"].lower(): item for item in report["install"]}

    head, gpu = installs("head"), installs("gpu_worker")
    for items, extras in ((head, None), (gpu, ["gpu"])):
        project = items["judo-inspect"]
        assert project["is_direct"] and project["download_info"]["dir_info"].get("editable")
        assert project.get("requested_extras") == extras
        assert items["ray"]["metadata"]["version"] == version("ray")
    assert "boto3" in head                                 # the head's autoscaler launches EC2 nodes with it
    gpu_requirements = [Requirement(r) for r in gpu["judo-inspect"]["metadata"]["requires_dist"]]
    assert "gpu" in gpu["judo-inspect"]["metadata"]["provides_extra"]
    assert any(r.name == "vllm" and r.marker and r.marker.evaluate({"extra": "gpu"}) for r in gpu_requirements)
    if FULL_RESOLVE:
        assert {"torch", "vllm"} <= set(gpu) and "torch" in head and "vllm" not in head
    assert ran, "no setup command ran"
    shutil.rmtree(home / "judo-venv")
