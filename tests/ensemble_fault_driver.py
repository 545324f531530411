"""``rootzone ARGS`` with a fault injected into one ensemble trial (the Ray test of worker retries).

``ROOTZONE_FAULT_INJECT=fold0_seed1:2`` makes that trial's worker process die (``os._exit``) during epoch 2,
after the epoch trained but before it is reported -- once, on its first attempt (a marker file
``.fault_injected`` in the trial's run directory). The product code knows nothing of it: the hook wraps the
trainable through ``run_ensemble(wrap_trainable=...)``.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

FAULT_ENV = "ROOTZONE_FAULT_INJECT"
FAULT_MARKER = ".fault_injected"


def with_fault(trainable, fault: str):
    target, _, at = fault.partition(":")

    def faulty(config, base, exp_uri, tag=""):
        from ray import tune

        name = f"fold{int(config['fold'])}_seed{int(config['seed'])}"
        marker = Path(exp_uri) / "trials" / name / FAULT_MARKER
        if name == target:
            report = tune.report

            def dying_report(metrics, *args, **kwargs):
                if metrics.get("epoch") == int(at or 1) and not metrics.get("trial_done") and not marker.exists():
                    marker.write_text(f"worker killed during epoch {metrics['epoch']}\n")
                    os._exit(17)
                return report(metrics, *args, **kwargs)

            tune.report = dying_report
        return trainable(config, base=base, exp_uri=exp_uri, tag=tag)

    return faulty


if __name__ == "__main__":
    import rootzone.ensemble.run as ensemble_run
    from rootzone.cli import main

    fault = os.environ.get(FAULT_ENV, "")
    if fault:
        ensemble_run.run_ensemble = functools.partial(ensemble_run.run_ensemble,
                                                      wrap_trainable=lambda t: with_fault(t, fault))
    sys.exit(main(sys.argv[1:]))
