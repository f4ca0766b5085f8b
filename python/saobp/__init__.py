"""Attention, its one-step belief-propagation refinement (SAOBP) and attention
metrics as WGSL compute shaders on the GPU (wgpu: Vulkan, Metal, DX12, OpenGL),
on numpy arrays.

- ``attention(q, k, v, lam=..., ...)``: softmax attention of ``[B, H, N, D]``
  arrays, refined by SAOBP, with optional maps, multi-hop mass and metrics.
- ``refine_map(A, lam=...)``: SAOBP of attention maps ``[..., N, N]`` from any
  source (e.g. a transformer's ``output_attentions``): ``R``, ``m`` and GTD.
- ``metrics(P)``: per-row entropy, normalized entropy, sparsity, peak,
  distance, multi-hop mass and GTD of attention maps ``[..., N, N]``;
  ``refined_metrics(A, R)``: those of ``R = refine_map(A)["refined"]`` as the
  spec defines them (``A``'s multi-hop mass and GTD).
- ``adapters()`` and ``Gpu(backend, adapter)``: choose where the work runs;
  every function takes ``gpu=``, by default ``default_gpu()``, chosen from
  ``SAOBP_BACKEND`` and ``SAOBP_ADAPTER``.

Every kernel is checked against a float64 CPU reference; the math is the
library's specification (see the repository's README).
"""

from ._saobp import (
    METRIC_NAMES,
    MODES,
    Gpu,
    GpuError,
    __version__,
    adapters,
    attention,
    default_gpu,
    metrics,
    refine_map,
    refined_metrics,
)

__all__ = [
    "METRIC_NAMES",
    "MODES",
    "Gpu",
    "GpuError",
    "__version__",
    "adapters",
    "attention",
    "default_gpu",
    "metrics",
    "refine_map",
    "refined_metrics",
]
