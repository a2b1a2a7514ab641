"""Several nodes: Ray Train workers land on different nodes of a local multi-node cluster, and their
checkpoints go through an S3 `storage_path` (served on loopback), not through a shared local disk."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from ccc_ray.job import load_job

pytestmark = pytest.mark.slow
BUCKET = "ccc-platform"


@pytest.fixture(scope="module")
def three_node_cluster(s3_server):
    """A head with no CPUs (driver, Train controller) and two 1-CPU worker nodes, each its own raylet; one
    cluster for this file's tests (a start costs 5-10 s here)."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray's own temp dir, short for its socket paths; cluster_utils also writes its "current cluster"
    # address file there instead of /tmp/ray, where other people's `ray.init()` would find it.
    ray_tmp = tempfile.mkdtemp(prefix="ccc-mn-", dir="/tmp")
    temp_dir = os.path.join(ray_tmp, "ray")
    os.makedirs(temp_dir)
    ray.shutdown()  # the session's shared in-process Ray (conftest.shared_ray), if a test left it up
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", ray_tmp)
        patch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        patch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=0, temp_dir=temp_dir, include_dashboard=False)
            workers = [cluster.add_node(num_cpus=1, temp_dir=temp_dir) for _ in range(2)]
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            yield cluster.head_node.node_id, {node.node_id for node in workers}
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)


def test_workers_on_two_nodes_checkpoint_through_s3(three_node_cluster, s3_keys, tmp_path, digits_classifier_file):
    import ray

    from ccc_ray.methods.generator_file import load_generator
    from ccc_ray.orchestration.train_method import train_method

    head, worker_nodes = three_node_cluster
    storage = f"s3://{BUCKET}/multinode"
    job = load_job(None, {
        "run.output_dir": str(tmp_path), "run.run_id": "nodes", "run.classifier_path": str(digits_classifier_file),
        "run.num_workers": 2, "run.storage_path": storage, "inversion.steps": 60, "inversion.batch_size": 64,
        "run.checkpoint_every": 30})
    assert job.run.ray_storage == storage
    generator_file, metrics = train_method(job)
    assert metrics["step"] == 60

    # Each 1-CPU node holds exactly one of the two Train workers; the CPU-less head holds none.
    train_workers = [actor for actor in ray._private.state.actors().values()
                     if actor["ActorClassName"] == "RayTrainWorker"]
    nodes = [actor["Address"]["NodeID"] for actor in train_workers]
    assert len(nodes) == 2 and set(nodes) == worker_nodes and head not in nodes

    # The checkpoints are objects in the bucket; the driver rebuilt the generator from the last one.
    keys = s3_keys("multinode/nodes-generator-inversion/")
    checkpoints = sorted({key.split("/")[2] for key in keys if key.endswith("/state.pt")})
    assert len(checkpoints) == 2, keys  # steps 30 and 60, num_to_keep=2
    assert all(f"multinode/nodes-generator-inversion/{name}/state.pt" in keys for name in checkpoints)
    assert not (tmp_path / "nodes" / "ray").exists()  # nothing went to a local storage folder
    method, meta = load_generator(generator_file)
    assert meta["steps"] == 60 and method.step == 60


def test_generation_actors_on_both_nodes_write_the_rows_of_one_actor(three_node_cluster, tmp_path,
                                                                     digits_classifier_file, digits_generator_file):
    """20,000 samples through Ray Data: one actor per worker node, the same rows as a single actor."""
    import pyarrow.parquet as pq
    import ray

    from ccc_ray.orchestration.generation import generate_from_file

    head, worker_nodes = three_node_cluster
    tables = {}
    for actors in (1, 2):
        run = tmp_path / f"actors{actors}" / "default"
        run.mkdir(parents=True)
        shutil.copy(digits_generator_file, run / "generator-inversion.safetensors")
        job = load_job(None, {"run.output_dir": str(run.parent), "run.classifier_path": str(digits_classifier_file),
                              "generate.per_class": 2000, "generate.num_actors": actors,
                              "keep.confidence_bar": 0.3})
        tables[actors] = pq.read_table(generate_from_file(job, progress=False).store_file, columns=["id", "image"])
    assert tables[1].num_rows > 1000
    assert tables[1].column("id").to_pylist() == tables[2].column("id").to_pylist()
    assert tables[1].column("image").to_pylist() == tables[2].column("image").to_pylist()
    samplers = [actor for actor in ray._private.state.actors().values() if "MapWorker" in actor["ActorClassName"]]
    nodes = {actor["Address"]["NodeID"] for actor in samplers}
    assert nodes == worker_nodes and head not in nodes  # the two-actor run used both worker nodes
