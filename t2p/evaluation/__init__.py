"""Evaluation: the metrics (`metrics`, `handshape`), what a model-free or text-blind system outputs
(`baselines`), the model scored against them (`evaluate`, `report`), composed joins (`joins`),
correction (`correction`), and pictures (`render`)."""
from t2p.evaluation.evaluate import STARTS, EvaluationConfig, compare_files, evaluate
from t2p.evaluation.metrics import METRICS, JointGroups, score
from t2p.evaluation.report import EvaluationReport

__all__ = ["METRICS", "STARTS", "EvaluationConfig", "EvaluationReport", "JointGroups", "compare_files", "evaluate",
           "score"]
