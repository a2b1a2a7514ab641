"""Shared fixtures: a small digits classifier and generator trained in-process (no Ray), once per session."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.training import train_epoch
from ccc_ray.classifiers.weights import save_classifier
from ccc_ray.data.sources import DataConfig, load_dataset


@pytest.fixture(scope="session")
def digits():
    return load_dataset(DataConfig())


@pytest.fixture(scope="session")
def digits_classifier_file(tmp_path_factory, digits):
    """A quickly trained SmallCNN on digits, written as a ccc-ray classifier file."""
    torch.manual_seed(0)
    config = ClassifierConfig(epochs=3)
    model = build_classifier(config, digits.image_shape, digits.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits.train_images, digits.train_labels),
                                         batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(config.epochs):
        train_epoch(model, loader, optimizer, torch.device("cpu"), 1, torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("classifier") / "classifier.safetensors"
    save_classifier(path, model, config, digits.image_shape, list(digits.class_names), "digits")
    return path


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """A SmallCNN trained for 10 epochs on digits (about 98% test accuracy, a few seconds), in eval mode:
    confident enough on real digits that an attack can be asked for the 0.99 bar."""
    from ccc_ray.classifiers.small_cnn import SmallCNN

    torch.manual_seed(1)
    model = SmallCNN(digits.image_shape, digits.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits.train_images, digits.train_labels),
                                         batch_size=64, shuffle=True, generator=generator)
    for _ in range(10):
        train_epoch(model, loader, optimizer, torch.device("cpu"), 1, generator)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def digits_generator_file(tmp_path_factory, digits, digits_classifier_file):
    """A network-inversion generator bound to `digits_classifier_file`, trained for a few steps only."""
    from ccc_ray.classifiers.weights import load_classifier
    from ccc_ray.methods.generator_file import save_generator
    from ccc_ray.methods import MethodContext
    from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

    classifier, info = load_classifier(digits_classifier_file)
    classifier.requires_grad_(False)
    context = MethodContext(digits.image_shape, digits.num_classes, classifier)
    method = NetworkInversion(InversionConfig(batch_size=64, steps=20), context)
    for step in range(20):
        method.training_step(None, torch.Generator().manual_seed(step), 64)
    path = tmp_path_factory.mktemp("generator") / "generator-inversion.safetensors"
    save_generator(path, method, list(digits.class_names), info.sha256)
    return path


SHARED_RAY_CPUS = 4  # logical: two Train workers fit next to Train's controller on 2 cores
_shared_ray_address: list[str] = []  # the GCS address of the Ray this session started, while it runs


def shared_ray() -> None:
    """The session's in-process Ray, started by the first test that asks and kept for the next: a start costs
    6-16 s on 2 cores, and its idle task workers have torch and ccc_ray imported already. A test that needs
    a Ray of its own (other resources, environment for its workers, a `Cluster`) shuts this one down first;
    a Ray left running by anyone else is shut down here, so every test gets the same one."""
    import ray

    if ray.is_initialized():
        if _shared_ray_address and ray.get_runtime_context().gcs_address == _shared_ray_address[0]:
            return
        ray.shutdown()
    _shared_ray_address.clear()
    context = ray.init(num_cpus=SHARED_RAY_CPUS, include_dashboard=False, log_to_driver=False,
                       configure_logging=False)
    _shared_ray_address.append(context.address_info["gcs_address"])


@pytest.fixture(scope="session", autouse=True)
def _shut_down_the_shared_ray():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def ray_cluster():
    """In-process Ray with 4 logical CPUs: the session's shared one (`shared_ray`)."""
    shared_ray()


# Processes a test starts in their own session (start_new_session=True), killed by pid: never `ray stop`
# or a kill by name, which would reach other people's Ray clusters on a shared machine.
def session_pids(session_id: int) -> list[int]:
    """Live processes of a session; zombies (dead, waiting to be reaped by their parent) are not counted."""
    table = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True,
                           check=False).stdout.splitlines()
    rows = [row.split() for row in table]
    return [int(row[0]) for row in rows if len(row) == 3 and int(row[1]) == session_id and not row[2].startswith("Z")]


def kill_session(session_id: int, wait_s: float = 30.0) -> None:
    """SIGKILL every process of a session this test started (its Ray daemons and workers included), by pid,
    until none is left or `wait_s` passed (on a loaded machine a killed process can take seconds to go)."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = session_pids(session_id)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids or time.monotonic() > deadline:
            return
        time.sleep(0.5)


class Sessions:
    """Process sessions a test started (`start_new_session=True`): list, kill, and kill the rest at teardown."""

    def __init__(self) -> None:
        self.tracked: list[int] = []

    def track(self, session_id: int) -> int:
        self.tracked.append(session_id)
        return session_id

    pids = staticmethod(session_pids)
    kill = staticmethod(kill_session)


@pytest.fixture
def sessions():
    tracker = Sessions()
    yield tracker
    for session in tracker.tracked:
        kill_session(session)
