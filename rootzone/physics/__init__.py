"""Process model: the reference equations, the fused GPU kernel and the dispatch between them."""

from rootzone.physics.equations import (
    PARAM_NAMES,
    BucketOutputs,
    Spinup,
    bucket_step,
    final_state,
    run_buckets,
    spinup,
    spinup_state,
)

__all__ = ["PARAM_NAMES", "BucketOutputs", "Spinup", "bucket_step", "final_state", "run_buckets", "spinup",
           "spinup_state"]
