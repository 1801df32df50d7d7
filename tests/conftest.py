"""Test set-up: CPU only, several host devices, before jax is imported anywhere."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import pytest


@pytest.fixture(scope="session", autouse=True)
def tfds_data_dir(tmp_path_factory):
    """A private TFDS_DATA_DIR for the test run so tests never touch the user's datasets.

    Under pytest-xdist the workers share one directory (the parent of their base temp dirs), so
    the built-in datasets are prepared once per run; ``tasks.datasets.prepare`` serialises
    concurrent builds with a file lock. Load datasets in fixtures or tests, not at import time,
    which runs before this fixture.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / "tensorflow_datasets"
    path.mkdir(exist_ok=True)
    previous = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("TFDS_DATA_DIR", None)
    else:
        os.environ["TFDS_DATA_DIR"] = previous
