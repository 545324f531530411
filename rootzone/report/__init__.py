"""``rootzone report``: :mod:`~rootzone.report.build` (make_report, index.html), :mod:`~rootzone.report.tables`,
:mod:`~rootzone.report.predictions` (summaries of a prediction store) and :mod:`~rootzone.report.figures`."""

from rootzone.report.build import figure_stem, make_report

__all__ = ["figure_stem", "make_report"]
