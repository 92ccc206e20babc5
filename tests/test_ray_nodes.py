"""A Ray cluster of two nodes on this machine (``ray start``; real Kafka, real Ray, the shipped JUDO).

``judo cluster up|status|down`` starts, reports and stops a head and a worker node; the pipeline
joins such a cluster by address, its actors and JUDO replicas spread over both nodes, and when the
worker node's raylet is killed mid-stream they come back on the head and every frame gets its verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from cluster.ray_nodes import LocalRayCluster, RayClusterError
from pipelines.commands import SHIPPED_CHECKPOINT
from tooling.faults.bench import FaultBench
from tooling.faults.catalogue import FaultSettings

ROOT = Path(__file__).resolve().parents[1]


def judo(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JUDO_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_bad_cluster_shapes_and_unknown_workers_are_refused():
    with pytest.raises(ValueError, match="workers and CPU counts"):
        LocalRayCluster.with_workers(-1)
    with pytest.raises(ValueError, match="object_store_mb"):
        LocalRayCluster.with_workers(1, object_store_mb=10)
    with pytest.raises(RayClusterError, match="no worker 2"):
        LocalRayCluster.with_workers(1).kill_worker(2)


def test_cluster_up_status_down_from_the_command_line(tmp_path):
    up = judo("cluster", "up", "--workers", "1", "--worker-resources", '{"judo_gpu": 1, "camera_io": 2}',
              cache=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "ray-local" / "state.json").read_text())
    cluster = LocalRayCluster.from_description(state)
    try:
        assert up.stdout.strip().splitlines()[-1] == cluster.address
        status = judo("cluster", "status", "--json", cache=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        nodes = {n["role"]: n for n in json.loads(status.stdout)["nodes"]}
        assert sorted(nodes) == ["head", "worker-1"] and all(n["alive"] for n in nodes.values())
        assert nodes["worker-1"]["resources"]["camera_io"] == 2 and nodes["head"]["resources"]["judo_gpu"] == 1
        assert nodes["head"]["node_id"] != nodes["worker-1"]["node_id"]
        assert set(cluster.raylets()) == {"head", "worker-1"}, "one raylet per node"
    finally:
        down = judo("cluster", "down", cache=tmp_path)
    assert down.returncode == 0 and down.stdout.strip() == "stopped", down.stdout + down.stderr
    assert cluster.processes() == [], "no process of either node is left"
    assert not (tmp_path / "ray-local" / "state.json").exists()
    assert judo("cluster", "status", cache=tmp_path).returncode == 1


@pytest.mark.faults
@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "config.json").exists(), reason="no shipped JUDO checkpoint")
def test_worker_node_killed_mid_stream_actors_come_back_on_the_head_and_nothing_is_lost(tmp_path):
    if ray.is_initialized():  # a Ray left connected by an earlier test: this process must join the cluster
        ray.shutdown()
    settings = FaultSettings(frames=240, fps=20.0, fault_after=0.25)
    with FaultBench(tmp_path, settings) as bench:
        report = bench.run("node_killed")
    cluster = bench.clusters[-1]
    details = report.details
    assert details["ray_address"].endswith(f":{cluster.port}"), "the pipeline joined the cluster by its address"
    before, after = details["placement_before"], details["placement_after"]
    assert before["prefilter"] == ["head", "worker-1"], "SPREAD puts one prefilter actor on each node"
    assert len(before["judo"]) == 2, "both JUDO replicas (judo_gpu: 1 each) ran"
    assert details["killed_node"] == "worker-1"
    assert details["all_back"] and details["alive_nodes"] == ["head"], details
    assert after == {"prefilter": ["head", "head"], "sink": ["head"], "driver": ["head", "head"],
                     "judo": ["head", "head"]}, "every actor and replica was recreated on the surviving node"
    assert report.frames_in == settings.frames
    assert report.lost == 0, f"no verdict for {report.missing}"
    assert report.unexpected == [] and report.verdicts_out == report.frames_in
    assert report.dead_letters == 0, report.dead_letter_reasons
    assert report.recovery_s >= 0 and details["recreated_after_s"] > 0
    assert cluster.processes() == [] and cluster.raylets() == {}, "the cluster is stopped: no raylet is left"
