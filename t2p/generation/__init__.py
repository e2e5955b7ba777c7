"""Generation: the one refinement loop (`generate`, `refinement_steps`, and the `RefinementPool`
both run on, which Serve adds requests to as they arrive) over `SignRequest`s, a
generated sequence as a `.pose` (`as_pose`), sentences (`compose`, `sentence`) and corrections."""
from t2p.generation.loop import RefinementPool, RefinementStep, Row, generate, refinement_steps, starting_poses
from t2p.generation.output import as_pose
from t2p.generation.request import Generator, SignRequest

__all__ = ["Generator", "RefinementPool", "RefinementStep", "Row", "SignRequest", "as_pose", "generate", "refinement_steps",
           "starting_poses"]
