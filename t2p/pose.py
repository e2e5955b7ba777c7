"""Poses: joints over time, and the one module that talks to pose-format.

Everything else in t2p sees `Keypoints`: numpy arrays `(frames, joints, dims)` plus a confidence
`(frames, joints)` in which 0 means missing, on a named `Skeleton`. A `PoseSequence` is a recording
(`Keypoints` with its frame rate and the coordinate space it was read from).

- A `Skeleton` is a named choice of components and points (with their limbs and colours, taken
  from a real header by pose-format's own `get_components`), stored with every model. Its hands
  (`Skeleton.hands`) are found by point name, once, for the model, the losses, the metrics and
  correction alike.
- Poses of another layout are mapped onto a skeleton by point names (with an alias table between
  MediaPipe Holistic and OpenPose names); points the file lacks become masked.
- Coordinates are shoulder-normalised with pose-format's `Pose.normalize`; the transform is kept
  so that a prediction can be written back in the space of the pose it started from.
- Time: `resample_to_fps` changes a recording's frame rate (pose-format's cubic interpolation),
  `resample_to_frames` stretches a sequence to a number of frames (linear); `frame_motion` is how
  far the joints move per frame.

Other modules take pose-format's `Pose` type from here. Only `t2p.evaluation.render` imports
pose-format itself, for its `PoseVisualizer`, which draws what this module reads.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
from pose_format.utils.generic import reduce_holistic
from pose_format.utils.openpose import HAND_POINTS as OPENPOSE_HAND_POINTS

from t2p.config import written_whole


class PoseFormatError(ValueError):
    """A `.pose` file that cannot be read or does not fit the skeleton."""


# the most frames a sequence may have by default: what a model trained with default settings holds,
# what preparation keeps, and what Serve generates per sign
MAX_FRAMES = 256


@dataclass
class Keypoints:
    """Joints over time: where each joint is and whether it is there. The one "poses plus
    confidence" type: a generated sign, the given values of a sequence to complete, a composition."""
    data: np.ndarray        # (frames, joints, dims) float32, 0 where missing
    confidence: np.ndarray  # (frames, joints) float32, 0 = missing (or predicted absent)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def num_frames(self) -> int:
        return len(self)

    def frames(self, begin: int | None = None, end: int | None = None) -> "Keypoints":
        """Frames [begin, end) as `Keypoints` (views, not copies)."""
        return Keypoints(self.data[begin:end], self.confidence[begin:end])

    @classmethod
    def concatenate(cls, parts: Sequence["Keypoints"]) -> "Keypoints":
        return cls(np.concatenate([part.data for part in parts]), np.concatenate([part.confidence for part in parts]))


# MediaPipe hand landmarks, in the order both MediaPipe and OpenPose store the 21 hand points.
HOLISTIC_HAND_POINTS = [
    "WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP",
    "INDEX_FINGER_MCP", "INDEX_FINGER_PIP", "INDEX_FINGER_DIP", "INDEX_FINGER_TIP",
    "MIDDLE_FINGER_MCP", "MIDDLE_FINGER_PIP", "MIDDLE_FINGER_DIP", "MIDDLE_FINGER_TIP",
    "RING_FINGER_MCP", "RING_FINGER_PIP", "RING_FINGER_DIP", "RING_FINGER_TIP",
    "PINKY_MCP", "PINKY_PIP", "PINKY_DIP", "PINKY_TIP",
]
# each digit from the wrist outwards, in MediaPipe's point names (OpenPose's hands map onto them)
DIGITS = (
    ("WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP"),
    ("WRIST", "INDEX_FINGER_MCP", "INDEX_FINGER_PIP", "INDEX_FINGER_DIP", "INDEX_FINGER_TIP"),
    ("WRIST", "MIDDLE_FINGER_MCP", "MIDDLE_FINGER_PIP", "MIDDLE_FINGER_DIP", "MIDDLE_FINGER_TIP"),
    ("WRIST", "RING_FINGER_MCP", "RING_FINGER_PIP", "RING_FINGER_DIP", "RING_FINGER_TIP"),
    ("WRIST", "PINKY_MCP", "PINKY_PIP", "PINKY_DIP", "PINKY_TIP"),
)
HAND_COMPONENTS = ("LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS")  # OpenPose's hands are their aliases
UPPER_BODY_POINTS = ["LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW", "RIGHT_ELBOW",
                     "LEFT_WRIST", "RIGHT_WRIST", "LEFT_HIP", "RIGHT_HIP"]
_OPENPOSE_BODY_NAMES = {"LEFT_SHOULDER": "LShoulder", "RIGHT_SHOULDER": "RShoulder",
                        "LEFT_ELBOW": "LElbow", "RIGHT_ELBOW": "RElbow",
                        "LEFT_WRIST": "LWrist", "RIGHT_WRIST": "RWrist",
                        "LEFT_HIP": "LHip", "RIGHT_HIP": "RHip"}


