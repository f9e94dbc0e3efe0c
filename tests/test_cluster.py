"""The cluster path: cluster.yaml against Ray's schema, and a simulated multi-node cluster."""

import json
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from search.cli import main
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_schema_after_its_defaults():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    merged = prepare_config(raw)  # Ray's own defaults for the provider, as `ray up` merges them
    validate_config(merged)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(merged, schema)
    # What the docs promise: loopback dashboard, GPU workers that scale from zero, pinned installs.
    head = " ".join(merged["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    workers = merged["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert any("constraints.txt" in c for c in merged["setup_commands"])
    with pytest.raises(jsonschema.ValidationError):
        validate_config({**merged, "max_workerz": 3})


def results(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for f in exp.glob("trial_*/result.json"):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


@pytest.mark.slow
def test_trials_spread_over_nodes_and_survive_losing_one(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    exp = tmp_path / "results" / "t"
    path = write_config(tmp_path, {
        "ray": {"address": cluster.address, "num_cpus": None},
        "training": {"epochs": 4},
        "search": {"num_samples": 4, "max_concurrent": 3, "grace_period": 4, "max_failures": 3,
                   "space": {"budget": 6000}},
    })
    lost: dict = {}

    def lose_a_worker_node():
        # Once a trial on a worker node has checkpointed its first epoch, that node dies.
        ids = {w.node_id: w for w in workers}
        deadline = time.time() + 240
        while time.time() < deadline and not lost:
            for trial, rows in results(exp).items():
                if len(rows) == 1 and rows[0]["node_id"] in ids:
                    lost.update(trial=trial, node=rows[0]["node_id"])
                    cluster.remove_node(ids[rows[0]["node_id"]], allow_graceful=False)
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=lose_a_worker_node, daemon=True)
    watcher.start()
    try:
        assert main(["run", str(path)]) == 0
    finally:
        watcher.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
    assert lost, "no trial ran on a worker node"
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["counts"] == {"COMPLETED": 4}, summary["trials"]
    everything = results(exp)
    assert len({r["node_id"] for rows in everything.values() for r in rows}) == 3  # all nodes were used
    victim = everything[lost["trial"]]
    assert victim[0]["node_id"] == lost["node"] and victim[-1]["node_id"] != lost["node"]
    moved = [r["epoch"] for r in victim if r["node_id"] != lost["node"]]
    # Resumed from its checkpoint elsewhere (at most the epoch in flight runs again; Tune
    # delivers results at least once), not from scratch.
    assert moved[0] >= 2 and moved == list(range(moved[0], 5)), victim
    for rows in everything.values():  # and no result of any trial was lost
        epochs = [r["epoch"] for r in rows]
        assert sorted(set(epochs)) == [1, 2, 3, 4] and epochs[-1] == 4
