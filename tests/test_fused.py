"""The fused bucket op against the float64 eager reference, in values and gradients, from given initial
storages state0 [3, B] (which get no gradient) and from the legacy cold start; a run split at a day and
continued from the stored states reproduces the continuous run; exact ties of every min/max (PET = 0, P = 0,
LAI = 0, T = 0 °C, S = S_max, S = l_p S_max, empty S) take the reference's sub-gradient.

Three implementations are checked: the Triton kernels under Triton's CPU interpreter (in one subprocess,
because TRITON_INTERPRET is read when the kernels are decorated), the CPU implementation of the op, and the
Triton kernels compiled ahead of time for an H100 (sm_90) to prove they build for CUDA.

Errors are relative to the scale of each series: max |fused - ref| / max |ref| per output or gradient channel
over all basins and days. Per-element relative errors would measure float32 cancellation inside the reference
formula itself (e.g. a small excess = inflow - infiltration), not the kernel; a gradient channel that is
nearly zero everywhere (e.g. d/dT where no snow melts) is measured against 1e-6 of the largest gradient
channel instead of its own noise. The float32 result must be within 1e-5 of float64 in values, 1e-4 in
gradients.

Run this file as a script (``TRITON_INTERPRET=1 python tests/test_fused.py``) to print the interpreter report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rootzone.config import DEFAULT_PARAM_RANGES
from rootzone.errors import ConfigError
from rootzone.physics import dispatch, fused, verify
from rootzone.physics.equations import PARAM_NAMES, final_state, run_buckets
from rootzone.physics.fused import run_buckets_fused
from rootzone.physics.verify import GRAD_RTOL, VALUE_RTOL, rel_error

LOW = torch.tensor([DEFAULT_PARAM_RANGES[n][0] for n in PARAM_NAMES], dtype=torch.float64)
HIGH = torch.tensor([DEFAULT_PARAM_RANGES[n][1] for n in PARAM_NAMES], dtype=torch.float64)
KINDS = ("random", "zero_precipitation", "all_snow", "smax_shrinks_below_s", "large_beta", "tiny_smax",
         "kg_max", "parameter_bounds", "empty_stores", "ties")
REPO = Path(__file__).resolve().parents[1]


def make_case(kind: str, seed: int, b: int = 12, t: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 forcing [b, t, 4] and params [b, t, 8] of one scenario."""
    gen = torch.Generator().manual_seed(seed)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    forcing = torch.stack([u(b, t) * 30 * (u(b, t) < 0.5), u(b, t) * 30 - 10, u(b, t) * 6, u(b, t) * 5], -1)
    params = LOW + (HIGH - LOW) * u(b, t, 8)
    if kind == "zero_precipitation":
        forcing[..., 0] = 0.0
    elif kind == "all_snow":
        # -20 °C, not colder: at -30 °C the float64 reference's own 1 - sigmoid(30) loses 3 digits
        forcing[..., 1] = -20.0
    elif kind == "smax_shrinks_below_s":
        params[:, : t // 2, 0] = 1500.0
        params[:, t // 2 :, 0] = 20.0
        forcing[:, : t // 2, 0] = 60.0
    elif kind == "large_beta":
        params[..., 1] = HIGH[1]
    elif kind == "tiny_smax":
        params[..., 0] = LOW[0]
    elif kind == "kg_max":
        params[..., 7] = HIGH[7]
    elif kind == "parameter_bounds":
        params[::2] = LOW
        params[1::2] = HIGH
    elif kind == "empty_stores":
        forcing[..., 0] = 0.0
        forcing[..., 2] = 50.0
        params[..., 3] = HIGH[3]
    elif kind == "ties":
        # exact ties, as real data have them: PET = 0 (winter days: interception min(min(P_rain, c_i LAI), PET)
        # ties at 0 when there is no rain or no LAI), P = 0, LAI = 0, T = 0 °C (melt threshold)
        for channel, share in ((2, 0.5), (0, 0.4), (3, 0.3), (1, 0.15)):
            forcing[..., channel] = torch.where(u(b, t) < share, 0.0, forcing[..., channel])
        # day 0 (storages from make_state0): basins 1::4 start at S = l_p S_max exactly (dyadic numbers, exact in
        # float32 and float64) with no input and PET > 0: the moisture-stress tie min(1, S / (l_p S_max));
        # basins 2::4 start empty with no input and PET = 0: the ET tie min(0, S = 0)
        params[1::4, 0, 0], params[1::4, 0, 4] = 200.0, 0.5
        forcing[1::4, 0, :3] = torch.tensor([0.0, -5.0, 4.0], dtype=torch.float64)
        forcing[2::4, 0, :3] = torch.tensor([0.0, -5.0, 0.0], dtype=torch.float64)
        # float32-representable inputs, so that float32 and float64 see the same ties
        forcing, params = forcing.float().double(), params.float().double()
    elif kind != "random":
        raise ValueError(kind)
    return forcing, params


def make_state0(kind: str, params: torch.Tensor, seed: int) -> torch.Tensor:
    """float64 initial storages [3, B] (W, S, G in mm, float32-representable): W 0-100, S 0-1.3 x S_max(day 0)
    (overflow on day 0 where above), G 0-500. For ``ties``: S = S_max(day 0) exactly on basins 0::4 (the
    overflow, wetness-clamp and infiltration ties), l_p S_max = 100 mm on 1::4, 0 on 2::4 (see make_case)."""
    gen = torch.Generator().manual_seed(50_000 + seed)
    u = torch.rand(3, params.shape[0], generator=gen, dtype=torch.float64)
    state0 = torch.stack([100 * u[0], 1.3 * params[:, 0, 0] * u[1], 500 * u[2]])
    if kind == "ties":
        state0[1, 0::4] = params[0::4, 0, 0]
        state0[:2, 1::4] = torch.tensor([0.0, 100.0], dtype=torch.float64)[:, None]
        state0[:2, 2::4] = 0.0
    return state0.float().double()


def compare(run, forcing: torch.Tensor, params: torch.Tensor, seed: int = 0,
            state0: torch.Tensor | None = None) -> dict[str, float]:
    """Relative errors of ``run`` (float32 inputs) against float64 ``run_buckets``, values and gradients
    under random cotangents on all five outputs (rootzone.physics.verify, shared with the benchmark), from
    the initial storages ``state0`` (None: the legacy cold start)."""
    return verify.compare(run, forcing, params, torch.Generator().manual_seed(10_000 + seed), state0)


def split_error(run, forcing: torch.Tensor, params: torch.Tensor, state0: torch.Tensor, k: int) -> float:
    """Largest |split - continuous| relative to the series' scale (verify.rel_error) of ``run`` (float32) on
    days 0..k-1 from state0 followed by days k.. from the stored end-of-day storages of day k-1."""
    f, p, s0 = forcing.float(), params.float(), state0.float()
    with torch.no_grad():
        whole = run(f, p, s0)
        first = run(f[:, :k], p[:, :k], s0)
        second = run(f[:, k:], p[:, k:], final_state(first))
    return max(rel_error(torch.cat([a, b], dim=1), w) for w, a, b in zip(whole, first, second))


def assert_close(err: dict[str, float], float32_err: dict[str, float] | None = None) -> None:
    """Errors within VALUE_RTOL / GRAD_RTOL, or, where ``float32_err`` (the error of the float32 eager
    reference itself) is given, within twice that when float32 rounding of the formula is the larger."""
    slack = float32_err or {}
    assert err["values"] <= max(VALUE_RTOL, 2 * slack.get("values", 0.0)), (err, slack)
    assert err["grad_forcing"] <= max(GRAD_RTOL, 2 * slack.get("grad_forcing", 0.0)), (err, slack)
    assert err["grad_params"] <= max(GRAD_RTOL, 2 * slack.get("grad_params", 0.0)), (err, slack)


def raw_kernel_errors(fp: torch.Tensor, pp: torch.Tensor, s0: torch.Tensor, cot: list[torch.Tensor],
                      ref: verify.Reference, block: int, stages: int | None = None, need_forcing: bool = True
                      ) -> dict[str, object]:
    """Run the raw kernels (fused_kernels.launch_*) on float32 planes fp [4, T, B], pp [8, T, B] and initial
    storages s0 [3, B] into NaN-filled buffers, with the cotangents ``cot`` (five float64 [B, T]); errors
    against ``ref`` (verify.reference from the same storages) and whether every output element was written."""
    from rootzone.physics import fused_kernels as fk

    stages = fk.NUM_STAGES if stages is None else stages
    ref_values, (ref_gf, ref_gp) = ref
    out = torch.full((5, *fp.shape[1:]), float("nan"), device=fp.device)
    gf = torch.full_like(fp, float("nan")) if need_forcing else None
    gp = torch.full_like(pp, float("nan"))
    fk.launch_forward(fp, pp, s0, out, block=block, stages=stages)
    fk.launch_backward(fp, pp, s0, out, torch.stack([c.T for c in cot]).float().to(fp.device), gf, gp,
                       block=block, stages=stages)
    written = bool(torch.isfinite(out).all() and torch.isfinite(gp).all()
                   and (gf is None or torch.isfinite(gf).all()))
    return {"all_written": written,
            "values": max(rel_error(out[k].T.cpu(), r) for k, r in enumerate(ref_values)),
            "grad_params": rel_error(gp.permute(2, 1, 0).cpu(), ref_gp),
            "grad_forcing": 0.0 if gf is None else rel_error(gf.permute(2, 1, 0).cpu(), ref_gf)}


# ---------------------------------------------------------------- Triton kernels under the interpreter
def interpreter_report() -> dict[str, object]:
    """Run in the subprocess (TRITON_INTERPRET=1): errors per scenario from given initial storages and once
    from the legacy cold start, a split run against the continuous one, and the raw kernels' coverage of
    NaN-prefilled buffers for several layouts (of the planes and of state0), multi-program grids and the
    params-only backward."""
    assert fused.interpreting(), "TRITON_INTERPRET=1 was not in effect"
    report: dict[str, object] = {}
    for i, k in enumerate(KINDS):
        forcing, params = make_case(k, seed=i, t=32)
        report[k] = compare(run_buckets_fused, forcing, params, seed=i, state0=make_state0(k, params, i))
    report["random_cold_start"] = compare(run_buckets_fused, *make_case("random", seed=20, t=32), seed=20)
    forcing, params = make_case("random", seed=21, b=5, t=12)
    report["split"] = split_error(run_buckets_fused, forcing, params, make_state0("random", params, 21), k=5)
    forcing, params = make_case("random", seed=99, b=13, t=9)
    state0 = make_state0("random", params, 99)
    cot = verify.draw_cotangents(forcing, torch.Generator().manual_seed(99))
    ref = verify.reference(forcing, params, cot, state0)
    layouts = {"batch_first": (forcing.float().permute(2, 1, 0), params.float().permute(2, 1, 0),
                               state0.T.float().contiguous().T),  # state0 with basin stride 3
               "time_major": (forcing.float().permute(2, 1, 0).contiguous(),
                              params.float().permute(2, 1, 0).contiguous(), state0.float())}
    for name, (fp, pp, s0) in layouts.items():
        for need_forcing in (True, False):  # block 4: 4 programs, the last one masked
            report[f"coverage_{name}_{need_forcing}"] = raw_kernel_errors(fp, pp, s0, cot, ref, block=4,
                                                                          need_forcing=need_forcing)
    return report


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", [*KINDS, "random_cold_start"])
def test_triton_kernels_match_reference(interpreted, kind):
    assert_close(interpreted[kind])


def test_triton_kernels_split_run_reproduces_continuous_run(interpreted):
    assert interpreted["split"] <= 1e-6


@pytest.mark.parametrize("layout", ["batch_first", "time_major"])
@pytest.mark.parametrize("need_forcing", [True, False])
def test_triton_kernels_write_every_element(interpreted, layout, need_forcing):
    rep = interpreted[f"coverage_{layout}_{need_forcing}"]
    assert rep["all_written"], rep
    assert_close(rep)


def _sm90_build(kernel: str, stages: int) -> dict:
    """benchmarks/kernel_sass.py's reading of an sm_90 build (block 128, time-major), or a skip."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import kernel_sass

    fk = pytest.importorskip("rootzone.physics.fused_kernels")

    if fk.interpreted():
        pytest.skip("TRITON_INTERPRET is set in this process")
    try:
        return kernel_sass.analyse(kernel, fk.BLOCK_B, stages, "time_major")
    except (RuntimeError, FileNotFoundError) as exc:  # no ptxas / cuobjdump in this triton install
        pytest.skip(f"cannot build or read CUDA binaries here: {exc}")


@pytest.mark.parametrize(("kernel", "loads", "stores"), [("_forward_kernel", 12, 5), ("_backward_kernel", 20, 12)])
def test_triton_kernels_compile_for_h100(kernel, loads, stores):
    """Ahead-of-time sm_90 build (no GPU needed), read back as SASS: no register spills; each simulated day
    moves only its own inputs and outputs (4 bytes per basin each); with the default pipeline depth every
    load of a day is a cp.async issued days ahead (LDGSTS), never a load the day waits on (LDG), and with
    stages=1 the same loads are plain LDGs (so the reading can tell the two apart). The three loads of state0
    happen once per basin, before the loop."""
    fk = pytest.importorskip("rootzone.physics.fused_kernels")  # skip, not error, without triton

    assert fk.NUM_STAGES > 1
    pipelined, plain = _sm90_build(kernel, fk.NUM_STAGES), _sm90_build(kernel, 1)
    for build in (pipelined, plain):
        assert build["spill_bytes"] == 0, build
        assert build["per_day"]["STG"] == stores, build
        assert build["bytes_per_basin_day"] == 4 * (loads + stores), build
    assert pipelined["per_day"]["LDG"] == 0 and pipelined["per_day"]["LDGSTS"] == loads, pipelined
    assert plain["per_day"]["LDG"] == loads and plain["per_day"]["LDGSTS"] == 0, plain


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not fused.triton_available(),
                                reason="needs a CUDA GPU and triton (run on the device machine)")


def launch_config_errors(kind: str, t: int, device: str, blocks, stages) -> list[dict]:
    """Errors of the raw kernels on ``device`` against float64 for each (block, stages), with the float32
    eager path's own error as the bar where float32 rounding of the formula is larger (tiny T)."""
    forcing, params = make_case(kind, seed=t, b=130, t=t)
    state0 = make_state0(kind, params, seed=t)
    cot = verify.draw_cotangents(forcing, torch.Generator().manual_seed(t))
    ref = verify.reference(forcing, params, cot, state0)
    eager32 = verify.errors_against(run_buckets, forcing, params, cot, ref, state0=state0)
    fp, pp = (x.float().permute(2, 1, 0).contiguous().to(device) for x in (forcing, params))
    s0 = state0.float().to(device)
    return [{"config": (block, n_stages), "eager32": eager32,
             **raw_kernel_errors(fp, pp, s0, cot, ref, block=block, stages=n_stages)}
            for block in blocks for n_stages in stages]


@needs_cuda
@pytest.mark.parametrize("t", [1, 2, 3, 37])
@pytest.mark.parametrize("kind", ["random", "all_snow", "smax_shrinks_below_s", "parameter_bounds", "ties"])
def test_cuda_kernels_match_reference_at_every_launch_config(kind, t):
    """On a GPU: the compiled kernels (not the interpreter) against float64, for runs shorter than the
    pipeline (T < stages: the prologue's predicated loads), a partial last program (B = 130), and blocks
    and stages across the benchmark's sweep. Buffers start as NaN, so an element never written fails."""
    for row in launch_config_errors(kind, t, "cuda", blocks=(32, 128, 256), stages=(1, 2, 3, 4)):
        assert row["all_written"], row
        assert_close(row, row["eager32"])


# ---------------------------------------------------------------- the op's CPU implementation
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_op_matches_reference(kind):
    assert not fused.interpreting()
    forcing, params = make_case(kind, seed=3)
    assert_close(compare(run_buckets_fused, forcing, params, state0=make_state0(kind, params, 3)))


def test_cpu_op_matches_reference_cold_start():
    assert_close(compare(run_buckets_fused, *make_case("random", seed=3)))


@settings(max_examples=int(os.environ.get("FUSED_EXAMPLES", 8)), deadline=None)
@given(seed=st.integers(0, 2**20), b=st.integers(1, 9), t=st.integers(1, 30))
def test_cpu_op_matches_reference_random_shapes(seed, b, t):
    """Tiny random batches can be ill-conditioned in float32 (e.g. b=1, t=3 where every q is ~1e-3 mm, the
    difference of inflow and infiltration of a few mm): there the float32 eager reference sets the bar."""
    forcing, params = make_case("random", seed, b=b, t=t)
    state0 = make_state0("random", params, seed)
    assert_close(compare(run_buckets_fused, forcing, params, seed=seed, state0=state0),
                 compare(run_buckets, forcing, params, seed=seed, state0=state0))


@pytest.mark.parametrize("k", [1, 7, 19])
def test_cpu_op_split_run_reproduces_continuous_run(k):
    forcing, params = make_case("random", seed=12, b=6, t=20)
    assert split_error(run_buckets_fused, forcing, params, make_state0("random", params, 12), k) <= 1e-6


def test_initial_storages_get_no_gradient():
    """state0 gets no gradient (even when it requires one), and neither does day 0's S_max through the
    initial S: with constant capacity, no input and no moisture stress the last S is S(0) minus ET, so its
    gradient with respect to S_max(day 0) is 0 (the old cold start S(0) = S_max(0)/2 gave 0.5), also from the
    legacy cold start. Forcing without requires_grad takes the params-only backward."""
    forcing, params = make_case("random", seed=5, b=3, t=6)
    forcing[..., 0] = 0.0
    params[..., 0] = 200.0  # constant capacity: no overflow, and ET (<= 9 mm/d) never empties S(0) = 100 mm
    params[..., 4] = LOW[4]  # no moisture stress: the last S depends on S(0) only additively
    given_state = torch.tensor([[0.0, 0.0, 0.0], [100.0, 80.0, 150.0], [10.0, 0.0, 40.0]], dtype=torch.float64)
    for state0 in (None, given_state):
        p64 = params.clone().requires_grad_()
        (ref,) = torch.autograd.grad(run_buckets(forcing, p64, state0).s[:, -1].sum(), [p64])
        assert (ref[:, 0, 0] == 0).all()
        p32 = params.float().requires_grad_()
        s32 = None if state0 is None else state0.float().requires_grad_()
        out = run_buckets_fused(forcing.float(), p32, s32)
        (got,) = torch.autograd.grad(out.s[:, -1].sum(), [p32])
        assert rel_error(got, ref) <= GRAD_RTOL and (got[:, 0, 0] == 0).all()
    out = run_buckets_fused(forcing.float(), params.float().requires_grad_(), s32)
    assert torch.autograd.grad(out.tws.sum() + out.q.sum(), [s32], allow_unused=True) == (None,)


def test_bf16_inputs_run_in_float32():
    forcing, params = make_case("random", seed=6, b=4, t=10)
    p16 = params.to(torch.bfloat16).requires_grad_()
    out = run_buckets_fused(forcing.to(torch.bfloat16), p16)
    ref = run_buckets(forcing.to(torch.bfloat16).double(), p16.detach().double())
    assert out.q.dtype == torch.float32
    assert rel_error(out.s, ref.s) <= VALUE_RTOL
    out.tws.sum().backward()
    assert p16.grad.dtype == torch.bfloat16 and torch.isfinite(p16.grad.float()).all()


def test_compile_fullgraph_matches_eager():
    """fullgraph compile (no graph break) through AOTAutograd with fake tensors, initial storages an input of
    the compiled function: the forward graph holds one buckets_fwd node and the backward one buckets_bwd node,
    not an unrolled loop; results equal eager."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    forcing, params = make_case("random", seed=8, b=5, t=12)
    low, span = LOW.float(), (HIGH - LOW).float()
    graphs: dict[str, list[str]] = {}

    def recorder(name: str):
        def compiler(gm: torch.fx.GraphModule, example_inputs):
            graphs[name] = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))

    def loss_fn(forcing: torch.Tensor, raw: torch.Tensor, state0: torch.Tensor) -> torch.Tensor:
        out = run_buckets_fused(forcing, low + span * torch.sigmoid(raw), state0)
        return (out.q - 1.0).pow(2).mean() + out.et.mean() + out.tws.mean() * 1e-3

    raw = torch.randn(5, 12, 8)
    state0 = make_state0("random", params, 8).float()
    results = []
    for fn in (loss_fn, torch.compile(loss_fn, fullgraph=True, backend=backend)):
        f = forcing.float().requires_grad_()
        r = raw.clone().requires_grad_()
        loss = fn(f, r, state0)
        results.append((loss.detach(), *torch.autograd.grad(loss, [f, r])))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert graphs["forward"].count("rootzone.buckets_fwd.default") == 1, graphs["forward"]
    assert graphs["backward"].count("rootzone.buckets_bwd.default") == 1, graphs["backward"]
    assert len(graphs["forward"]) < 30, graphs["forward"]


def test_opcheck_fake_and_autograd_registration():
    forcing, params = make_case("random", seed=9, b=4, t=7)
    fp, pp = forcing.float().permute(2, 1, 0), params.float().permute(2, 1, 0).requires_grad_()
    s0 = make_state0("random", params, 9).float()
    torch.library.opcheck(torch.ops.rootzone.buckets_fwd.default, (fp, pp, s0))
    torch.library.opcheck(torch.ops.rootzone.buckets_fwd.default, (fp, pp, s0.clone().requires_grad_()))
    out = torch.ops.rootzone.buckets_fwd(fp, pp.detach(), s0)
    for need in (True, False):
        args = (fp, pp.detach(), s0, out, torch.randn(5, 7, 4), need)
        torch.library.opcheck(torch.ops.rootzone.buckets_bwd.default, args)


def test_op_rejects_bad_inputs():
    s0 = torch.zeros(3, 2)
    with pytest.raises(TypeError):
        torch.ops.rootzone.buckets_fwd(torch.zeros(4, 3, 2, dtype=torch.float64), torch.ones(8, 3, 2), s0)
    with pytest.raises(TypeError):
        torch.ops.rootzone.buckets_fwd(torch.zeros(4, 3, 2), torch.ones(8, 3, 2), s0.double())
    with pytest.raises(ValueError):
        torch.ops.rootzone.buckets_fwd(torch.zeros(4, 3, 2), torch.ones(8, 3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError):
        torch.ops.rootzone.buckets_fwd(torch.zeros(4, 3, 2), torch.ones(8, 3, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="state0"):
        run_buckets_fused(torch.zeros(2, 3, 4), torch.ones(2, 3, 8), torch.zeros(2, 3))


def test_cuda_never_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(fused, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs triton"):
        fused.uses_triton(torch.device("cuda"))


def test_dispatch_fused():
    forcing, params = make_case("random", seed=4, b=2, t=5)
    with pytest.raises(ConfigError):
        dispatch.resolve("fused", torch.device("cpu"))
    assert dispatch.resolve("auto", torch.device("cpu")) != "fused"
    assert dispatch.fused_available() == (torch.cuda.is_available() and fused.triton_available())
    out = dispatch.run_physics(forcing.float(), params.float(), "fused")
    assert rel_error(out.g, run_buckets(forcing, params).g) <= VALUE_RTOL
    state0 = make_state0("random", params, 4)
    out = dispatch.run_physics(forcing.float(), params.float(), "fused", state0.float())
    assert rel_error(out.g, run_buckets(forcing, params, state0).g) <= VALUE_RTOL


if __name__ == "__main__":
    print(json.dumps(interpreter_report()))
