"""The hybrid model (DESIGN §5): a network predicts daily bucket parameters, the buckets give the fluxes.

    x_dynamic [B, L, V] ‖ x_static [B, K] ─LSTM─► dropout ─linear─► sigmoid into ranges ─► params [B, L, 8]

Parameters listed in ``cfg.log_params`` (default S_max and k_g, which span decades) are squashed in log
space, ``low * (high / low) ** sigmoid(x)``, the others linearly, ``low + (high - low) * sigmoid(x)``.
    params, forcing [B, L, 4] ──buckets──► q, et, w (= SWE), s, g [B, L]; tws = w + s + g

``param_mode="static"`` replaces the LSTM by an MLP on the attributes (parameters constant in time).

Dropout (DESIGN §5, review M4) never makes the parameters jitter from day to day: in dynamic mode one mask per
sequence (drawn once per basin, constant over the days of the window), in static mode dropout acts on the
[B, H] MLP output before it is spread over the days.

Initial storages: ``forward(..., state0=...)`` passes the bucket storages [3, B] (W, S, G mm) at the start of
the window's first day to the physics (no gradient through them). Only the buckets are carried: the LSTM
always starts from a zero hidden state, which is why windows keep a warm-up.
Levers (issue 14, docs/model.md; off by default): ``routing="gamma"`` routes Q through a learned gamma unit
hydrograph, ``components=N`` runs N bucket sets per basin (one B·N batch) combined with learned area shares,
``groundwater_stores=2`` adds a fast groundwater store; all act on the outputs of the one recursion, so every
physics path runs them. ``build_model`` makes the hybrid or the plain LSTM (``model="lstm"``,
:mod:`rootzone.model_lstm`).

With ``precision="bf16"`` the network runs under bf16 autocast on CUDA (on CPU it stays float32: CPU bf16
LSTM kernels are missing or slow on most CPUs); the physics always runs in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from rootzone.config import Config
from rootzone.physics import equations as eq
from rootzone.physics.dispatch import resolve, run_physics
from rootzone.physics.equations import PARAM_NAMES, BucketOutputs, Spinup, spinup

SPINUP_DAYS = 365  # a record's storages are spun up by cycling its first year
SPINUP_TOL_MM = 1.0  # ... until no storage changes by this much (mm) per cycle


class ModelOutput(NamedTuple):
    params: Tensor | None  # [B, L, 8] physical units, PARAM_NAMES order; None for the plain LSTM. With
    #                        components > 1: the component parameters weighted by the area shares (S_max: the
    #                        basin's weighted capacity)
    buckets: BucketOutputs  # each [B, L] (the plain LSTM: rootzone.model_lstm.DirectOutputs)
    components: Tensor | None = None  # components > 1: parameters of each bucket set [B, L, N, 8]
    weights: Tensor | None = None  # components > 1: area share of each bucket set [B, N] (softmax, Σ = 1)
    storages: BucketOutputs | None = None  # the recursion's own outputs when a lever changed them (what the
    #                        stored states carry): components > 1: each set's [B·N, L] (basin-major);
    #                        groundwater_stores = 2: the one-store run [B, L]; None otherwise


MODEL_KINDS = ("hybrid", "lstm")  # Config.model


def build_model(cfg: Config, n_dynamic: int, n_static: int, physics_impl: str | None = None,
                scales: list[float] | None = None) -> nn.Module:
    """The model ``cfg.model`` names: :class:`HybridModel` ("hybrid") or
    :class:`rootzone.model_lstm.LSTMModel` ("lstm", which takes ``scales``, its output scales). Both have
    ``kind``, ``stateful`` (carries bucket storages), ``forward`` and ``run_record``."""
    if cfg.model == "lstm":
        from rootzone.model_lstm import LSTMModel

        return LSTMModel(n_dynamic, n_static, cfg, physics_impl, scales)
    return HybridModel(n_dynamic, n_static, cfg, physics_impl)


class HybridModel(nn.Module):
    """Network and buckets. Which physics runs has one source, ``self.physics``: ``physics_impl`` when given
    (e.g. a resolved implementation, or a prediction's ``--physics``), else ``cfg.physics``; the model's own
    ``self.cfg`` carries the same value, so the two never disagree. "auto" is resolved for the device of the
    forcing on each call (:func:`rootzone.physics.dispatch.resolve`); "eager", "compiled" and "fused" run as
    they are."""

    kind = "hybrid"
    stateful = True  # bucket storages: spun up, stored between windows

    def __init__(self, n_dynamic: int, n_static: int, cfg: Config, physics_impl: str | None = None):
        super().__init__()
        physics = physics_impl or cfg.physics
        self.cfg = cfg if physics == cfg.physics else cfg.replace(physics=physics)  # validates the name
        self.physics = physics
        hidden = cfg.hidden_size
        if cfg.param_mode == "dynamic":
            self.lstm = nn.LSTM(n_dynamic + n_static, hidden, batch_first=True)
            with torch.no_grad():  # gates are [input, forget, cell, output]
                self.lstm.bias_hh_l0.zero_()
                self.lstm.bias_ih_l0.zero_()
                self.lstm.bias_ih_l0[hidden : 2 * hidden] = cfg.forget_bias
        else:
            self.mlp = nn.Sequential(nn.Linear(n_static, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.dropout = nn.Dropout(cfg.dropout)
        self.n_components = cfg.components
        self.head = nn.Linear(hidden, len(PARAM_NAMES) * cfg.components)
        ranges = torch.tensor([cfg.param_ranges[name] for name in PARAM_NAMES], dtype=torch.float64)
        log = torch.tensor([name in cfg.log_params for name in PARAM_NAMES])
        low = torch.where(log, ranges[:, 0].log(), ranges[:, 0])
        high = torch.where(log, ranges[:, 1].log(), ranges[:, 1])
        self.register_buffer("param_low", low.float(), persistent=False)
        self.register_buffer("param_span", (high - low).float(), persistent=False)
        self.register_buffer("param_log", log, persistent=False)
        self.mix_head: nn.Linear | None = None
        if cfg.components > 1:  # area shares of the bucket sets from the attributes; capacities spread at start
            self.mix_head = nn.Linear(n_static, cfg.components)
            with torch.no_grad():
                self.mix_head.weight.mul_(0.1)
                self.mix_head.bias.zero_()
                quantiles = (torch.arange(cfg.components) + 0.5) / cfg.components
                self.head.bias.view(cfg.components, len(PARAM_NAMES))[:, 0] = torch.logit(quantiles) * 2.0
        self.gw_head: nn.Linear | None = None
        if cfg.groundwater_stores == 2:  # share φ and recession k_f of the fast store, per basin
            self.gw_head = nn.Linear(n_static, 2)
            with torch.no_grad():
                self.gw_head.weight.mul_(0.1)
                self.gw_head.bias.fill_(0.0)
        self.route_head: nn.Linear | None = None
        if cfg.routing == "gamma":  # two routing parameters per basin from its attributes (constant in time)
            self.route_head = nn.Linear(n_static, 2)
            with torch.no_grad():  # start at a short delay that still passes gradient: a ≈ 1.6, θ ≈ 0.7 d
                self.route_head.weight.mul_(0.1)  # (h ≈ 0.6, 0.28, 0.09, ...); a θ near 0.05 d is h_0 ≈ 1 with
                self.route_head.bias.copy_(torch.tensor([-2.0, 0.4]))  # no gradient left to leave it

    def unit_hydrograph(self, x_static: Tensor) -> Tensor:
        """Routing weights [B, ROUTING_DAYS] (Σ = 1) of ``cfg.routing = "gamma"`` from the attributes [B, K]."""
        u = torch.sigmoid(self.route_head(x_static.float()))
        (a0, a1), (s0, s1) = eq.ROUTING_SHAPE, eq.ROUTING_SCALE
        return eq.gamma_unit_hydrograph(a0 + (a1 - a0) * u[:, 0], s0 * (s1 / s0) ** u[:, 1])

    def fast_store(self, x_static: Tensor) -> tuple[Tensor, Tensor]:
        """Share φ [B] of the recharge feeding the fast groundwater store and its recession k_f [B] (d⁻¹)."""
        u = torch.sigmoid(self.gw_head(x_static.float()))
        (a0, a1), (k0, k1) = eq.FAST_SHARE, eq.FAST_K
        return a0 + (a1 - a0) * u[:, 0], k0 * (k1 / k0) ** u[:, 1]

    def _levers(self, raw: BucketOutputs, params: Tensor, x_static: Tensor, state0: Tensor | None,
                repeat: int = 1) -> BucketOutputs:
        """The one-store outputs ``raw`` [B·repeat, L] with the second groundwater store when configured
        (``params`` [B·repeat, L, 8], ``state0`` as given to the physics; ``repeat``: bucket sets per basin)."""
        if self.gw_head is None:
            return raw
        share, k_fast = (x.repeat_interleave(repeat) for x in self.fast_store(x_static))
        g0 = eq.as_state0(state0, params)[2]
        return eq.two_groundwater_stores(raw, g0, params[..., 7], share, k_fast)

    def _routed(self, buckets: BucketOutputs, x_static: Tensor) -> BucketOutputs:
        """The bucket outputs with Q routed (``cfg.routing = "gamma"``), else unchanged."""
        if self.route_head is None:
            return buckets
        return buckets._replace(q=eq.route(buckets.q, self.unit_hydrograph(x_static))[0])

    def parameters_from(self, x_dynamic: Tensor, x_static: Tensor) -> Tensor:
        """Bucket parameters [B, L, 8] (physical units, float32); [B, L, N, 8] with ``cfg.components`` N > 1."""
        use_bf16 = self.cfg.precision == "bf16" and x_dynamic.device.type == "cuda"
        with torch.autocast(x_dynamic.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if self.cfg.param_mode == "dynamic":
                static = x_static[:, None, :].expand(-1, x_dynamic.shape[1], -1)
                hidden, _ = self.lstm(torch.cat([x_dynamic, static], dim=-1))
                hidden = self._sequence_dropout(hidden)
            else:  # dropout on [B, H] before the expand: the parameters stay constant over days
                hidden = self.dropout(self.mlp(x_static))[:, None, :].expand(-1, x_dynamic.shape[1], -1)
            raw = self.head(hidden)
        raw = raw.float()
        if self.n_components > 1:
            raw = raw.unflatten(-1, (self.n_components, len(PARAM_NAMES)))
        squashed = self.param_low + self.param_span * torch.sigmoid(raw)
        return torch.where(self.param_log, squashed.exp(), squashed)

    def _sequence_dropout(self, hidden: Tensor) -> Tensor:
        """Dropout of [B, L, H] with one mask per sequence (the same units dropped on every day)."""
        if not self.training or self.dropout.p == 0:
            return hidden
        mask = self.dropout(hidden.new_ones(hidden.shape[0], 1, hidden.shape[2]))  # 0 or 1/(1-p)
        return hidden * mask

    @property
    def physics_impl(self) -> str:
        """The implementation that runs on the model's device ("eager", "compiled" or "fused")."""
        return self.implementation(self.param_low.device)

    def implementation(self, device: torch.device) -> str:
        """The implementation :attr:`physics` stands for on ``device``."""
        return self.physics if self.physics != "auto" else resolve("auto", device)

    def forward(self, x_dynamic: Tensor, x_static: Tensor, forcing: Tensor, state0: Tensor | None = None
                ) -> ModelOutput:
        """Parameters and bucket outputs. ``state0``: storages [3, B] (W, S, G mm) at the start of day 0 of
        the window (moved to the forcing's device; no gradient); None is the physics' legacy cold start."""
        params = self.parameters_from(x_dynamic, x_static)
        if state0 is not None:
            state0 = state0.to(forcing.device, torch.float32)
        impl = self.implementation(forcing.device)
        if self.n_components > 1:
            return self._combined(forcing.float(), params, x_static, impl, state0)
        out = run_physics(forcing.float(), params, impl, state0)
        return self._single(out, params, x_static, state0)

    def _single(self, raw: BucketOutputs, params: Tensor, x_static: Tensor, state0: Tensor | None) -> ModelOutput:
        """One bucket set: the levers on the physics' outputs ``raw`` (kept as ``storages`` when they change
        them: the stored states are the recursion's)."""
        out = self._levers(raw, params, x_static, state0)
        return ModelOutput(params, self._routed(out, x_static), storages=None if out is raw else raw)

    def mixture(self, x_static: Tensor) -> Tensor:
        """Area shares [B, N] (softmax over the bucket sets) from the attributes [B, K]."""
        return torch.softmax(self.mix_head(x_static.float()), dim=-1)

    def _combined(self, forcing: Tensor, params: Tensor, x_static: Tensor, impl: str, state0: Tensor | None
                  ) -> ModelOutput:
        """``components`` N > 1: the N bucket sets of every basin run as one batch of B·N basins (basin-major,
        set k of basin b at b·N + k) through any physics path; each output is the area-weighted sum over the
        sets (fluxes and storages alike, so the basin's water balance closes as each set's does). ``state0``:
        [3, B·N] or None."""
        b, n_days, n = params.shape[0], params.shape[1], self.n_components
        flat = params.permute(0, 2, 1, 3).reshape(b * n, n_days, len(PARAM_NAMES))
        sets = run_physics(forcing.repeat_interleave(n, dim=0), flat, impl, state0)
        weights = self.mixture(x_static)
        split = self._levers(sets, flat, x_static, state0, n)
        combined = BucketOutputs(*((weights[:, :, None] * x.reshape(b, n, n_days)).sum(1) for x in split))
        mean = (weights[:, None, :, None] * params).sum(2)
        return ModelOutput(mean, self._routed(combined, x_static), params, weights, sets)

    @torch.no_grad()
    def run_record(self, x_dynamic: Tensor, x_static: Tensor, forcing: Tensor, spinup_cycles: int = 10
                   ) -> tuple[ModelOutput, Spinup]:
        """A whole record from spun-up storages (DESIGN §4; no gradient): the network runs over the record
        from its first day (zero LSTM state), the storages at the start of day 0 are spun up by cycling the
        first ``SPINUP_DAYS`` days with the parameters the network predicts for them (until they change by
        less than ``SPINUP_TOL_MM`` per cycle, at most ``spinup_cycles`` cycles), then the physics runs the
        whole record from them. The initial S therefore does not hinge on the first day's S_max."""
        params = self.parameters_from(x_dynamic, x_static)
        forcing = forcing.float()
        impl = self.implementation(forcing.device)
        days = min(SPINUP_DAYS, forcing.shape[1])
        if self.n_components > 1:  # spin up each bucket set (B·N basins)
            n = self.n_components
            flat = params[:, :days].permute(0, 2, 1, 3).reshape(-1, days, len(PARAM_NAMES))
            spun = spinup(forcing[:, :days].repeat_interleave(n, dim=0).contiguous(), flat.contiguous(), impl,
                          spinup_cycles, SPINUP_TOL_MM)
            return self._combined(forcing, params, x_static, impl, spun.state), spun
        spun = spinup(forcing[:, :days].contiguous(), params[:, :days].contiguous(), impl, spinup_cycles,
                      SPINUP_TOL_MM)
        return self._single(run_physics(forcing, params, impl, spun.state), params, x_static, spun.state), spun
