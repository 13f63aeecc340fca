"""docs/kuberay: the RayJob manifest and Dockerfile the Kubernetes page tells users to apply,
checked against llmspell itself (no cluster here: parsed, not applied)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import ray
import yaml

from llmspell.jobs import JobSpec

DOCS = Path(__file__).parents[2] / "docs" / "kuberay"


def manifest() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DOCS / "rayjob.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_the_rayjob_runs_a_valid_job_spec_from_its_configmap() -> None:
    docs = manifest()
    assert set(docs) == {"ConfigMap", "RayJob"}
    job, config = docs["RayJob"], docs["ConfigMap"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = JobSpec.from_yaml(config["data"]["job.yaml"])  # raises listing any mistake
    assert spec.pools and spec.pools[0].placement == "spread"

    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["llmspell", "run"] and "--json" in args
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = head["containers"][0]["volumeMounts"][0]
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert Path(args[2]) == Path(mount["mountPath"]) / "job.yaml"
    inputs = dict(a.split("=", 1) for a in args[args.index("-i") + 1:][:1])
    assert set(inputs) <= set(spec.inputs)
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_the_image_ray_version_and_keys_agree() -> None:
    cluster = manifest()["RayJob"]["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    base = (DOCS / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py")
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    images = {c["image"] for p in pods for c in p["containers"]}
    assert len(images) == 1  # head and workers run the same llmspell
    for pod in pods:
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        ref = env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "llmspell-keys", "key": "OPENAI_API_KEY"}
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
