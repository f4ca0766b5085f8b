"""Adapters: there is at least one, the backends SAOBP_REQUIRE_BACKENDS
names are all there, and `Gpu`, `adapters()` and the default context
describe and open them."""

import os

import numpy as np
import pytest

import saobp
from conftest import ADAPTERS


def test_an_adapter_is_present():
    assert ADAPTERS, (
        "no GPU adapter found: install a software one "
        "(Debian: mesa-vulkan-drivers for lavapipe, libegl-mesa0 for llvmpipe GL)"
    )


def test_required_backends_are_present():
    required = [b.strip() for b in os.environ.get("SAOBP_REQUIRE_BACKENDS", "").split(",")]
    present = {a["backend"] for a in ADAPTERS}
    missing = [b for b in required if b and b not in present]
    assert not missing, f"SAOBP_REQUIRE_BACKENDS asks for {missing}; the adapters are {ADAPTERS}"


def test_adapter_dicts():
    for i, a in enumerate(ADAPTERS):
        assert a["index"] == i
        assert {"name", "backend", "device_type", "driver", "driver_info", "software"} <= set(a)
        assert a["backend"] in ("vulkan", "metal", "dx12", "gl", "webgpu")
    for backend in {a["backend"] for a in ADAPTERS}:
        assert all(a["backend"] == backend for a in saobp.adapters(backend))


def test_gpu_describes_its_adapter(gpu):
    a = gpu.adapter
    assert a["name"] == gpu.name and a["backend"] == gpu.backend
    assert gpu.software == a["software"]
    assert gpu.backend in repr(gpu)
    # The same adapter again, by backend and name.
    again = saobp.Gpu(backend=gpu.backend, adapter=gpu.name)
    assert again.name == gpu.name and again.backend == gpu.backend


def test_default_gpu_is_cached_and_used():
    first = saobp.default_gpu()
    assert first.name == saobp.default_gpu().name
    out = saobp.attention(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))
    np.testing.assert_allclose(out["output"], np.ones((1, 1, 2, 2)), atol=1e-6)


def test_bad_gpu_choices():
    with pytest.raises(ValueError, match="unknown backend `quantum`"):
        saobp.Gpu(backend="quantum")
    with pytest.raises(ValueError, match="out of range"):
        saobp.Gpu(adapter=len(ADAPTERS) + 5)
    with pytest.raises(saobp.GpuError, match="adapter"):
        saobp.Gpu(adapter="no such adapter, surely")
    assert issubclass(saobp.GpuError, RuntimeError)
    with pytest.raises(TypeError):
        saobp.Gpu(adapter=1.5)
    with pytest.raises(ValueError, match="timeout_s"):
        saobp.Gpu(timeout_s=-1)
