"""Choose how the bucket recursion runs: ``eager`` (reference), ``compiled`` (torch.compile of the daily
step, CPU or GPU) or ``fused`` (Triton kernel, CUDA only). ``auto`` picks fused on CUDA when available,
otherwise compiled where a C compiler is available, otherwise eager."""

from __future__ import annotations

import functools
import shutil

import torch
from torch import Tensor

from rootzone.errors import ConfigError
from rootzone.physics import equations as eq

RECOMPILE_LIMIT = 64  # guard sets of the compiled daily step (grad modes x dtypes x shapes x devices)


def resolve(physics: str, device: torch.device) -> str:
    """The concrete implementation for a config value and a device."""
    if physics == "auto":
        if device.type == "cuda" and fused_available():
            return "fused"
        return "compiled" if _compiler_available() else "eager"
    if physics == "fused" and not (device.type == "cuda" and fused_available()):
        raise ConfigError("config field 'physics': 'fused' needs a CUDA device and triton; "
                          "use 'auto' to fall back to the best available path")
    return physics


def fused_available() -> bool:
    """True when the fused Triton path can run: a CUDA device and an importable triton."""
    if not torch.cuda.is_available():
        return False
    try:
        from rootzone.physics.fused import triton_available
    except ImportError:
        return False
    return triton_available()


def _compiler_available() -> bool:
    return any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))


@functools.cache
def _compiled_step():
    # dynamic=None: the first call specialises, a second shape makes the batch size symbolic (no recompile
    # per batch size, so differing evaluation chunks never hit the recompile limit)
    return torch.compile(eq.bucket_step, dynamic=None, fullgraph=True)


def run_physics(forcing: Tensor, params: Tensor, impl: str = "eager", state0: Tensor | None = None
                ) -> eq.BucketOutputs:
    """Run the bucket model with a concrete implementation (see :func:`resolve`).

    forcing: [B, T, 4] (P, T, PET, LAI); params: [B, T, 8] physical units, float32 or float64.
    state0: initial storages [3, B] = (W, S, G) in mm at the start of day 0, on params' device (cast to
    params' dtype), e.g. from :func:`rootzone.physics.equations.spinup_state` or the end-of-day storages of a
    previous run (:func:`rootzone.physics.equations.final_state`). It gets no gradient in any implementation.
    ``None`` is the legacy cold start W = 0, S = S_max(day 0)/2, G = 0 (detached), kept until every caller
    passes spun-up states.
    Returns BucketOutputs of [B, T] series: q, et (mm/d), end-of-day w, s, g (mm).
    """
    if impl == "eager":
        return eq.run_buckets(forcing, params, state0)
    if impl == "compiled":
        # one compiled daily step serves the whole process: training (grad), the no-grad record passes and
        # prediction (inference mode), float32 and float64, several batch shapes; each combination is a guard
        # set of its own, which can exceed torch's default of 8 recompiles in a long-lived process (a tuning
        # driver, a test session) and fullgraph=True would then fail hard
        import torch._dynamo

        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return eq.run_buckets(forcing, params, state0, step=_compiled_step())
    if impl == "fused":
        from rootzone.physics.fused import run_buckets_fused

        return run_buckets_fused(forcing, params, state0)
    raise ConfigError(f"config field 'physics': unknown implementation {impl!r}")
