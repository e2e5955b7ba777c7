"""The model and its refinement schedule: `T2PModel` (text encoder, length predictor, first-pose
corrector, refiner) saved as a folder, and the weight-free `RefinementSchedule` generation steps with."""
from t2p.model.config import ModelConfig
from t2p.model.model import CONFIG_FILE, WEIGHTS_FILE, ModelFolderError, T2PModel, read_model_config, save_schedule
from t2p.model.schedule import RefinementSchedule, ScheduleConfig

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "ModelConfig", "ModelFolderError", "RefinementSchedule", "ScheduleConfig",
           "T2PModel", "read_model_config", "save_schedule"]
