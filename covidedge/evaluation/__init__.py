"""Evaluation: a model on a data split (``run``) and the precision-parity study (``parity``)."""

from covidedge.evaluation.run import STUDY_CLASSIFIER_TEST, EvaluationReport, evaluate

__all__ = ["EvaluationReport", "evaluate", "STUDY_CLASSIFIER_TEST"]
