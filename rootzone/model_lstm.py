"""The plain LSTM (``Config.model = "lstm"``): the baseline of the hybrid-vs-LSTM ablation (issue 14).

    x_dynamic [B, L, V] ‖ x_static [B, K] ─LSTM─► dropout ─linear─► [B, L, 4] ─► q, et, swe, tws

Same inputs, normalisation, sequence dropout, forget-gate bias and bf16 autocast as the hybrid's network
(:class:`rootzone.model.HybridModel`), but the head predicts the targets directly, in the store's units:

* q, et (mm/d) and swe (mm): ``softplus(raw) * scale`` (non-negative);
* tws (mm): ``raw * scale``, a daily storage series of arbitrary level; only its monthly anomalies are
  compared with TWSA (the loss and the scoring re-centre it, as they do the hybrid's W + S + G).

``scale`` [4] (buffer ``output_scale``, saved in the checkpoint) is the typical training-day standard deviation
of each target (:func:`output_scales`), so the head starts near the right magnitude. There are no buckets: no
S_max, no storages to spin up or carry (``state0`` is ignored), no learned parameters to recover.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from rootzone.config import Config
from rootzone.physics.equations import Spinup

OUTPUTS: tuple[str, ...] = ("q", "et", "w", "tws")  # head channels; w is SWE (the BucketOutputs name)
_NON_NEGATIVE = (True, True, True, False)


class DirectOutputs(NamedTuple):
    """Daily series, each [B, L]: q, et (mm/d), w = SWE (mm), tws = storage of arbitrary level (mm)."""

    q: Tensor
    et: Tensor
    w: Tensor
    tws: Tensor

    @property
    def swe(self) -> Tensor:
        return self.w


def output_scales(scale: dict[str, np.ndarray]) -> list[float]:
    """Per output channel (:data:`OUTPUTS`), the square root of the median over basins of the per-basin training
    variance (``StoreData.scale``: target -> [n_basins]), at least 0.1; 1.0 for a target the store lacks."""
    names = {"q": "q", "et": "et", "w": "swe", "tws": "twsa"}
    out = []
    for ch in OUTPUTS:
        var = scale.get(names[ch])
        ok = None if var is None else np.asarray(var, dtype=np.float64)
        ok = None if ok is None or not np.isfinite(ok).any() else float(np.nanmedian(ok))
        out.append(1.0 if ok is None else max(0.1, float(np.sqrt(max(ok, 0.0)))))
    return out


class LSTMModel(nn.Module):
    """A one-layer LSTM with a linear head onto the targets. Same call signature as the hybrid:
    ``forward(x_dynamic, x_static, forcing, state0=None)`` -> :class:`rootzone.model.ModelOutput` with
    ``params=None`` and ``buckets`` a :class:`DirectOutputs`."""

    kind = "lstm"
    stateful = False  # no storages carried between windows, no spin-up

    def __init__(self, n_dynamic: int, n_static: int, cfg: Config, physics_impl: str | None = None,
                 scales: list[float] | None = None):
        super().__init__()
        self.cfg = cfg
        self.physics = "none"
        hidden = cfg.hidden_size
        self.lstm = nn.LSTM(n_dynamic + n_static, hidden, batch_first=True)
        with torch.no_grad():  # gates are [input, forget, cell, output]
            self.lstm.bias_hh_l0.zero_()
            self.lstm.bias_ih_l0.zero_()
            self.lstm.bias_ih_l0[hidden : 2 * hidden] = cfg.forget_bias
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(hidden, len(OUTPUTS))
        with torch.no_grad():  # SWE starts near 0 (softplus(-4) = 0.018 scale): snow-free basins have a variance
            self.head.bias[OUTPUTS.index("w")] = -4.0  # near 0, so any SWE there dominates the first losses
        self.register_buffer("output_scale", torch.tensor(scales or [1.0] * len(OUTPUTS), dtype=torch.float32))
        self.register_buffer("non_negative", torch.tensor(_NON_NEGATIVE), persistent=False)

    @property
    def physics_impl(self) -> str:
        return "none"

    def implementation(self, device: torch.device) -> str:
        return "none"

    def _sequence_dropout(self, hidden: Tensor) -> Tensor:
        if not self.training or self.dropout.p == 0:
            return hidden
        return hidden * self.dropout(hidden.new_ones(hidden.shape[0], 1, hidden.shape[2]))

    def outputs(self, x_dynamic: Tensor, x_static: Tensor) -> DirectOutputs:
        """The four daily series [B, L] (float32)."""
        use_bf16 = self.cfg.precision == "bf16" and x_dynamic.device.type == "cuda"
        with torch.autocast(x_dynamic.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            static = x_static[:, None, :].expand(-1, x_dynamic.shape[1], -1)
            hidden, _ = self.lstm(torch.cat([x_dynamic, static], dim=-1))
            raw = self.head(self._sequence_dropout(hidden))
        raw = raw.float()
        y = torch.where(self.non_negative, nn.functional.softplus(raw), raw) * self.output_scale
        return DirectOutputs(*y.unbind(-1))

    def forward(self, x_dynamic: Tensor, x_static: Tensor, forcing: Tensor, state0: Tensor | None = None):
        from rootzone.model import ModelOutput

        return ModelOutput(None, self.outputs(x_dynamic, x_static))

    @torch.no_grad()
    def run_record(self, x_dynamic: Tensor, x_static: Tensor, forcing: Tensor, spinup_cycles: int = 10):
        """A whole record (no gradient): the LSTM from a zero state on day 0; the trivial :class:`Spinup`
        (no storages: zero cycles, converged)."""
        out = self.forward(x_dynamic, x_static, forcing)
        n = x_dynamic.shape[0]
        return out, Spinup(state=x_dynamic.new_zeros((3, n)), cycles=0, change_mm=0.0, converged=True)
