"""How a bucket-model implementation is proven equal to the float64 eager reference (``equations.run_buckets``):
the tests (CPU, Triton interpreter) and ``benchmarks/bench_physics.py`` (full sizes on the GPU, before timing)
share these functions, so both hold an implementation to the same measure.

Values: the five outputs (q, et, w, s, g) [B, T]. Gradients: of the inputs forcing [B, T, 4] and params
[B, T, 8] under random cotangents on all five outputs. Initial storages ``state0`` [3, B] (float64, optional;
None = the legacy cold start) are an input without gradient: the run under test gets their float32 copy.
Error: :func:`rel_error`, per channel against the channel's own scale. Targets for float32 against float64:
VALUE_RTOL on values, GRAD_RTOL on gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rootzone.physics.equations import BucketOutputs, run_buckets

VALUE_RTOL = 1e-5
GRAD_RTOL = 1e-4
NOISE_FLOOR = 1e-6  # a channel whose reference is below 1e-6 of the largest channel is measured against that

Reference = tuple[list[Tensor], tuple[Tensor, Tensor]]  # output values, (grad forcing, grad params)


def rel_error(got: Tensor, ref: Tensor) -> float:
    """Largest error relative to the scale of its series: max over channels of max_{b,t} |got - ref| /
    max_{b,t} |ref| for [B, T] or [B, T, C] (a channel that is exactly zero in the reference must be zero).
    NaN anywhere in ``got`` gives NaN, which fails every ``<=`` check."""
    got, ref = got.detach().double(), ref.detach().double()
    if got.dim() == 2:
        got, ref = got[..., None], ref[..., None]
    num = (got - ref).abs().amax((0, 1))
    den = ref.abs().amax((0, 1))
    den = torch.maximum(den, NOISE_FLOOR * den.max())  # a channel at rounding-noise level of the others
    return float(torch.where(den > 0, num / den.clamp_min(1e-300), num * 1e300).max())


def draw_cotangents(forcing: Tensor, generator: torch.Generator) -> list[Tensor]:
    """Five float64 [B, T] cotangents, one per output, on the inputs' device."""
    return [torch.randn(forcing.shape[:2], generator=generator, dtype=torch.float64, device=forcing.device)
            for _ in range(5)]


def reference(forcing: Tensor, params: Tensor, cotangents: list[Tensor], state0: Tensor | None = None
              ) -> Reference:
    """Float64 eager values and input gradients (``forcing``, ``params``, ``state0`` float64)."""
    f64, p64 = forcing.clone().requires_grad_(), params.clone().requires_grad_()
    out = run_buckets(f64, p64, state0)
    grads = torch.autograd.grad(list(out), [f64, p64], cotangents)
    return [o.detach() for o in out], grads


def errors_against(run: Callable[..., BucketOutputs], forcing: Tensor, params: Tensor,
                   cotangents: list[Tensor], ref: Reference,
                   before_run: Callable[[], None] | None = None, state0: Tensor | None = None) -> dict[str, float]:
    """Relative errors of ``run`` on float32 copies of the float64 inputs against ``ref`` (values,
    grad_forcing, grad_params) and the count of non-finite outputs and gradients. ``run(forcing, params)``,
    or ``run(forcing, params, state0)`` when ``state0`` is given (``ref`` must be made with the same state0).
    ``before_run`` is called just before ``run`` (the benchmark poisons CUDA's allocator there)."""
    f32, p32 = forcing.float().requires_grad_(), params.float().requires_grad_()
    if before_run is not None:
        before_run()
    out = run(f32, p32) if state0 is None else run(f32, p32, state0.float())
    gf, gp = torch.autograd.grad(list(out), [f32, p32], [c.float() for c in cotangents])
    assert all(o.dtype == torch.float32 and o.shape == forcing.shape[:2] for o in out)
    ref_values, (ref_gf, ref_gp) = ref
    non_finite = sum(int((~torch.isfinite(x)).sum()) for x in (*out, gf, gp))
    return {"values": max(rel_error(o, r) for o, r in zip(out, ref_values)),
            "grad_forcing": rel_error(gf, ref_gf), "grad_params": rel_error(gp, ref_gp), "non_finite": non_finite}


def compare(run: Callable[..., BucketOutputs], forcing: Tensor, params: Tensor, generator: torch.Generator,
            state0: Tensor | None = None) -> dict[str, float]:
    """:func:`errors_against` a fresh float64 reference, cotangents drawn from ``generator``."""
    cotangents = draw_cotangents(forcing, generator)
    return errors_against(run, forcing, params, cotangents, reference(forcing, params, cotangents, state0),
                          state0=state0)


def within_targets(err: dict[str, float]) -> bool:
    """All errors within VALUE_RTOL / GRAD_RTOL and nothing non-finite."""
    return bool(err.get("non_finite", 0) == 0 and err["values"] <= VALUE_RTOL
                and err["grad_forcing"] <= GRAD_RTOL and err["grad_params"] <= GRAD_RTOL)
