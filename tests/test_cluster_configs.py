"""The cluster configurations in ``cluster/`` parse, ask for GPUs where they should, and
name the Ray that recray pins; the ``ray up`` file passes Ray's own schema."""

from __future__ import annotations

import copy
import os
import re

import pytest
import ray
import yaml

CLUSTER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster")
REPO = os.path.dirname(CLUSTER)


def _load(name: str) -> dict:
    with open(os.path.join(CLUSTER, name)) as f:
        return yaml.safe_load(f)


def _pinned_ray() -> str:
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', f.read()).group(1)


def _image_ray(image: str) -> str:
    m = re.fullmatch(r"rayproject/ray:([0-9.]+)-py3\d+-(cpu|gpu|cu\d+)", image)
    assert m, f"unexpected image tag {image!r}"
    return m.group(1)


def test_pinned_ray_is_the_installed_ray():
    assert _pinned_ray() == ray.__version__


def test_ray_up_config_passes_rays_schema_and_has_a_gpu_worker_type():
    cfg = _load("ray-up-gpu.yaml")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` checks first
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= t.get("min_workers", 0) for t in gpu)
    assert any(t["node_config"]["InstanceType"].startswith("g5.") for t in gpu)
    assert _image_ray(cfg["docker"]["worker_image"]) == ray.__version__
    assert cfg["docker"]["worker_image"].endswith("-gpu")
    assert _image_ray(cfg["docker"]["head_image"]) == ray.__version__
    assert any("[gpu]" in c and "pip install" in c for c in cfg["setup_commands"])
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_USAGE_STATS_ENABLED=0" in c for c in starts if "ray start" in c)
    assert not any(re.search(r"\bray stop\b|pkill|killall", c) for c in starts)


def test_kuberay_manifest_has_a_gpu_worker_group_on_the_pinned_ray():
    cr = _load("kuberay-gpu.yaml")
    assert cr["apiVersion"] == "ray.io/v1" and cr["kind"] == "RayCluster"
    spec = cr["spec"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _image_ray(head["image"]) == ray.__version__
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert _image_ray(worker["image"]) == ray.__version__ and worker["image"].endswith("-gpu")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and "[gpu]" in env["RECRAY_PIP_SPEC"]


@pytest.mark.parametrize("name", ["ray-up-gpu.yaml", "kuberay-gpu.yaml"])
def test_configs_are_plain_yaml(name):
    assert isinstance(_load(name), dict)
