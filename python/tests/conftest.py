"""Every GPU test runs on every adapter the machine has (the `gpu` fixture is
parametrized over `saobp.adapters()`), and fails, never skips, when there is
none. With SAOBP_REQUIRE_BACKENDS (e.g. `vulkan,gl`, as CI sets it) a missing
backend fails too (see test_adapters.py)."""

import os
import sys

import pytest

import saobp

sys.path.insert(0, os.path.dirname(__file__))

ADAPTERS = saobp.adapters()
_OPENED = {}


def _describe(a):
    return f"{a['backend']}: {a['name']} ({a['device_type']}; {a['driver']} {a['driver_info']})".strip()


def pytest_report_header(config):
    if not ADAPTERS:
        return ["saobp adapters: NONE (every GPU test will fail)"]
    return ["saobp adapters:"] + [f"  [{a['index']}] {_describe(a)}" for a in ADAPTERS]


def pytest_terminal_summary(terminalreporter):
    if _OPENED:
        terminalreporter.write_line("saobp GPU tests ran on:")
        for a in _OPENED.values():
            terminalreporter.write_line(f"  {_describe(a)}")
    else:
        terminalreporter.write_line("saobp GPU tests ran on no adapter")


@pytest.fixture(
    scope="session",
    params=ADAPTERS or [None],
    ids=[f"{a['backend']}{a['index']}" for a in ADAPTERS] or ["no-adapter"],
)
def gpu(request):
    """One opened `saobp.Gpu` per adapter, shared by the whole session."""
    a = request.param
    if a is None:
        pytest.fail(
            "no GPU adapter found: install a software one "
            "(Debian: mesa-vulkan-drivers for lavapipe, libegl-mesa0 for llvmpipe GL)"
        )
    g = saobp.Gpu(adapter=a["index"])
    assert g.backend == a["backend"] and g.name == a["name"], (g, a)
    _OPENED[a["index"]] = a
    return g
