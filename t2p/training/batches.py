"""Training examples and batches: typed, padded, masked, grouped by length.

An `Example` is one sign: its token ids and its recording. `collate` pads a list of them into a
`PoseBatch`; `collate_lengths` draws what the length predictor learns from. `window_batches` is
the one windowing of both training loops (`t2p.training.loop.fit` and the Ray Train worker): a
window of examples grouped into batches of similar length, each with its length batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch

from t2p.data.shards import row_to_item
from t2p.model.layers import pad_tokens
from t2p.notation import Vocabulary
from t2p.pose import Keypoints


@dataclass
class Example:
    """One training sign: its text's tokens (per token, its parts' ids) and its recording (shoulder-normalised)."""
    tokens: list[tuple[int, ...]]
    sequence: Keypoints

    def __len__(self) -> int:
        return len(self.sequence)


@dataclass
class PoseBatch:
    poses: torch.Tensor       # (batch, frames, joints, dims)
    confidence: torch.Tensor  # (batch, frames, joints); 0 for missing keypoints and padding
    frame_mask: torch.Tensor  # (batch, frames) True = real frame
    lengths: torch.Tensor     # (batch,)
    tokens: torch.Tensor      # (batch, tokens, parts)
    token_mask: torch.Tensor  # (batch, tokens) True = real token

    def to(self, device: torch.device | str) -> "PoseBatch":
        return PoseBatch(*(getattr(self, name).to(device) for name in
                           ("poses", "confidence", "frame_mask", "lengths", "tokens", "token_mask")))

    @property
    def size(self) -> int:
        return int(self.poses.shape[0])


def collate(examples: Sequence[Example], max_frames: int | None = None) -> PoseBatch:
    """Pad variable-length examples into one batch; sequences longer than max_frames are cut."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(e) if max_frames is None else min(len(e), max_frames) for e in examples]
    longest = max(lengths)
    joints, dims = examples[0].sequence.data.shape[1:]
    poses = torch.zeros(len(examples), longest, joints, dims)
    confidence = torch.zeros(len(examples), longest, joints)
    tokens, token_mask = pad_tokens([example.tokens for example in examples])
    for i, (example, length) in enumerate(zip(examples, lengths)):
        poses[i, :length] = torch.as_tensor(example.sequence.data[:length], dtype=torch.float32)
        confidence[i, :length] = torch.as_tensor(example.sequence.confidence[:length], dtype=torch.float32)
    length_tensor = torch.tensor(lengths)
    frame_mask = torch.arange(longest).unsqueeze(0) < length_tensor.unsqueeze(1)
    return PoseBatch(poses, confidence, frame_mask, length_tensor, tokens, token_mask)


@dataclass
class LengthBatch:
    """What the length predictor learns from: the text, the first pose and the length of examples
    drawn at random, not the length-grouped pose batch (whose near-equal lengths pulled every
    prediction towards the batch's length: held-out MAE 3.2 -> 3.6 frames, docs/quality.md)."""
    tokens: torch.Tensor            # (batch, tokens, parts)
    token_mask: torch.Tensor        # (batch, tokens) True = real token
    first_pose: torch.Tensor        # (batch, joints, dims)
    first_confidence: torch.Tensor  # (batch, joints)
    lengths: torch.Tensor           # (batch,) frames

    def to(self, device: torch.device | str) -> "LengthBatch":
        return LengthBatch(*(getattr(self, name).to(device) for name in
                             ("tokens", "token_mask", "first_pose", "first_confidence", "lengths")))


def collate_lengths(examples: Sequence[Example]) -> LengthBatch:
    if not examples:
        raise ValueError("cannot collate an empty batch")
    tokens, token_mask = pad_tokens([example.tokens for example in examples])
    return LengthBatch(tokens, token_mask,
                       torch.as_tensor(np.stack([example.sequence.data[0] for example in examples]), dtype=torch.float32),
                       torch.as_tensor(np.stack([example.sequence.confidence[0] for example in examples]),
                                       dtype=torch.float32),
                       torch.tensor([len(example) for example in examples]))


class ShardExamples:
    """Ray Data batch (dict of column arrays) -> `Example`s: decodes poses, encodes texts."""

    def __init__(self, vocabulary: Sequence[str], skeleton_dims: tuple[int, int]):
        self.vocabulary_tokens = tuple(vocabulary)
        self.skeleton_dims = tuple(skeleton_dims)
        self._vocabulary = None

    def __call__(self, columns: dict) -> list[Example]:
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self.vocabulary_tokens)
        examples = []
        for i in range(len(columns["id"])):
            item = row_to_item({name: values[i] for name, values in columns.items()}, self.skeleton_dims)
            examples.append(Example(self._vocabulary.encode(item.sign), Keypoints(item.sequence.data,
                                                                                  item.sequence.confidence)))
        return examples


BUCKET_BATCHES = 8  # batches drawn together and grouped by length

Item = TypeVar("Item")


def shuffled_windows(items: Sequence[Item], size: int, generator: torch.Generator) -> Iterator[list[Item]]:
    """One epoch of `items` in a new random order, in windows of `size`: what `window_batches` groups
    (`fit`'s epochs, and a Ray worker's epochs over the rows it keeps in memory)."""
    order = torch.randperm(len(items), generator=generator).tolist()
    for begin in range(0, len(order), size):
        yield [items[i] for i in order[begin:begin + size]]


def window_batches(window: Sequence[Example], batch_size: int, generator: torch.Generator,
                   max_frames: int | None = None) -> Iterator[tuple[PoseBatch, LengthBatch]]:
    """A window of examples (up to BUCKET_BATCHES * batch_size) as batches of similar length in
    random order, each with `batch_size` examples drawn from the whole window for the length
    predictor. Both training loops batch this way."""
    for members in length_batches([len(example) for example in window], batch_size, generator):
        yield collate([window[i] for i in members], max_frames), random_lengths(window, batch_size, generator)


def random_lengths(window: Sequence[Example], size: int, generator: torch.Generator) -> LengthBatch:
    """`size` examples drawn at random from the current window, for the length predictor."""
    chosen = torch.randperm(len(window), generator=generator)[:size].tolist()
    return collate_lengths([window[i] for i in chosen])


def length_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Positions of a shuffled window of examples, grouped into batches of similar length, in random
    order: a batch is padded to its longest sequence, and one 258-frame recording in a batch of
    25-frame ones made that step ten times slower."""
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [by_length[begin:begin + batch_size] for begin in range(0, len(by_length), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
