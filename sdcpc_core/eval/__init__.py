"""Evaluation: confusion-matrix mIoU, VSPW video consistency (mVC) and its correct-only variant, the
training-free temporal smoothing baselines (``smoothing``), the dataset evaluator and reports.

``evaluate`` (``sdcpc_core.eval.evaluator``) needs torch and OpenCV; it is imported on first use so that
the metrics and the report writer stay importable with numpy alone.
"""

from .metrics import VC_MODES, ConfusionMatrix, consistency_scores, video_consistency
from .report import EvaluationReport, OverlayFrame, overlay, write_report
from .smoothing import TemporalSmoother, parse_smoothing

__all__ = ['ConfusionMatrix', 'video_consistency', 'consistency_scores', 'VC_MODES', 'EvaluationReport',
           'OverlayFrame', 'write_report', 'overlay', 'TemporalSmoother', 'parse_smoothing', 'evaluate']


def __getattr__(name: str):
    if name == 'evaluate':
        from .evaluator import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
