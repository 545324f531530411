"""Device choice and seeding, shared by training, prediction and the ensemble mean."""

from __future__ import annotations

import random

import numpy as np
import torch

from rootzone.errors import RootzoneError


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (refused when there is no CUDA device)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RootzoneError("config field 'device': 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
