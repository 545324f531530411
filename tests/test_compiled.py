"""The torch.compile'd daily step (the default CPU path) equals the eager reference in values and gradients,
for several batch sizes and both grad modes, without hitting the recompile limit."""

import torch

from rootzone.physics.dispatch import resolve, run_physics
from rootzone.physics.equations import run_buckets


def test_compiled_matches_eager():
    torch.manual_seed(0)
    for b in (4, 6, 9, 3):
        forcing = torch.rand(b, 30, 4)
        forcing[..., 0] *= 20
        forcing[..., 1] = forcing[..., 1] * 30 - 10
        forcing[..., 2] *= 5
        params = torch.rand(b, 30, 8) * 0.6 + 0.2
        params[..., 0] *= 400
        params[..., 7] *= 0.3
        p1 = params.clone().requires_grad_(True)
        p2 = params.clone().requires_grad_(True)
        out_c = run_physics(forcing, p1, "compiled")
        out_e = run_buckets(forcing, p2)
        for name in ("q", "et", "w", "s", "g"):
            torch.testing.assert_close(getattr(out_c, name), getattr(out_e, name), rtol=1e-5, atol=1e-5)
        (out_c.q.sum() + out_c.tws.sum()).backward()
        (out_e.q.sum() + out_e.tws.sum()).backward()
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(run_physics(forcing, params, "compiled").s, out_e.s.detach())


def test_auto_resolves_to_a_cpu_path():
    assert resolve("auto", torch.device("cpu")) in ("compiled", "eager")
    assert resolve("eager", torch.device("cpu")) == "eager"
