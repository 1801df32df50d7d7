"""Test set-up: CPU only, several host devices, before jax is imported anywhere."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
    """A private TFDS_DATA_DIR for the session so tests never touch the user's datasets."""
    path = tmp_path_factory.mktemp("tensorflow_datasets")
    os.environ["TFDS_DATA_DIR"] = str(path)
    return path
