"""Training: the configs (`TrainConfig`, `TrainingJob`), examples and batches, the objective, the
step (`Learner`) and the local loop (`fit`), validation, and the Ray Train job and Ray Tune sweep
(`run_training`, `run_sweep`) with their checkpoints and progress."""
from t2p.training.config import SELECTION_METRICS, TrainConfig, TrainingJob, route_settings
from t2p.training.loop import Learner, fit

__all__ = ["SELECTION_METRICS", "Learner", "TrainConfig", "TrainingJob", "fit", "route_settings"]
