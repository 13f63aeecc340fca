"""Promise 11, node loss: a two-node cluster of its own (the driver
tests/conformance/drivers/node_loss.py, in a process of its own) runs a four-step job whose
pool's replicas ask for a custom resource only the second node has. After two steps the
second node is killed, every process of it. The pool replaces the lost replicas on the
surviving node (the resource is gone with its node: `resources_fallback`), and the job
completes: every step answered once, every tool call returned a result.

The placement rule itself is plain logic, checked here without Ray first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from llmspell.actors.scaling import PoolConfig, offered, placement

ROOT = Path(__file__).parents[2]
STEPS, CALLS, REPLICAS = 4, 3, 2  # as in the driver
RECOVERY_S = 60.0  # from the kill to the job's end: generous, the promise is that it ends


def test_replicas_fall_back_only_when_no_live_node_offers_the_resources() -> None:
    tools = PoolConfig(name="p", resources={"tools": 1}, num_gpus=0.5)
    nodes = [{"CPU": 2.0}, {"CPU": 0.0, "tools": 8.0}]
    assert offered({"tools": 1}, nodes) and not offered({"tools": 9}, nodes)
    assert not offered({"tools": 1, "gpu-box": 1}, nodes)  # one node must have all of them
    kept = placement(tools, nodes)
    assert not kept.fallback and kept.custom == {"tools": 1}
    assert kept.options["scheduling_strategy"] == "SPREAD"
    lost = placement(tools, nodes[:1])
    assert lost.fallback and lost.custom == {} and lost.options["num_gpus"] == 0.5  # CPU, GPU hold
    assert not placement(tools, None).fallback  # the cluster unknown: place as asked
    strict = PoolConfig(name="p", resources={"tools": 1}, resources_fallback=False)
    assert placement(strict, nodes[:1]).custom == {"tools": 1}  # it waits for such a node


def _run_driver() -> dict[str, Any]:
    # Short: Ray's socket paths live under it, and a Unix socket path has ~107 characters.
    tmp = tempfile.mkdtemp(prefix="p11-", dir="/tmp")
    env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)  # the driver starts its own cluster, never the session's
    proc = subprocess.Popen([sys.executable, "-m", "tests.conformance.drivers.node_loss", tmp],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its cluster's processes
        out, err = proc.communicate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-4000:]
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


@pytest.mark.cluster
def test_a_job_completes_when_the_node_holding_its_replicas_is_lost() -> None:
    r = _run_driver()
    head, lost = r["head"], r["lost"]

    def replicas(actors: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in actors if "/replica-" in a["name"]]

    # Before: the replicas on the second node, everything else of the job on the head.
    assert len(replicas(r["before"])) == REPLICAS
    assert all(a["node"] == lost for a in replicas(r["before"])), r["before"]
    assert all(a["node"] == head for a in r["before"] if "/replica-" not in a["name"])

    # The job completed, whole: every step's answer, every tool call a result, not an error.
    assert r["status"] == "completed", r["reason"]
    assert r["outputs"] == ["42"] * STEPS
    assert len(r["tool_results"]) == STEPS * CALLS
    assert not [t for t in r["tool_results"] if t["is_error"]], r["tool_results"]
    # No step ran twice: each step's agent asked the model twice (tool calls, then answer).
    assert sorted(r["requests"]) == sorted([f"step{i}" for i in range(STEPS)] * 2)
    assert r["ended_at"] - r["killed_at"] < RECOVERY_S

    # After: the pool is whole again, on the surviving node, and said what happened.
    after = replicas(r["after"])
    assert len(after) == REPLICAS and all(a["node"] == head and a["state"] == "ALIVE"
                                          for a in after), (head, lost, r["before"], r["after"],
                                                            r["pool_events"])
    assert not [a for a in r["after"] if a["node"] == lost]
    assert r["stats"]["replicas"] == REPLICAS and r["stats"]["failed"] == 0
    topics = [e["topic"] for e in r["pool_events"]]
    assert topics.count("pool.replica_failed") >= REPLICAS
    assert "pool.placement_fallback" in topics
