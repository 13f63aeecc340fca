"""A two-node Ray cluster of its own (ray.cluster_utils.Cluster on 127.0.0.3, every port free,
its files under TMP) runs a four-step job whose tool pool's replicas ask for a resource only
the second node has. Once two steps are done, the second node is killed (every process of it,
SIGKILL); the job goes on. Prints one JSON line: where the replicas were before and after,
the job's result, its tool results and the pool's events.

    python -m tests.conformance.drivers.node_loss TMP

Run in a process of its own: a process joins one Ray cluster only, and the test's process is
in the session's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import psutil
import ray
from ray.cluster_utils import Cluster

from llmspell import Runtime
from llmspell.jobs import JobRun, JobSpec
from llmspell.llm.server import LocalLLMServer
from tests.net import free_ports

IP = "127.0.0.3"  # loopback, and not the session's Ray's 127.0.0.2
STEPS, CALLS, REPLICAS = 4, 3, 2  # steps of the job; parallel tool calls in each; replicas
KILL_AFTER = 2  # steps done when the node is lost
CALL = {"name": "calculator", "arguments": {"expression": "6 * 7"}}
SCENARIO = {"latency_ms": 100, "rules": [
    {"match": {"model": "^step", "after_tool_result": True}, "reply": "42"},
    {"match": {"model": "^step"}, "reply": {"tool_calls": [CALL] * CALLS}},
]}
# The lost node is noticed within ~2 s (a check every 0.5 s, 3 missed); Ray's default (tens
# of seconds) would only make the test slower. What the pool does afterwards is the promise.
HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
          "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


def node_ports() -> dict[str, int]:
    p = free_ports(5)
    return {"dashboard_agent_listen_port": p[0], "metrics_export_port": p[1],
            "runtime_env_agent_port": p[2], "object_manager_port": p[3],
            "node_manager_port": p[4]}


def spec(url: str) -> JobSpec:
    names = [f"step{i}" for i in range(STEPS)]
    return JobSpec.from_data({
        "name": "node-loss",
        "models": {"providers": {"local": {"base_url": url}}},
        "agents": [{"name": n, "model": f"local:{n}", "stream": False, "tools": ["calculator"]}
                   for n in names],
        "pools": [{"name": "compute", "tools": ["calculator"], "min_replicas": REPLICAS,
                   "max_replicas": REPLICAS, "resources": {"custom": {"tools": 1}}}],
        "pattern": {"kind": "sequential", "steps": names},
        "state": {"backend": "memory"},
    })


def placed(job_id: str) -> list[dict[str, Any]]:
    """The job's actors that are not dead: name, state, node."""
    return [{"name": a["Name"], "state": a["State"], "node": a["Address"]["NodeID"]}
            for a in ray._private.state.actors().values()
            if (a["Name"] or "").startswith(f"{job_id}/") and a["State"] != "DEAD"]


def processes_of(node: Any) -> list[psutil.Process]:
    """Every process of a node: its own (raylet, log monitor...) and those they started, the
    workers its actors run in."""
    own = [psutil.Process(info.process.pid) for infos in node.all_processes.values()
           for info in infos]
    return own + [child for p in own for child in p.children(recursive=True)]


def kill_node(cluster: Cluster, node: Any) -> None:
    """Lose `node` as a machine is lost: every process of it at once, SIGKILL. Ray's
    remove_node kills the node's own processes; its workers would only exit once they notice
    their raylet gone, and could answer a call or two meanwhile."""
    processes = processes_of(node)
    cluster.remove_node(node, allow_graceful=False)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone with its raylet already
            process.kill()


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def main(tmp: str) -> dict[str, Any]:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "node_ip_address": IP, "gcs_server_port": free_ports(1)[0],
        "include_dashboard": False, "temp_dir": f"{tmp}/ray", "_system_config": HEALTH,
        **node_ports()})
    ray.init(address=cluster.address, namespace="node-loss", _node_ip_address=IP,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    report: dict[str, Any] = {"head": ray.get_runtime_context().get_node_id()}
    rt = Runtime(cluster.address, job_id="node-loss", namespace="node-loss",
                 event_log_path=f"{tmp}/events.db", state_path=f"{tmp}/state.db").start()
    try:
        with LocalLLMServer(SCENARIO) as server:
            job = JobRun(spec(server.openai_base_url), rt, job_id="node-loss-1")
            starting = asyncio.ensure_future(job.start(save=False))
            # The second node joins once everything but the replicas (which wait for `tools`)
            # is placed on the head: Ray puts an actor that asks for nothing on any node, and
            # the services, supervisor, host and router must survive the loss.
            await until(lambda: len(placed(job.job_id)) >= 5, 120, "the job's actors placed")
            # (In this thread: starting a node installs signal handlers.)
            lost = cluster.add_node(num_cpus=0, resources={"tools": 8}, node_ip_address=IP,
                                    **node_ports())
            report["lost"] = lost.node_id
            await starting
            report["before"] = placed(job.job_id)
            running = asyncio.ensure_future(job.execute())
            done = f"step{KILL_AFTER - 1}"
            await until(lambda: sum(r.model == done for r in server.requests) >= 2
                        or running.done(), 120, "the first steps")
            report["killed_at"] = time.time()
            kill_node(cluster, lost)
            result = await asyncio.wait_for(running, 180)
            report["ended_at"] = time.time()
            report["status"], report["reason"] = str(result.status), result.reason
            report["outputs"] = [c.output for c in result.run.children] if result.run else []
            # The job may end before the last replacement replica is up (the other one took
            # the remaining calls): the pool is whole again once both are alive.
            await until(lambda: sum("/replica-" in a["name"] and a["state"] == "ALIVE"
                                    for a in placed(job.job_id)) >= REPLICAS, 60,
                        "the replacement replicas alive")
            report["stats"] = await job.parts.pools["compute"].stats()
            report["after"] = placed(job.job_id)
            await job.flush()  # the host's and the pool's batched events, into the log
            events = await rt.replay(job.job_id)
            report["tool_results"] = [e.payload for e in events
                                      if e.topic == "agent.tool.result"]
            report["pool_events"] = [{"topic": e.topic, **e.payload} for e in events
                                     if e.topic.startswith("pool.")]
            report["requests"] = [r.model for r in server.requests]
            await job.close()
    finally:
        await rt.aclose()
        ray.shutdown()
        cluster.shutdown()
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1])), default=str), flush=True)
