"""Process model: the reference equations, the fused GPU kernel and the dispatch between them."""

from rootzone.physics.equations import PARAM_NAMES, BucketOutputs, bucket_step, run_buckets

__all__ = ["PARAM_NAMES", "BucketOutputs", "bucket_step", "run_buckets"]
