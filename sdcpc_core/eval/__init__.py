"""Evaluation: confusion-matrix mIoU and VSPW video consistency (mVC), the dataset evaluator and reports.

``evaluate`` (``sdcpc_core.eval.evaluator``) needs torch and OpenCV; it is imported on first use so that
the metrics and the report writer stay importable with numpy alone.
"""

from .metrics import VC_MODES, ConfusionMatrix, consistency_scores, video_consistency
from .report import EvaluationReport, overlay, write_report

__all__ = ['ConfusionMatrix', 'video_consistency', 'consistency_scores', 'VC_MODES', 'EvaluationReport', 'write_report', 'overlay',
           'evaluate']


def __getattr__(name: str):
    if name == 'evaluate':
        from .evaluator import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
