"""Fixtures for the test modules that run one of the sample apps under ``apps/``; a module names its app in
``SAMPLE_APP``."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from devhost.app_index import AppIndex, load_app
from tests.runtime.sample_apps import APPS


@pytest.fixture(scope="module")
def full_index(request: pytest.FixtureRequest) -> AppIndex:
    """Every function of the module's sample app."""
    return load_app(request.module.SAMPLE_APP, APPS)


@pytest.fixture
def sample(full_index: AppIndex, request: pytest.FixtureRequest) -> ModuleType:
    """The sample app's module, with what it recorded from earlier tests cleared."""
    module = importlib.import_module(request.module.SAMPLE_APP)
    module.reset()
    return module
