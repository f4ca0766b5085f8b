"""Attention, its one-step belief-propagation refinement (SAOBP) and attention
metrics on the GPU (wgpu), on numpy arrays."""

from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

METRIC_NAMES: Tuple[str, ...]
"""Per-row metrics, in order: entropy, normalized_entropy, sparsity, peak,
distance, multi_hop_mass, gtd, weight."""

MODES: Tuple[str, ...]
"""The attention modes: plain, fused, materialized, flash, streaming."""

Array = npt.ArrayLike
Lambda = Union[float, Sequence[float], npt.NDArray[np.floating[Any]]]
Float32Array = npt.NDArray[np.float32]
Mode = Literal["plain", "fused", "materialized", "flash", "streaming"]

class GpuError(RuntimeError):
    """The GPU or its driver failed: no adapter, no device, validation, out of
    memory, device lost, a timeout, a limit of the adapter exceeded."""

class AdapterInfo(TypedDict, total=False):
    index: int
    """Position in ``adapters(backend)`` (absent in ``Gpu.adapter``)."""
    name: str
    backend: str
    """"vulkan", "metal", "dx12" or "gl"."""
    device_type: str
    """"discrete_gpu", "integrated_gpu", "virtual_gpu", "cpu" or "other"."""
    driver: str
    driver_info: str
    software: bool
    """A CPU rasterizer (lavapipe, llvmpipe, WARP, SwiftShader)."""

class Gpu:
    """A GPU context: one adapter, its device and compiled kernels.

    ``backend``: "auto" (a hardware adapter if there is one, else a software
    one), "vulkan", "metal", "dx12" or "gl". ``adapter``: a case-insensitive
    part of the adapter's name, or an ``index`` from ``adapters(backend)``;
    None takes the preferred one. ``timeout_s``: the longest one wait on the
    GPU may take (default 300). Raises ``ValueError`` for an unknown backend
    and ``GpuError`` when no adapter matches or the device cannot be created.

    Opening one costs a device and, on first use of each kernel, a shader
    compilation, so keep it and pass it as ``gpu=``. Safe to share between
    threads.
    """

    def __init__(
        self,
        backend: str = "auto",
        adapter: Union[str, int, None] = None,
        timeout_s: Optional[float] = None,
    ) -> None: ...
    @staticmethod
    def from_env() -> "Gpu":
        """A new context chosen as the default one is (``SAOBP_BACKEND``,
        ``SAOBP_ADAPTER``, ``SAOBP_TIMEOUT_S``), but not shared with it."""
    @property
    def adapter(self) -> AdapterInfo:
        """The adapter, like an entry of ``adapters()`` without ``index``."""
    @property
    def name(self) -> str:
        """The adapter's name."""
    @property
    def backend(self) -> str:
        """The adapter's API: "vulkan", "metal", "dx12" or "gl"."""
    @property
    def software(self) -> bool:
        """True for a CPU rasterizer (lavapipe, llvmpipe, WARP, SwiftShader)."""

def adapters(backend: str = "auto") -> List[AdapterInfo]:
    """Every adapter this machine offers, in the order wgpu lists them, as
    dicts (``index``, ``name``, ``backend``, ``device_type``, ``driver``,
    ``driver_info``, ``software``). ``backend`` limits the list to one API.
    Opens no device."""

def default_gpu() -> Gpu:
    """The context the functions use when ``gpu=`` is not given: opened on
    first use from ``SAOBP_BACKEND`` (auto, vulkan, metal, dx12, gl),
    ``SAOBP_ADAPTER`` (part of the adapter's name) and ``SAOBP_TIMEOUT_S``,
    then kept. Raises ``GpuError`` when no adapter matches."""

class HeadSummary(TypedDict):
    """Means of one head's row metrics over its counted rows (query not
    padded, at least one valid key)."""

    entropy: float
    normalized_entropy: float
    sparsity: float
    peak: float
    distance: float
    multi_hop_mass: float
    gtd: float
    rows: int
    """How many rows were counted."""

class MapMetrics(TypedDict):
    heads: List[List[HeadSummary]]
    """``[B][H]`` summaries."""
    batch: List[HeadSummary]
    """Mean over heads, per batch item."""
    overall: HeadSummary
    """Mean over batch items."""
    rows: Dict[str, Float32Array]
    """One ``[B, H, N]`` array per name of ``METRIC_NAMES``."""

class AttentionMetrics(TypedDict, total=False):
    attention: MapMetrics
    """Metrics of ``A``; GTD at λ = 1."""
    refined: MapMetrics
    """Metrics of ``R``; GTD at the λ used (refined modes, ``refined_metrics="full"``)."""
    refined_gtd: Float32Array
    """GTD of ``R`` at the λ used, ``[B, H, N]`` (refined modes)."""

