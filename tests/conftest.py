"""Shared fixtures. The real data sets live in ../shared/data beside the checkout (or $LIGHTNING_CNN_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.reliability"]  # the fault suite's table (--write-reliability)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with the real data files. Missing data fails the test: a silent skip would hide a broken CI."""
    env = os.environ.get("LIGHTNING_CNN_DATA")
    path = Path(env).resolve() if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(
            f"real test data folder {path} does not exist; set LIGHTNING_CNN_DATA to the shared data folder "
            "(the one holding mnist.npz, mnist/ and cifar10_train50k_test1k.npz)"
        )
    return path