def _alias_groups() -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """(component, point) -> every name the same body point has in the layouts t2p reads."""
    groups: list[tuple[tuple[str, str], ...]] = []
    for holistic_name, openpose_name in _OPENPOSE_BODY_NAMES.items():
        groups.append((("POSE_LANDMARKS", holistic_name), ("pose_keypoints_2d", openpose_name)))
    for side, openpose_component in (("LEFT", "hand_left_keypoints_2d"), ("RIGHT", "hand_right_keypoints_2d")):
        for holistic_point, openpose_point in zip(HOLISTIC_HAND_POINTS, OPENPOSE_HAND_POINTS):
            groups.append(((f"{side}_HAND_LANDMARKS", holistic_point), (openpose_component, openpose_point)))
    return {name: group for group in groups for name in group}


ALIASES = _alias_groups()

# Skeleton presets: component -> points (None: all points of the component), per layout family.
SKELETON_PRESETS: dict[str, dict[str, dict[str, list[str] | None]]] = {
    "upper_body": {
        "holistic": {"POSE_LANDMARKS": UPPER_BODY_POINTS,
                     "LEFT_HAND_LANDMARKS": None, "RIGHT_HAND_LANDMARKS": None},
        "openpose": {"pose_keypoints_2d": [_OPENPOSE_BODY_NAMES[p] for p in UPPER_BODY_POINTS],
                     "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None},
    },
    "upper_body_face": {
        "holistic": {"POSE_LANDMARKS": UPPER_BODY_POINTS, "FACE_LANDMARKS": "contours",  # type: ignore[dict-item]
                     "LEFT_HAND_LANDMARKS": None, "RIGHT_HAND_LANDMARKS": None},
        "openpose": {"pose_keypoints_2d": [_OPENPOSE_BODY_NAMES[p] for p in UPPER_BODY_POINTS],
                     "face_keypoints_2d": None,
                     "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None},
    },
}


@dataclass(frozen=True)
class Hand:
    """One hand of a skeleton: its joints and the bone pairs whose angles describe its shape."""
    name: str                                       # the component as the skeleton names it
    wrist: int
    joints: tuple[int, ...]                         # every joint of the hand, the wrist included, in order
    angles: tuple[tuple[int, int, int, int], ...]   # (a, b, c, d): the angle between bones a->b and c->d

    @property
    def fingers(self) -> tuple[int, ...]:
        """The hand's joints but the wrist."""
        return tuple(joint for joint in self.joints if joint != self.wrist)


@dataclass(frozen=True)
class SkeletonComponent:
    name: str
    points: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]
    colors: tuple[tuple[int, int, int], ...]
    point_format: str


@dataclass(frozen=True)
class Skeleton:
    """The joints a model predicts, in order: components and their points, with limbs for drawing."""
    name: str
    components: tuple[SkeletonComponent, ...]
    dims: int

    @property
    def joints(self) -> list[tuple[str, str]]:
        return [(c.name, p) for c in self.components for p in c.points]

    @property
    def num_joints(self) -> int:
        return sum(len(c.points) for c in self.components)

    def joint_index(self, component: str, point: str) -> int:
        """Index of a joint by name, accepting any alias (e.g. OpenPose `RShoulder`)."""
        names = ALIASES.get((component, point), ((component, point),))
        for index, joint in enumerate(self.joints):
            if joint in names:
                return index
        raise KeyError(f"skeleton {self.name!r} has no point {component}/{point}")

    def hands(self) -> tuple[Hand, ...]:
        """The skeleton's hands, found by point name (any layout's spelling): a hand is the points
        of MediaPipe's 21 hand landmarks it has, its wrist among them, with the angles between the
        bones it has both of. No wrist, no hand."""
        return _hands(self)

    def bone_tree(self) -> list[tuple[int, int]]:
        """(parent, child) joint indices of a spanning tree of each component's limbs, parents first:
        from the first point of each component (a shoulder, a wrist) outwards."""
        edges, offset = [], 0
        for component in self.components:
            neighbours: dict[int, list[int]] = {}
            for a, b in component.limbs:
                neighbours.setdefault(a, []).append(b)
                neighbours.setdefault(b, []).append(a)
            seen, queue = {0}, [0]
            while queue:
                parent = queue.pop(0)
                for child in sorted(neighbours.get(parent, [])):
                    if child not in seen:
                        seen.add(child)
                        queue.append(child)
                        edges.append((offset + parent, offset + child))
            offset += len(component.points)
        return edges

    def header(self, width: int = 500, height: int = 500, depth: int = 0) -> PoseHeader:
        components = [PoseHeaderComponent(c.name, list(c.points), [tuple(limb) for limb in c.limbs],
                                          [tuple(color) for color in c.colors], c.point_format)
                      for c in self.components]
        return PoseHeader(0.1, PoseHeaderDimensions(width, height, depth), components)

    def to_dict(self) -> dict:
        return {"name": self.name, "dims": self.dims,
                "components": [{"name": c.name, "points": list(c.points), "limbs": [list(l) for l in c.limbs],
                                "colors": [list(col) for col in c.colors], "point_format": c.point_format}
                               for c in self.components]}

    @classmethod
    def from_dict(cls, data: dict) -> "Skeleton":
        unknown = set(data) - {"name", "dims", "components"}
        if unknown:
            raise ValueError(f"unknown skeleton keys: {sorted(unknown)}")
        components = tuple(
            SkeletonComponent(c["name"], tuple(c["points"]), tuple(tuple(l) for l in c["limbs"]),
                              tuple(tuple(col) for col in c["colors"]), c["point_format"])
            for c in data["components"])
        return cls(name=data["name"], components=components, dims=int(data["dims"]))

    @classmethod
    def from_pose(cls, pose: Pose, preset: str = "upper_body", dims: int | None = None) -> "Skeleton":
        """Choose the preset's points from a real pose, keeping its limbs and colours; `dims` 2 makes
        a 2D skeleton of a 3D pose (a corpus with 2D recordings: `t2p.data.prepare`)."""
        if preset not in SKELETON_PRESETS:
            raise ValueError(f"unknown skeleton {preset!r}; choose one of {sorted(SKELETON_PRESETS)}")
        if dims is not None:
            pose = with_dims(pose, dims)
        family = _layout_family(pose.header)
        selection = dict(SKELETON_PRESETS[preset][family])
        if selection.get("FACE_LANDMARKS") == "contours":
            # pose-format's reduce_holistic holds MediaPipe's face-contour point list.
            reduced = reduce_holistic(pose)
            selection["FACE_LANDMARKS"] = list(_component(reduced.header, "FACE_LANDMARKS").points)
        chosen = pose.get_components(list(selection), {k: v for k, v in selection.items() if v is not None})
        dims = len(chosen.header.components[0].format) - 1
        components = tuple(SkeletonComponent(c.name, tuple(c.points), tuple(tuple(int(i) for i in l) for l in c.limbs),
                                             tuple(tuple(int(v) for v in col) for col in c.colors), c.format)
                           for c in chosen.header.components)
        return cls(name=preset, components=components, dims=dims)


@lru_cache(maxsize=32)
def _hands(skeleton: Skeleton) -> tuple[Hand, ...]:
    hands = []
    for component in HAND_COMPONENTS:
        index = {}
        for point in HOLISTIC_HAND_POINTS:
            try:
                index[point] = skeleton.joint_index(component, point)
            except KeyError:
                continue
        if "WRIST" not in index:
            continue
        pairs = []
        for digit in DIGITS:  # the bend at each joint between the wrist and the tip
            pairs += [(before, joint, joint, after) for before, joint, after in zip(digit, digit[1:], digit[2:])]
        for first, second in zip(DIGITS, DIGITS[1:]):  # the spread between neighbouring digits' first bones
            pairs.append((first[1], first[2], second[1], second[2]))
        angles = tuple(tuple(index[point] for point in pair) for pair in pairs if all(point in index for point in pair))
        name = skeleton.joints[index["WRIST"]][0]
        hands.append(Hand(name, index["WRIST"], tuple(sorted(index.values())), angles))
    return tuple(hands)


def _component(header: PoseHeader, name: str) -> PoseHeaderComponent:
    for component in header.components:
        if component.name == name:
            return component
    raise PoseFormatError(f"pose has no component {name!r}")


def _layout_family(header: PoseHeader) -> str:
    names = {c.name for c in header.components}
    if "POSE_LANDMARKS" in names:
        return "holistic"
    if "pose_keypoints_2d" in names:
        return "openpose"
    raise PoseFormatError(f"unsupported pose layout with components {sorted(names)}; "
                          "t2p reads MediaPipe Holistic and OpenPose (137) layouts")


@dataclass
class Normalization:
    """Shoulder normalisation as applied by pose-format: normalised = (raw - center) * scale."""
    center: np.ndarray  # (dims,)
    scale: float

    def apply(self, data: np.ndarray) -> np.ndarray:
        return (data - self.center) * self.scale

    def invert(self, data: np.ndarray) -> np.ndarray:
        return data / self.scale + self.center

    def to_dict(self) -> dict:
        return {"center": [float(v) for v in self.center], "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        return cls(center=np.asarray(data["center"], dtype=np.float32), scale=float(data["scale"]))


@dataclass
class Layout:
    """The layout of a file a sequence was read from: its header and first frame (every point of it,
    also those the skeleton lacks), so that output can be written back in it."""
    header: PoseHeader
    first_frame: np.ndarray       # (points, dims) raw coordinates, 0 where missing
    first_confidence: np.ndarray  # (points,)


@dataclass
class PoseSequence(Keypoints):
    """A recording: one person's joints over time on a skeleton, shoulder-normalised, with its frame
    rate and the space it was read from."""
    fps: float
    normalization: Normalization
    canvas: tuple[int, int, int] = (500, 500, 0)  # header dimensions of the source
    layout: Layout | None = None                  # the source file's layout, when read from one


def read_pose(source: Union[str, Path, bytes, BinaryIO]) -> Pose:
    """Read a `.pose` file (path, bytes or file object); errors name the file. A file is refused
    when it is not a pose, holds fewer frames than its header announces (a truncated copy), has no
    frames, or has a non-finite coordinate or confidence where a point is observed."""
    label = str(source) if isinstance(source, (str, Path)) else "<bytes>"
    try:
        if isinstance(source, (str, Path)):
            buffer = Path(source).read_bytes()
        elif isinstance(source, bytes):
            buffer = source
        else:
            buffer = source.read()
    except FileNotFoundError:
        raise PoseFormatError(f"{label}: no such .pose file") from None
    except OSError as error:
        raise PoseFormatError(f"{label}: cannot be read ({error.strerror or error})") from None
    _check_complete(buffer, label)
    try:
        pose = Pose.read(buffer)
    except Exception as error:  # pose-format raises assorted errors on truncated or foreign files
        raise PoseFormatError(f"{label}: not a readable .pose file ({type(error).__name__}: {error})") from None
    if pose.body.data.shape[0] == 0:
        raise PoseFormatError(f"{label}: the pose has no frames")
    _layout_family(pose.header)
    _check_finite(pose, label)
    return pose


def _check_complete(buffer: bytes, label: str) -> None:
    """A body that holds as many frames as it announces. pose-format 0.2 stores the frame count,
    0.1 only its low 16 bits (and reads as many frames as the bytes left hold: a truncated 0.1 file
    would read as a shorter one, its confidence taken from the coordinates' bytes)."""
    from pose_format.utils.reader import BufferReader, ConstStructs
    reader = BufferReader(buffer)
    try:
        header = PoseHeader.read(reader)
        version = round(header.version, 3)
        if version not in (0.1, 0.2):
            return  # 0.0 stores each frame on its own: pose-format's reader notices a missing one
        if version == 0.1:
            _, announced = reader.unpack(ConstStructs.double_ushort)
        else:
            reader.unpack(ConstStructs.float)
            announced = reader.unpack(ConstStructs.uint)
        people = reader.unpack(ConstStructs.ushort)
    except Exception as error:  # a header cut short, or not a pose header at all
        raise PoseFormatError(f"{label}: not a readable .pose file ({type(error).__name__}: {error})") from None
    if not header.components or not all(c.format for c in header.components):
        # pose-format's own reader fails on these with a bare max() of nothing
        raise PoseFormatError(f"{label}: not a readable .pose file (its header describes no points)")
    frame_bytes = people * sum(len(c.points) for c in header.components) * (header.num_dims() + 1) * 4
    if not frame_bytes:
        return
    held, rest = divmod(reader.bytes_left(), frame_bytes)
    complete = held >= announced if version == 0.2 else (rest == 0 and held % 65536 == announced)
    if not complete:
        raise PoseFormatError(f"{label}: truncated: the header announces {announced} frames, the file holds "
                              f"{held} whole frame(s) of data and confidence ({reader.bytes_left()} bytes)")


def _check_finite(pose: Pose, label: str) -> None:
    """Every observed point finite, and every confidence: NaN or infinity is a damaged file."""
    confidence = np.asarray(pose.body.confidence)
    data = np.ma.getdata(pose.body.data)
    observed = np.nan_to_num(confidence, nan=1.0) > 0
    bad = ~np.isfinite(confidence) | (observed & ~np.isfinite(data).all(-1))  # (frames, people, points)
    if bad.any():
        frame, person, point = (int(index) for index in np.argwhere(bad)[0])
        names = [(c.name, p) for c in pose.header.components for p in c.points]
        component, name = names[point] if point < len(names) else ("?", str(point))
        raise PoseFormatError(f"{label}: frame {frame} has a non-finite value (NaN or infinity) at {component}/{name}"
                              f"{f' of person {person}' if person else ''}; {int(bad.sum())} such value(s) in all")


def segment(pose: Pose, start_ms: int, end_ms: int) -> Pose:
    """The frames from `start_ms` to `end_ms` milliseconds (a sign in a longer recording), cut as
    spoken-to-signed's lexicon lookup cuts them (`PoseLookup.get_pose`: `floor(ms // (1000 / fps))`
    at both ends, the end exclusive), except that `end_ms` 0 runs to the end of the file where the
    package's `-1` drops the last frame. An end past the file is the file's end, as there."""
    if start_ms < 0 or end_ms < 0 or (end_ms and end_ms <= start_ms):
        raise ValueError(f"segment {start_ms}-{end_ms} ms: start and end must be >= 0 and end > start (0 = to the end)")
    frame_time = 1000 / pose.body.fps
    start_frame = math.floor(start_ms // frame_time)
    end_frame = math.floor(end_ms // frame_time) if end_ms > 0 else None
    frames = pose.body.data.shape[0]
    if start_frame >= (frames if end_frame is None else min(end_frame, frames)):
        raise ValueError(f"segment {start_ms}-{end_ms} ms is empty: the recording has {frames} frames at "
                         f"{pose.body.fps:g} fps ({frames * frame_time:.0f} ms)")
    return Pose(pose.header, pose.body[start_frame:end_frame])


# OpenPose's 70 face points (FB_0 ... FB_69) and their mirror images (jaw, brows, eyes, nose, mouth,
# pupils): the table of Ham2Pose's `flip_pose`, which mirrors its left-handed PJM signers.
_OPENPOSE_FACE_MIRROR = dict(
    [(i, 16 - i) for i in range(8)] + [(i, 43 - i) for i in range(17, 22)]
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (31, 35), (32, 34), (48, 54), (49, 53),
       (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67), (68, 69)])
_OPENPOSE_FACE_MIRROR.update({b: a for a, b in list(_OPENPOSE_FACE_MIRROR.items())})
_MIRRORED_COMPONENTS = {"LEFT_HAND_LANDMARKS": "RIGHT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS": "LEFT_HAND_LANDMARKS",
                        "hand_left_keypoints_2d": "hand_right_keypoints_2d",
                        "hand_right_keypoints_2d": "hand_left_keypoints_2d"}


def _mirrored_point(component: str, point: str) -> str | None:
    """The name of a point's mirror image in its component; None where it is not known."""
    if component == "face_keypoints_2d":
        number = int(point.split("_")[-1])
        return f"FB_{_OPENPOSE_FACE_MIRROR.get(number, number)}"
    if component == "FACE_LANDMARKS":
        return None  # MediaPipe's face-mesh mirror table lives in pose_format.utils.holistic, which needs mediapipe
    if component == "pose_keypoints_2d" and point[:1] in ("L", "R") and point[1:2].isupper():  # LShoulder
        return {"L": "R", "R": "L"}[point[0]] + point[1:]
    if component == "POSE_LANDMARKS":  # LEFT_SHOULDER, MOUTH_LEFT
        for this, other in (("LEFT", "RIGHT"), ("RIGHT", "LEFT")):
            if point.startswith(this + "_"):
                return other + point[len(this):]
            if point.endswith("_" + this):
                return point[:-len(this)] + other
    return point  # hands keep their point names (the component swaps); centre points are their own image


def mirror(pose: Pose) -> Pose:
    """A left-handed signer's recording as if a right-handed one had signed it: the image flipped
    left to right (x -> width - x) and left and right swapped (body points by name, the two hands,
    OpenPose's face by Ham2Pose's table), as pose-format's `mirror_horizontal` does for Holistic.
    That one needs mediapipe, so Holistic goes through this one too; its face mesh, whose mirror
    table is mediapipe's, becomes missing (confidence 0). World landmarks are not flipped (as there)."""
    _layout_family(pose.header)
    offsets, points, start = {}, {}, 0
    for component in pose.header.components:
        offsets[component.name] = start
        points[component.name] = {name: i for i, name in enumerate(component.points)}
        start += len(component.points)
    permutation, flip_x, unknown = [], [], []
    for component in pose.header.components:
        world = "WORLD" in component.name
        source = _MIRRORED_COMPONENTS.get(component.name, component.name)
        source = source if source in points and not world else component.name
        for i, point in enumerate(component.points):
            partner = point if world else _mirrored_point(component.name, point)
            unknown.append(partner is None)
            index = points[source].get(partner) if partner is not None else None
            permutation.append(offsets[component.name] + i if index is None else offsets[source] + index)
            flip_x.append(not world)
    data = pose.body.data[:, :, permutation, :].copy()  # (frames, people, points, dims), masked
    data[:, :, flip_x, 0] = pose.header.dimensions.width - data[:, :, flip_x, 0]
    confidence = np.asarray(pose.body.confidence)[:, :, permutation].copy()
    confidence[:, :, np.asarray(unknown)] = 0.0
    return Pose(pose.header, type(pose.body)(fps=pose.body.fps, data=data, confidence=confidence))


def num_dims(pose: Pose) -> int:
    """Coordinates per point: 2 for OpenPose (XYC), 3 for MediaPipe Holistic (XYZC)."""
    return len(pose.header.components[0].format) - 1


def with_dims(pose: Pose, dims: int) -> Pose:
    """`pose` with only its first `dims` coordinates: a 3D recording as 2D (x, y) for a 2D skeleton.
    More dimensions than the pose has are not made up: a 2D pose stays 2D."""
    if not 2 <= dims <= 3:
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if dims >= num_dims(pose):
        return pose
    components = [PoseHeaderComponent(c.name, c.points, c.limbs, c.colors, c.format[:dims] + c.format[-1])
                  for c in pose.header.components]
    header = PoseHeader(pose.header.version, pose.header.dimensions, components, pose.header.is_bbox)
    return Pose(header, type(pose.body)(fps=pose.body.fps, data=pose.body.data[..., :dims],
                                        confidence=pose.body.confidence))


def resampled_frames(frames: int, recorded_fps: float, fps: float) -> int:
    """How many frames `resample_to_fps` gives a sequence of `frames` recorded at `recorded_fps`, known
    without reading it (preparation decides what to keep before it converts anything)."""
    if math.isclose(recorded_fps, fps, rel_tol=1e-6) or frames == 1:
        return frames
    return round(frames * fps / recorded_fps)  # pose-format's NumPyPoseBody.interpolate


def resample_to_fps(sequence: PoseSequence, fps: float) -> PoseSequence:
    """`sequence` at `fps` frames per second over the same duration, by pose-format's own
    interpolation (`NumPyPoseBody.interpolate`, cubic: round(frames * fps / sequence.fps) frames,
    the first and last kept). A resampled value is observed only where the recorded frames on both
    sides of it are, with their confidence interpolated linearly, so that a gap the tracker left
    stays missing rather than filled by the spline."""
    # data: (frames, joints, dims); confidence: (frames, joints)
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if math.isclose(sequence.fps, fps, rel_tol=1e-6):
        return sequence
    if sequence.num_frames == 1:  # a still: one frame at any rate
        return PoseSequence(sequence.data, sequence.confidence, float(fps), sequence.normalization, sequence.canvas,
                            sequence.layout)
    frames, joints, dims = sequence.data.shape
    missing = np.broadcast_to((sequence.confidence == 0)[:, None, :, None], (frames, 1, joints, dims))
    body = NumPyPoseBody(fps=sequence.fps, data=np.ma.masked_array(sequence.data[:, None], mask=missing),
                         confidence=sequence.confidence[:, None])
    moved = np.ma.filled(np.ma.asarray(body.interpolate(new_fps=fps).data[:, 0]), 0.0)  # (new frames, joints, dims)
    # where each new frame falls between recorded ones, on pose-format's grid (linspace from first to last)
    position = np.round(np.linspace(0, frames - 1, moved.shape[0]), 9)
    before, after = np.floor(position).astype(int), np.ceil(position).astype(int)
    weight = (position - before)[:, None]
    recorded = sequence.confidence
    observed = (recorded[before] > 0) & (recorded[after] > 0)
    confidence = np.where(observed, recorded[before] * (1 - weight) + recorded[after] * weight, 0.0)
    data = np.where(observed[..., None], moved, 0.0)
    return PoseSequence(data.astype(np.float32), confidence.astype(np.float32), float(fps), sequence.normalization,
                        sequence.canvas, sequence.layout)


def resample_to_frames(keypoints: Keypoints, frames: int, keep_missing_values: bool = False) -> Keypoints:
    """`keypoints` stretched linearly in time to `frames` frames (the first and last kept): the
    same motion in more or fewer frames, at no frame rate in particular.

    An output value mixing a missing input value is missing too (confidence 0, value 0, or the
    interpolated value with `keep_missing_values`: a generated joint predicted absent has one)."""
    # keypoints.data: (frames_in, joints, dims); keypoints.confidence: (frames_in, joints)
    if frames < 1:
        raise ValueError(f"cannot resample to {frames} frames")
    data, confidence = keypoints.data, keypoints.confidence
    source = len(data)
    if source == frames:
        return Keypoints(data.copy(), confidence.copy())
    position = np.linspace(0, source - 1, frames) if frames > 1 else np.zeros(1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, source - 1)
    weight = (position - below)[:, None]  # (frames, 1)
    values = (1 - weight[..., None]) * data[below] + weight[..., None] * data[above]
    conf_below = np.where(weight < 1, confidence[below], np.inf)
    conf_above = np.where(weight > 0, confidence[above], np.inf)
    out_confidence = np.minimum(conf_below, conf_above).astype(np.float32)
    if not keep_missing_values:
        values[out_confidence <= 0] = 0.0
    return Keypoints(values.astype(np.float32), out_confidence)


def frame_motion(data: np.ndarray, confidence: np.ndarray | None = None, per_frame: bool = False,
                 unseen: float = 0.0):
    """Mean Euclidean displacement of a joint from one frame to the next (both frames observed).
    `per_frame`: one such mean per frame-to-frame step instead, `(frames - 1,)`, `unseen` where no
    joint is in both frames (composition paces its transitions by it; the join metrics use NaN)."""
    # data: (frames, joints, dims); confidence: (frames, joints)
    steps = np.linalg.norm(np.diff(data, axis=0), axis=-1)  # (frames - 1, joints)
    both = np.ones(steps.shape, bool) if confidence is None else (confidence[1:] > 0) & (confidence[:-1] > 0)
    if per_frame:
        with np.errstate(invalid="ignore"):
            return np.where(both.any(1), (steps * both).sum(1) / np.maximum(both.sum(1), 1), unseen)
    if len(data) < 2:
        return 0.0
    return float(steps[both].mean()) if both.any() else float("nan")


def component_pose(component: str, points: Sequence[str], data: np.ndarray, confidence: np.ndarray,
                   fps: float = 1.0) -> Pose:
    """A pose-format `Pose` of one component from arrays, masked where confidence is 0: for handing
    a few joints to a library that reads pose-format (spoken-to-signed's signing span)."""
    # data: (frames, points, dims); confidence: (frames, points)
    dims = data.shape[-1]
    header = PoseHeader(0.1, PoseHeaderDimensions(1, 1),
                        [PoseHeaderComponent(component, list(points), [], [(0, 0, 0)], "XYZC"[:dims] + "C")])
    return Pose(header, NumPyPoseBody(fps=float(fps), data=data[:, None], confidence=confidence[:, None]))


def normalization_of(pose: Pose) -> Normalization:
    """The shoulder normalisation pose-format's `Pose.normalize` applies to this pose."""
    normalized = pose.copy().normalize()  # normalize() works in place, hence the copy
    before = np.ma.asarray(pose.body.data)
    after = np.ma.asarray(normalized.body.data)
    valid = ~np.ma.getmaskarray(before) & ~np.ma.getmaskarray(after)
    valid &= (pose.body.confidence > 0)[..., None]
    dims = before.shape[-1]
    raw = [np.asarray(before[..., d])[valid[..., d]] for d in range(dims)]
    out = [np.asarray(after[..., d])[valid[..., d]] for d in range(dims)]
    # after = (before - center) * scale, recovered by least squares over every observed value
    covariance = sum(float(((r - r.mean()) * (o - o.mean())).sum()) for r, o in zip(raw, out) if r.size)
    variance = sum(float(((r - r.mean()) ** 2).sum()) for r in raw if r.size)
    if variance <= 0 or not np.isfinite(covariance) or covariance <= 0:
        raise PoseFormatError("cannot shoulder-normalise this pose: its shoulders are missing")
    scale = covariance / variance
    center = np.array([r.mean() - o.mean() / scale if r.size else 0.0 for r, o in zip(raw, out)], dtype=np.float32)
    return Normalization(center=center, scale=float(scale))


def shoulder_normalize(data: np.ndarray, confidence: np.ndarray, right: int, left: int) -> np.ndarray:
    """pose-format's `Pose.normalize` on arrays: centre on the mean shoulder midpoint, scale so the
    mean shoulder width is 1 (frames where a shoulder is missing do not count). The same transform
    `normalization_of` reads off pose-format for a file; this one is for arrays already on a
    skeleton, in their dtype (metrics compute it in float64 to reproduce published numbers)."""
    # data: (frames, joints, dims); confidence: (frames, joints)
    both = (confidence[:, right] > 0) & (confidence[:, left] > 0)
    if not both.any():
        raise ValueError("cannot shoulder-normalise a sequence whose shoulders are never seen")
    center = ((data[both, right] + data[both, left]) / 2).mean(axis=0)
    width = np.linalg.norm(data[both, right] - data[both, left], axis=-1).mean()
    if not width > 0:
        raise ValueError("cannot shoulder-normalise a sequence whose shoulders coincide")
    return (data - center) / width


def to_sequence(pose: Pose, skeleton: Skeleton, normalize: bool = True) -> PoseSequence:
    """Map a pose of any supported layout onto `skeleton`; points it lacks are masked. A 3D pose on
    a 2D skeleton loses its depth before it is normalised (`with_dims`), so that its scale is its
    2D shoulder width, as a 2D recording's is; a 2D pose on a 3D skeleton gets depth 0."""
    _layout_family(pose.header)
    pose = with_dims(pose, skeleton.dims)
    normalization = normalization_of(pose) if normalize else Normalization(np.zeros(pose.body.data.shape[-1], np.float32), 1.0)
    data = np.ma.filled(np.ma.asarray(pose.body.data[:, 0]), 0.0).astype(np.float32)  # (frames, points, dims)
    confidence = np.asarray(pose.body.confidence[:, 0], dtype=np.float32)              # (frames, points)
    confidence = np.where(np.ma.getmaskarray(np.ma.asarray(pose.body.data[:, 0])).any(-1), 0.0, confidence)
    data = normalization.apply(data)

    frames = data.shape[0]
    out = np.zeros((frames, skeleton.num_joints, skeleton.dims), dtype=np.float32)
    out_confidence = np.zeros((frames, skeleton.num_joints), dtype=np.float32)
    shared_dims = min(skeleton.dims, data.shape[-1])
    for joint, source_index in enumerate(_source_indices(pose.header, skeleton)):
        if source_index is None:
            continue
        out[:, joint, :shared_dims] = data[:, source_index, :shared_dims]
        out_confidence[:, joint] = confidence[:, source_index]
    out_confidence = np.clip(np.nan_to_num(out_confidence), 0.0, 1.0)
    out[out_confidence == 0] = 0.0
    # a 2D layout read onto a 3D skeleton has depth 0, so its normalisation gets a zero depth centre
    center = np.zeros(skeleton.dims, dtype=np.float32)
    center[:shared_dims] = normalization.center[:shared_dims]
    normalization = Normalization(center, normalization.scale)
    dims = pose.header.dimensions
    layout = Layout(pose.header, np.ma.filled(np.ma.asarray(pose.body.data[0, 0]), 0.0).astype(np.float32),
                    confidence[0].astype(np.float32))
    return PoseSequence(out, out_confidence, float(pose.body.fps), normalization,
                        (int(dims.width), int(dims.height), int(getattr(dims, "depth", 0) or 0)), layout)


def _source_indices(header: PoseHeader, skeleton: Skeleton) -> list[int | None]:
    """For each skeleton joint, its point index in `header` (by name or alias), or None."""
    offsets: dict[tuple[str, str], int] = {}
    start = 0
    for component in header.components:
        for i, point in enumerate(component.points):
            offsets[(component.name, point)] = start + i
        start += len(component.points)
    indices: list[int | None] = []
    for joint in skeleton.joints:
        candidates = ALIASES.get(joint, (joint,))
        indices.append(next((offsets[name] for name in candidates if name in offsets), None))
    return indices


def load_sequence(source: Union[str, Path, bytes, BinaryIO], skeleton: Skeleton) -> PoseSequence:
    """Read a `.pose` file onto `skeleton`, shoulder-normalised."""
    return to_sequence(read_pose(source), skeleton)


def to_pose(data: np.ndarray, skeleton: Skeleton, fps: float,
            normalization: Normalization | None = None, confidence: np.ndarray | None = None,
            canvas: tuple[int, int, int] = (500, 500, 0)) -> Pose:
    """A prediction `(frames, joints, dims)` as a pose-format `Pose`, back in the space of `normalization`."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3 or data.shape[1:] != (skeleton.num_joints, skeleton.dims):
        raise ValueError(f"expected (frames, {skeleton.num_joints}, {skeleton.dims}), got {data.shape}")
    if normalization is not None:
        data = normalization.invert(data)
    if confidence is None:
        confidence = np.ones(data.shape[:2], dtype=np.float32)
    body = NumPyPoseBody(fps=float(fps), data=data[:, None], confidence=np.asarray(confidence, np.float32)[:, None])
    return Pose(skeleton.header(*canvas), body)


def start_from(data: np.ndarray, confidence: np.ndarray, first_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translate every joint so that its first observed position is the first pose's: the motion
    of a borrowed sequence, performed from the requested starting pose. Missing values stay missing."""
    # data: (frames, joints, dims); confidence: (frames, joints); first_pose: (joints, dims)
    observed = confidence > 0
    first_seen = np.argmax(observed, axis=0)  # (joints,)
    joints = np.arange(data.shape[1])
    offset = np.where(observed.any(axis=0)[:, None], first_pose - data[first_seen, joints], 0.0)
    moved = np.where(observed[..., None], data + offset[None], 0.0)
    return moved.astype(np.float32), confidence.astype(np.float32)


def in_layout(pose: Pose, skeleton: Skeleton, layout: Layout) -> Pose:
    """`pose` (on `skeleton`, in the layout's coordinate space) written with the layout's own header,
    so that it overlays the video the layout was tracked from. Every point the skeleton has (by name
    or alias) comes from `pose`; the others (a face, legs) keep the layout's first frame, moved with
    the shoulders, and its confidence."""
    frames = pose.body.data.shape[0]
    source = np.ma.filled(np.ma.asarray(pose.body.data[:, 0]), 0.0).astype(np.float32)  # (frames, joints, dims)
    source_confidence = np.asarray(pose.body.confidence[:, 0], dtype=np.float32)         # (frames, joints)
    dims = layout.first_frame.shape[-1]
    shared = min(dims, source.shape[-1])
    shoulders = [skeleton.joint_index("POSE_LANDMARKS", name) for name in ("LEFT_SHOULDER", "RIGHT_SHOULDER")]
    motion = np.zeros((frames, dims), np.float32)
    motion[:, :shared] = (source[:, shoulders] - source[:1, shoulders]).mean(axis=1)[:, :shared]
    data = np.repeat(layout.first_frame[None], frames, axis=0) + motion[:, None]
    confidence = np.repeat(layout.first_confidence[None], frames, axis=0)
    for joint, point in enumerate(_source_indices(layout.header, skeleton)):
        if point is not None:
            data[:, point] = 0.0
            data[:, point, :shared] = source[:, joint, :shared]
            confidence[:, point] = source_confidence[:, joint]  # (positions kept where absent, as to_pose keeps them)
    body = NumPyPoseBody(fps=float(pose.body.fps), data=data[:, None], confidence=confidence[:, None])
    return Pose(layout.header, body)


def fill_in(recording: Pose, skeleton: Skeleton, sequence: PoseSequence, filled: np.ndarray) -> Pose:
    """`recording` with the values marked `filled` (frames, joints of `skeleton`) taken from
    `sequence` (shoulder-normalised as `sequence.normalization` says): every other value, every
    point outside the skeleton (a face, legs) and the header stay exactly as recorded."""
    data = np.ma.filled(np.ma.asarray(recording.body.data), 0.0).astype(np.float32).copy()  # (frames, people, points, dims)
    confidence = np.asarray(recording.body.confidence, dtype=np.float32).copy()            # (frames, people, points)
    values = sequence.normalization.invert(sequence.data)
    shared = min(data.shape[-1], values.shape[-1])
    for joint, point in enumerate(_source_indices(recording.header, skeleton)):
        frames = np.flatnonzero(filled[:, joint])
        if point is None or not frames.size:
            continue
        data[frames, 0, point, :shared] = values[frames, joint, :shared]
        confidence[frames, 0, point] = sequence.confidence[frames, joint]
    body = NumPyPoseBody(fps=float(recording.body.fps), data=data, confidence=confidence)
    return Pose(recording.header, body)


def write_pose(pose: Pose, destination: Union[str, Path, None] = None) -> bytes:
    """Write a pose to `destination` (atomically) and return its bytes."""
    buffer = io.BytesIO()
    pose.write(buffer)
    payload = buffer.getvalue()
    if destination is not None:
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(destination) as partial:
            partial.write_bytes(payload)
    return payload