class AttentionResult(TypedDict, total=False):
    output: Float32Array
    """``O`` ``[B, H, N, Dv]``: ``R·V``, or ``A·V`` in plain and flash modes."""
    attention: Float32Array
    """``A`` ``[B, H, N, N]`` with ``return_attention``."""
    refined: Float32Array
    """``R`` ``[B, H, N, N]`` with ``return_refined``."""
    m: Float32Array
    """Multi-hop mass ``[B, H, N]``, whenever it was computed."""
    row_stats: Float32Array
    """``[B, H, N, 3]``: max valid score, softmax denominator, entropy (streaming modes)."""
    metrics: AttentionMetrics
    """With ``metrics=True``."""

def attention(
    q: Array,
    k: Array,
    v: Array,
    lam: Optional[Lambda] = 0.0,
    causal: bool = False,
    mode: Mode = "fused",
    key_mask: Optional[Array] = None,
    scale: Optional[float] = None,
    metrics: bool = False,
    return_attention: bool = False,
    return_refined: bool = False,
    refined_metrics: Literal["full", "from_mass"] = "full",
    gpu: Optional[Gpu] = None,
) -> AttentionResult:
    """Attention of ``q``, ``k``, ``v`` (``[B, H, N, D]``; ``v`` may be
    ``[B, H, N, Dv]``), refined by SAOBP unless the mode is plain or flash.

    Inputs are float32 or float64 (any memory layout); the work runs in
    float32 and results are float32 arrays.

    - ``lam``: SAOBP strength λ >= 0, one number or one per head; 0 is plain
      attention.
    - ``causal``: query ``i`` attends only to keys ``j <= i``.
    - ``mode``: "plain" (``O = A·V``), "fused" (SAOBP in O(N²D), never forming
      the message matrix), "materialized" (``M`` explicit, N³ per head),
      "flash" (plain, streamed, O(N·D) memory) or "streaming" (SAOBP,
      streamed).
    - ``key_mask``: ``[B, N]``, 1 where a key may be attended, 0 for padding
      (float, int or bool).
    - ``scale``: score scale, default ``1/sqrt(D)``.
    - ``metrics``: row metrics and per-head summaries of ``A`` (and ``R``);
      not in the streaming modes, which give ``row_stats``.
    - ``refined_metrics``: "full" (every metric of ``R``; in fused mode this
      forms ``M`` on the side) or "from_mass" (only ``R``'s GTD).
    - ``return_attention``, ``return_refined``: also return ``A``, ``R``.
    - ``gpu``: a ``Gpu``; default ``default_gpu()``.

    Raises ``TypeError`` for other dtypes, ``ValueError`` for bad shapes or
    arguments and ``GpuError`` when the device fails.
    """

class RefineResult(TypedDict, total=False):
    refined: Float32Array
    """``R = (A + λM) / (1 + λm)``, ``[..., N, N]``."""
    m: Float32Array
    """Multi-hop mass ``m_i = Σ_j M_ij``, ``[..., N]``."""
    gtd: Float32Array
    """``λm / (1 + λm)``, ``[..., N]``."""
    messages: Float32Array
    """Two-hop messages ``M``, ``[..., N, N]`` (with ``return_messages``)."""

def refine_map(
    a: Array,
    lam: Optional[Lambda] = 1.0,
    causal: bool = False,
    return_messages: bool = False,
    gpu: Optional[Gpu] = None,
) -> RefineResult:
    """SAOBP on attention maps ``[..., N, N]`` from any source (e.g. a
    transformer's ``output_attentions``), ``M`` materialized (N³ per head).

    The last leading dimension is the heads (for a per-head ``lam``); the
    others are flattened and restored. ``lam`` defaults to 1, the λ at which
    the spec reports a plain map's GTD. ``causal=True`` checks that ``A`` has
    no weight above the diagonal (``R`` of a causal ``A`` is causal).
    """

def metrics(
    p: Array,
    causal: bool = False,
    key_mask: Optional[Array] = None,
    lam: Optional[Lambda] = None,
    gpu: Optional[Gpu] = None,
) -> Dict[str, Float32Array]:
    """Per-row metrics of attention maps ``P`` ``[..., N, N]``: a dict of
    ``[..., N]`` arrays, one per name of ``METRIC_NAMES`` (``weight`` is 1
    where the row counts in summaries).

    ``causal`` and ``key_mask`` (``[..., N]`` without the head dimension, or
    anything that broadcasts to it) set ``n_i``; ``lam`` sets the λ of
    ``gtd`` (default 1).
    """

def refined_metrics(
    a: Array,
    r: Array,
    causal: bool = False,
    key_mask: Optional[Array] = None,
    lam: Optional[Lambda] = None,
    gpu: Optional[Gpu] = None,
) -> Dict[str, Float32Array]:
    """Per-row metrics of refined maps ``R`` ``[..., N, N]`` made from
    attention maps ``A`` of the same shape, as the spec defines them:
    ``R``'s own entropy, normalized entropy, sparsity, peak and distance,
    with ``A``'s multi-hop mass ``m`` and the GTD at ``lam`` (the λ ``R``
    was refined with; default 1). ``metrics(R)`` would report ``R``'s own
    two-hop mass instead. Other arguments and the result as for ``metrics``.
    """
