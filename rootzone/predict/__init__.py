"""Streaming inference of an ensemble into a Zarr store: :mod:`~rootzone.predict.store` (the store's schema),
:mod:`~rootzone.predict.chunk` (one chunk of basins), :mod:`~rootzone.predict.run` (prepare, the local loop,
predict) and :mod:`~rootzone.predict.distributed` (one Ray task per chunk; imported on demand: it needs Ray)."""

from rootzone.experiment import LoadedMember, Member, load_checkpoint_bytes, load_member
from rootzone.predict.chunk import predict_chunk, report_invalid
from rootzone.predict.run import check_options, predict, prediction, prepare, run
from rootzone.predict.store import VARIABLES, ChunkResult, PredictionJob, chunks_done, finalise, mark_done

__all__ = ["VARIABLES", "ChunkResult", "LoadedMember", "Member", "PredictionJob", "check_options", "chunks_done",
           "finalise", "load_checkpoint_bytes", "load_member", "mark_done", "predict", "predict_chunk",
           "prediction", "prepare", "report_invalid", "run"]
