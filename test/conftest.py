"""Shared pytest fixtures: the team's real sample data, ROS isolation, deterministic torch."""

import os
from pathlib import Path

import pytest
from data_fixtures import mini_nuscenes, synthetic_world  # noqa: F401  (session fixtures shared by several test files)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (the team's ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data next to the repository (real nuScenes / Occ3D / QA samples); skips when absent."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def nuscenes_demo_dir(shared_data_dir: Path) -> Path:
    return _require(shared_data_dir / "nuscenes_demo")


@pytest.fixture(scope="session")
def occ3d_sample_dir(shared_data_dir: Path) -> Path:
    return _require(shared_data_dir / "occ3d_sample")


@pytest.fixture(scope="session")
def qa_samples_dir(shared_data_dir: Path) -> Path:
    return _require(shared_data_dir / "qa_samples")


def pytest_configure(config):
    # ROS traffic of parallel test runs must never meet: localhost-only discovery and a domain id per process.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    # Keep CPU tests deterministic and friendly to 2-core CI machines.
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
