"""Ensembles on Ray: :mod:`~rootzone.ensemble.run` (the fold × seed grid), :mod:`~rootzone.ensemble.tune` (ASHA
search), :mod:`~rootzone.ensemble.cluster` (Ray plumbing), :mod:`~rootzone.ensemble.trainable` (the Tune
function trainable), :mod:`~rootzone.ensemble.aggregate` (tables, ensemble-mean scores, summary). Ray is
imported only by the modules that need it."""

from rootzone.ensemble.run import aggregate, prepare_base, run_ensemble
from rootzone.ensemble.settings import RaySettings

__all__ = ["RaySettings", "aggregate", "prepare_base", "run_ensemble"]
