"""The JSON bodies of t2p's HTTP API that FastAPI documents (OpenAPI at /docs): every response, and
every error. The request bodies, and what is checked before a request does any work, are
`t2p.serving.requests`."""
from typing import Literal

from pydantic import BaseModel, Field


class Error(BaseModel):
    """Every error body: one line for the sender."""
    detail: str


class Health(BaseModel):
    status: str
    replica: str = Field(description="the replica that answered (Serve's replica id): a restarted replica has a new one")
    uptime_s: float = Field(description="seconds since that replica was made")


class SegmentBody(BaseModel):
    """Frames [begin, end) of a sentence: a sign (from the model, the lexicon or fingerspelled) or a transition."""
    text: str
    begin: int
    end: int
    kind: Literal["sign", "transition"]
    source: str
    word: str


class PoseBody(BaseModel):
    """A pose sequence as JSON (`format: json`): frames (frames, joints, dims), joints ordered as
    `points` within `components`; confidence (frames, joints), 0 for a joint predicted absent."""
    fps: float
    components: list[str]
    points: list[list[str]]
    frames: list[list[list[float]]]
    confidence: list[list[float]]
    segments: list[SegmentBody] | None = Field(None, description="a sentence's segments")
    spoken_language: str | None = Field(None, description="a sentence's spoken language, as given or inferred")


class StepEvent(BaseModel):
    """One event of a stream: the sign's sequence after refinement step `step` of `steps` (the last
    is the response the request would get without `stream`), as JSON (`format: json`: PoseBody's
    fields) or as base64 `.pose` bytes (`pose`). A failure after the stream began is one last
    event {error, status} instead."""
    step: int | None = None
    steps: int | None = None
    fps: float | None = None
    components: list[str] | None = None
    points: list[list[str]] | None = None
    frames: list[list[list[float]]] | None = None
    confidence: list[list[float]] | None = None
    pose: str | None = Field(None, description="base64 .pose of this step (format pose)")
    error: str | None = Field(None, description="why the stream stopped early")
    status: int | None = Field(None, description="the HTTP status the error would have had (422, 500, 504)")


class ModelEntry(BaseModel):
    name: str
    default: bool
    loaded: bool = Field(description="held by the replica that answered (the others load on first use)")
    languages: list[str]
    default_notation: str | None
    fps: float | None
    default_steps: int | None


class ModelList(BaseModel):
    default: str
    max_loaded_models: int
    models: list[ModelEntry]


class ModelDescription(BaseModel):
    model: str
    skeleton: dict
    fps: float
    notations: list[str]
    default_notation: str
    languages: list[str]
    lexicon: dict | None
    auth: bool
    limits: dict


class Stats(BaseModel):
    batches: int
    requests: int
    generate_calls: int
    mean_batch_size: float
    max_batch_size: int
    recent_batch_sizes: list[int]
    batches_by_group: dict[str, int] = Field(description="batches (requests joining a refinement pool at one step) per model")
    recent_step_rows: list[int] = Field(description="requests each recent refinement step refined (a request nobody "
                                                    "waits for any more is dropped from its batch's next step)")
    refine_s: float = Field(description="seconds this replica spent in refinement steps")
    queued_s: float = Field(description="seconds requests waited for their batch to form, summed over requests")
    cpu_s: float = Field(description="CPU seconds of this replica's process")
