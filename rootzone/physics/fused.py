"""Fused bucket recursion (DESIGN §8) as one ``torch.library`` op, so ``torch.compile(fullgraph=True)`` treats
the whole T-day loop as a single node with a hand-written backward.

Ops (all tensors float32; planes ``[C, T, B]`` = channel, day, basin, and ``state0 [3, B]``, any strides):

* ``rootzone::buckets_fwd(forcing [4, T, B], params [8, T, B], state0 [3, B]) -> out [5, T, B]`` with ``out`` =
  (q, et in mm/d; w, s, g in mm), end-of-day values, starting from the storages ``state0`` = (W, S, G) in mm at
  the start of day 0 (any values >= 0; an S above the day-0 S_max is released as overflow on day 0).
* ``rootzone::buckets_bwd(forcing, params, state0, out, grad_out [5, T, B], need_forcing) ->
  (grad_forcing [4, T, B] or an empty tensor when ``need_forcing`` is False, grad_params [8, T, B])``,
  gradients laid out with the strides of their inputs.
* Autograd: gradients flow to ``forcing`` and ``params`` only. ``state0`` gets none (its gradient is None,
  i.e. zero, even if it requires grad): initial storages are constants from a no-grad spin-up or stored pass
  (DESIGN §4), so the adjoint of the day-0 storages is dropped, and no parameter (in particular not day 0's
  S_max) receives a gradient through the initial state.

Implementations by device: CUDA always runs the Triton kernels of :mod:`rootzone.physics.fused_kernels`
(never a CPU fallback: without Triton it raises). CPU runs the same Triton kernels under Triton's interpreter
when ``TRITON_INTERPRET=1`` was set before this module was imported (for tests), otherwise
:mod:`rootzone.physics.fused_cpu` (reference forward, the same hand-written adjoint in torch ops). Fake
(meta) implementations give shapes for ``torch.compile``.

``run_buckets_fused(forcing [B, T, 4], params [B, T, 8], state0 [3, B] | None)`` is the drop-in replacement of
``equations.run_buckets`` used by ``dispatch.run_physics`` (``state0=None``: the legacy cold start W = 0,
S = S_max(day 0)/2, G = 0, detached): it upcasts to float32 (bf16 or fp16 inputs from an autocast network;
float64 is computed in float32 too), passes permuted views (no copy), and returns
``BucketOutputs`` of float32 ``[B, T]`` views (strides (1, B)) of the time-major output.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from rootzone.physics import fused_cpu
from rootzone.physics.equations import BucketOutputs, as_state0

try:
    from rootzone.physics import fused_kernels as _kernels
except ImportError:  # triton missing: only the CPU path of the op exists
    _kernels = None


def triton_available() -> bool:
    """True when the Triton kernels can be built (triton importable)."""
    return _kernels is not None


def interpreting() -> bool:
    """True when the kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1 at import time)."""
    return _kernels is not None and _kernels.interpreted()


def uses_triton(device: torch.device) -> bool:
    """True when the op runs the Triton kernels for tensors on ``device`` (CUDA always; CPU only under the
    interpreter); raises when no fused implementation exists there (CUDA without triton, other devices)."""
    if device.type == "cuda":
        if not triton_available():
            raise RuntimeError("fused bucket physics on CUDA needs triton (pip install triton)")
        if _kernels.interpreted():
            raise RuntimeError("TRITON_INTERPRET=1 is set: the fused kernels cannot run on CUDA tensors")
        return True
    if device.type == "cpu":
        return interpreting()
    raise RuntimeError(f"no fused bucket implementation for device {device}")


def _check(forcing: Tensor, params: Tensor, state0: Tensor) -> None:
    if forcing.dim() != 3 or params.dim() != 3 or forcing.shape[0] != 4 or params.shape[0] != 8:
        raise ValueError(f"expected forcing [4, T, B] and params [8, T, B], got {tuple(forcing.shape)} and "
                         f"{tuple(params.shape)}")
    if forcing.shape[1:] != params.shape[1:]:
        raise ValueError(f"forcing {tuple(forcing.shape)} and params {tuple(params.shape)} disagree on "
                         "[T, B]")
    if state0.dim() != 2 or state0.shape[0] != 3 or state0.shape[1] != forcing.shape[2]:
        raise ValueError(f"expected state0 [3, B] for B = {forcing.shape[2]}, got {tuple(state0.shape)}")
    if forcing.dtype != torch.float32 or params.dtype != torch.float32 or state0.dtype != torch.float32:
        raise TypeError(f"fused buckets compute in float32, got {forcing.dtype}, {params.dtype} and "
                        f"{state0.dtype}")
    if forcing.device != params.device or state0.device != params.device:
        raise ValueError(f"forcing on {forcing.device}, params on {params.device}, state0 on {state0.device}")


@torch.library.custom_op("rootzone::buckets_fwd", mutates_args=())
def buckets_fwd(forcing: Tensor, params: Tensor, state0: Tensor) -> Tensor:
    """Outputs [5, T, B] (q, et, w, s, g) of the bucket model from the storages state0 [3, B]; see the module
    docstring."""
    _check(forcing, params, state0)
    _, n_days, n_basins = forcing.shape
    if n_days == 0 or n_basins == 0:
        return forcing.new_empty((5, n_days, n_basins))
    if uses_triton(forcing.device):
        out = forcing.new_empty((5, n_days, n_basins))
        with torch.cuda.device(forcing.device) if forcing.is_cuda else contextlib.nullcontext():
            _kernels.launch_forward(forcing, params, state0, out)
        return out
    return fused_cpu.forward_planes(forcing, params, state0)


@buckets_fwd.register_fake
def _buckets_fwd_fake(forcing: Tensor, params: Tensor, state0: Tensor) -> Tensor:
    _check(forcing, params, state0)
    return forcing.new_empty((5, forcing.shape[1], forcing.shape[2]))


@torch.library.custom_op("rootzone::buckets_bwd", mutates_args=())
def buckets_bwd(forcing: Tensor, params: Tensor, state0: Tensor, out: Tensor, grad_out: Tensor,
                need_forcing: bool) -> tuple[Tensor, Tensor]:
    """(grad_forcing, grad_params) by the reverse sweep (no gradient for state0); see the module docstring."""
    _check(forcing, params, state0)
    grad_params = torch.empty_like(params)
    grad_forcing = torch.empty_like(forcing) if need_forcing else forcing.new_empty(0)
    if forcing.shape[1] == 0 or forcing.shape[2] == 0:
        return grad_forcing, grad_params
    grad_out = grad_out.float()
    if uses_triton(forcing.device):
        with torch.cuda.device(forcing.device) if forcing.is_cuda else contextlib.nullcontext():
            _kernels.launch_backward(forcing, params, state0, out, grad_out,
                                     grad_forcing if need_forcing else None, grad_params)
        return grad_forcing, grad_params
    gf, gp = fused_cpu.backward_planes(forcing, params, state0, out, grad_out)
    grad_params.copy_(gp)
    if need_forcing:
        grad_forcing.copy_(gf)
    return grad_forcing, grad_params


@buckets_bwd.register_fake
def _buckets_bwd_fake(forcing: Tensor, params: Tensor, state0: Tensor, out: Tensor, grad_out: Tensor,
                      need_forcing: bool) -> tuple[Tensor, Tensor]:
    grad_forcing = torch.empty_like(forcing) if need_forcing else forcing.new_empty(0)
    return grad_forcing, torch.empty_like(params)


def _setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2], output)


def _backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor, None]:
    forcing, params, state0, out = ctx.saved_tensors
    need_forcing = bool(ctx.needs_input_grad[0])
    grad_forcing, grad_params = torch.ops.rootzone.buckets_bwd(forcing, params, state0, out, grad_out,
                                                               need_forcing)
    return (grad_forcing if need_forcing else None), grad_params, None  # state0: no gradient (the contract)


buckets_fwd.register_autograd(_backward, setup_context=_setup_context)


def run_buckets_fused(forcing: Tensor, params: Tensor, state0: Tensor | None = None) -> BucketOutputs:
    """Fused equivalent of ``equations.run_buckets(forcing, params, state0)``.

    forcing: [B, T, 4] (P mm/d, T °C, PET mm/d, LAI m²/m²); params: [B, T, 8] physical units (PARAM_NAMES
    order); state0: initial storages [3, B] = (W, S, G) in mm, no gradient; ``None`` = the legacy cold start
    (detached). Any float dtype; computed in float32. Returns BucketOutputs of float32 [B, T] views.
    """
    if forcing.dim() != 3 or params.dim() != 3:
        raise ValueError(f"expected forcing [B, T, 4] and params [B, T, 8], got {tuple(forcing.shape)} and "
                         f"{tuple(params.shape)}")
    params = params.float()
    out = buckets_fwd(forcing.float().permute(2, 1, 0), params.permute(2, 1, 0), as_state0(state0, params))
    return BucketOutputs(*(out[k].transpose(0, 1) for k in range(5)))
