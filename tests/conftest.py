"""Shared fixtures. The real data sets are found as every command finds them (``lightning_cnn.data``):
``$LIGHTNING_CNN_DATA``, the Keras cache, ``./data``, else a download (CI sets ``LIGHTNING_CNN_DATA``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_cnn.data import DataError, data_folder

pytest_plugins = ["tests.reliability"]  # the fault suite's table (--write-reliability)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding the real data sets (where the data layer finds MNIST). Missing data fails the test: a
    silent skip would hide a broken CI."""
    try:
        return data_folder("mnist")
    except DataError as error:
        pytest.fail(f"real test data not found: {error}\nSet LIGHTNING_CNN_DATA to the folder holding mnist.npz, "
                    "mnist/ and cifar10_train50k_test1k.npz (CI: ../shared/data).")
