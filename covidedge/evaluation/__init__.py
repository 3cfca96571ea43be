"""Evaluation: a model on a data split (``run``), its report (``report``) and the
precision-parity study (``parity``)."""

from covidedge.evaluation.run import STUDY_CLASSIFIER_TEST, EvaluationOptions, EvaluationReport, evaluate

__all__ = ["EvaluationOptions", "EvaluationReport", "evaluate", "STUDY_CLASSIFIER_TEST"]
