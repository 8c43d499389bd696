"""Fixtures of the NAT integration tests: a fresh :class:`NetLab` of network namespaces per test (see
``netlab.py`` beside this file, loaded by path: test folders are not packages), and the swarm
services' harness (``../swarm_services/services_harness.py``) for a coordinator and its volunteers.

The lab is closed when its test ends, pass or fail, which kills every process left in its namespaces.
Labs left by a crashed earlier run (their owner process is gone) are reaped when the session first
uses a lab and again when it ends.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load(name: str, path: Path) -> ModuleType:
    """The module at ``path``, loaded once under ``name`` (test folders are not packages)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_netlab() -> ModuleType:
    return _load("essaim_tests_nat_netlab", Path(__file__).with_name("netlab.py"))


@pytest.fixture(scope="session")
def netlab_module() -> Iterator[ModuleType]:
    """The netlab module; skips when labs can't be built here, reaps leftovers before and after."""
    module = load_netlab()
    reason = module.available()
    if reason is not None:
        pytest.skip(reason)
    module.reap_leftovers()
    yield module
    module.reap_leftovers()


@pytest.fixture
def netlab(netlab_module: ModuleType) -> Iterator[object]:
    lab = netlab_module.NetLab()
    try:
        yield lab
    finally:
        lab.close()


def load_harness() -> ModuleType:
    # the name the swarm services' conftest gives it
    return _load("essaim_tests_swarm_services_harness",
                 Path(__file__).parents[1] / "swarm_services" / "services_harness.py")


@pytest.fixture(scope="session")
def harness() -> ModuleType:
    return load_harness()


@pytest.fixture(scope="session")
def upnp_roles() -> ModuleType:
    """test_upnp.py's helpers that run ``upnp_peer.py`` roles in the lab's namespaces (``_run``,
    ``_first_line``, ``_stop``), for the other reachability tests."""
    return _load("essaim_tests_nat_upnp", Path(__file__).with_name("test_upnp.py"))
