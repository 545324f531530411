"""The torch.compile'd daily step (the default CPU path) equals the float64 eager reference in values and
gradients (forcing and params) from given initial storages, which get no gradient; a run split at a day and
continued from the stored states reproduces the continuous run; several batch sizes and both grad modes run
without hitting the recompile limit."""

import torch

from rootzone.physics import verify
from rootzone.physics.dispatch import resolve, run_physics
from rootzone.physics.equations import final_state, run_buckets, spinup


def _case(b: int, t: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 forcing [b, t, 4], params [b, t, 8] and initial storages [3, b] (S above S_max(day 0) on some)."""
    g = torch.Generator().manual_seed(seed)
    forcing = torch.rand(b, t, 4, generator=g, dtype=torch.float64)
    forcing[..., 0] *= 20
    forcing[..., 1] = forcing[..., 1] * 30 - 10
    forcing[..., 2] *= 5
    params = torch.rand(b, t, 8, generator=g, dtype=torch.float64) * 0.6 + 0.2
    params[..., 0] *= 400
    params[..., 7] *= 0.3
    u = torch.rand(3, b, generator=g, dtype=torch.float64)
    state0 = torch.stack([50 * u[0], 1.3 * params[:, 0, 0] * u[1], 300 * u[2]])
    return forcing, params, state0


def compiled(forcing, params, state0=None):
    return run_physics(forcing, params, "compiled", state0)


def test_compiled_matches_float64_reference():
    for i, b in enumerate((4, 6, 9, 3)):
        forcing, params, state0 = _case(b, seed=i)
        err = verify.compare(compiled, forcing, params, torch.Generator().manual_seed(i),
                             state0=None if b == 9 else state0)  # b = 9: the legacy cold start
        assert verify.within_targets(err), (b, err)
        with torch.no_grad():
            torch.testing.assert_close(compiled(forcing.float(), params.float(), state0.float()).s,
                                       run_buckets(forcing, params, state0).s.float())


def test_compiled_initial_storages_get_no_gradient():
    forcing, params, state0 = (x.float().requires_grad_() for x in _case(4, seed=7))  # the graph compiled above
    out = compiled(forcing, params, state0)
    grads = torch.autograd.grad(out.tws.sum() + out.q.sum(), [forcing, params, state0], allow_unused=True)
    assert grads[2] is None and all(torch.isfinite(g).all() for g in grads[:2])


def test_compiled_split_run_reproduces_continuous_run():
    forcing, params, state0 = (x.float() for x in _case(5, t=24, seed=3))
    with torch.no_grad():
        whole = compiled(forcing, params, state0)
        k = 10
        first = compiled(forcing[:, :k].contiguous(), params[:, :k].contiguous(), state0)
        second = compiled(forcing[:, k:].contiguous(), params[:, k:].contiguous(), final_state(first))
    for w, a, b in zip(whole, first, second):
        torch.testing.assert_close(torch.cat([a, b], dim=1), w, rtol=1e-6, atol=1e-5)


def test_compiled_spinup_matches_eager():
    forcing, params, _ = (x.float() for x in _case(5, t=40, seed=4))
    ref, got = spinup(forcing, params, "eager"), spinup(forcing, params, "compiled")
    assert got.cycles == ref.cycles
    torch.testing.assert_close(got.state, ref.state, rtol=1e-5, atol=1e-3)


def test_auto_resolves_to_a_cpu_path():
    assert resolve("auto", torch.device("cpu")) in ("compiled", "eager")
    assert resolve("eager", torch.device("cpu")) == "eager"


def test_many_guard_sets_in_one_process_do_not_fail():
    """A long-lived process (a test session, a tuning driver) runs the one compiled daily step under more
    guard sets than torch's default recompile limit of 8 (grad / no-grad / inference mode x float32 / float64 x
    parameters with and without gradient x batch sizes): every call must still run, and equal the reference."""
    import itertools

    torch._dynamo.reset()
    modes = (torch.enable_grad, torch.no_grad, torch.inference_mode)
    for mode, dtype, grad, b in itertools.product(modes, (torch.float32, torch.float64), (True, False), (3, 5)):
        forcing, params, state0 = (x.to(dtype) for x in _case(b, t=5))
        params.requires_grad_(grad and mode is torch.enable_grad)
        with mode():
            got = compiled(forcing, params, state0)
            want = run_buckets(forcing, params, state0)
        torch.testing.assert_close(got.q, want.q)
