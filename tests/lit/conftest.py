"""Fixtures for the training tests (helpers live in tests/lit/helpers.py)."""

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from tests.lit.helpers import compose_train


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(overrides, out=None) -> the train config with run folder out (or tmp_path)."""

    def _compose(overrides, out=None):
        return compose_train(overrides, Path(out or tmp_path))

    yield _compose
    GlobalHydra.instance().clear()
