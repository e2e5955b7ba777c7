"""Pretraining the notation encoder on notation alone (masked-symbol prediction), measured and not
kept (issue 32, item 5; docs/quality.md, Round V): the three validation splits' handshape,
other-text ratio and arm came out within run-to-run noise of training from scratch.

The corpus is every fingerspelling alphabet the `signwriting` package ships (24 languages, 1,081
readable strings with their variants) less the (language, letter) pairs of DATA's validation and
test splits. A symbol is masked as a whole (all its parts replaced by `<unk>`, as training replaces
unseen symbols) and the encoder predicts each of its parts among the parts of that kind (a base
among bases, a fill among fills, a place among places), through the embedding table itself, so
what is learnt is in the embeddings that `t2p train --init` copies.

    python bench/notation_data.py --out /tmp/nd --seed 0
    python bench/notation_pretraining.py --data /tmp/nd/signwriting --out runs/notation_pretrained
    t2p train --data /tmp/nd/signwriting --init runs/notation_pretrained --out runs/notation_sw_pretrained
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from t2p.config import write_json
from t2p.data import load_manifest, shard_paths
from t2p.data.shards import training_texts
from t2p.model import T2PModel
from t2p.model.layers import pad_tokens
from t2p.notation import NotationError, SignText, Vocabulary, tokenize
from t2p.training.job import model_config_from_manifest


def signwriting_alphabets() -> list[tuple[str, SignText]]:
    """Every fingerspelling alphabet the `signwriting` package ships, as (key `language:letter` in
    lower case, sign): 24 languages, every variant of every letter, notation without recordings.
    The few entries that are not FSW are left out."""
    folder = files("signwriting.fingerspelling").joinpath("data")
    signs = []
    for path in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if not path.name.endswith(".json"):
            continue
        language = path.name[:-len(".json")]
        for letter, variants in json.loads(path.read_text(encoding="utf-8")).items():
            for fsw in variants:
                sign = SignText(fsw, "signwriting", language)
                try:
                    tokenize(sign)
                except NotationError:  # e.g. "default"
                    continue
                signs.append((f"{language}:{letter}".lower(), sign))
    return signs


def held_out_keys(data: Path) -> set[str]:
    """DATA's validation and test pairs as `language:letter`, lower case (the package spells `a`
    for the lexicon's `A`)."""
    return {key.lower() for split in ("validation", "test") for path in shard_paths(data, split)
            for key in pq.read_table(path, columns=["key"]).column("key").to_pylist()}


@dataclass
class PretrainConfig:
    steps: int = 2000
    batch_size: int = 64
    mask_share: float = 0.3    # share of a text's symbols masked (at least one)
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("pretraining steps and batch size must be >= 1")
        if not 0 < self.mask_share <= 1:
            raise ValueError(f"pretraining mask share must be in (0, 1], got {self.mask_share}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NotationCorpus:
    """Texts encoded by a model's vocabulary, each with which of its tokens are symbols."""
    texts: list[list[tuple[int, ...]]]
    symbols: list[list[bool]]

    @classmethod
    def encode(cls, vocabulary: Vocabulary, signs: Sequence[SignText]) -> NotationCorpus:
        """The signs that have at least one symbol (a text of only a language has nothing to mask)."""
        is_symbol = vocabulary.symbol_mask()
        texts, symbols = [], []
        for sign in signs:
            encoded = vocabulary.encode(sign)
            flags = [is_symbol[token[0]] for token in encoded]
            if any(flags):
                texts.append(encoded)
                symbols.append(flags)
        return cls(texts, symbols)

    def __len__(self) -> int:
        return len(self.texts)


def part_kinds(vocabulary: Vocabulary) -> torch.Tensor:
    """Per vocabulary entry, the id of its kind: the entry up to its last `:` (`signwriting` bases,
    `signwriting.fill:hand`, `hamnosys.class`, `lang`, ...). A masked part is predicted among its kind."""
    names = [entry.rsplit(":", 1)[0] if ":" in entry else entry for entry in vocabulary.tokens]
    ids = {name: i for i, name in enumerate(dict.fromkeys(names))}
    return torch.tensor([ids[name] for name in names])


def masked_batch(corpus: NotationCorpus, rows: Sequence[int], unknown_id: int, share: float,
                 rng: random.Random) -> tuple[list[list[tuple[int, ...]]], list[tuple[int, int, int]]]:
    """Each symbol of these texts masked with probability `share` (at least one per text) -> the
    texts to encode and the (text, token, part id) targets."""
    texts, targets = [], []
    for row, index in enumerate(rows):
        tokens = corpus.texts[index]
        positions = [i for i, is_symbol in enumerate(corpus.symbols[index]) if is_symbol]
        chosen = {i for i in positions if rng.random() < share} or {rng.choice(positions)}
        texts.append([(unknown_id,) if i in chosen else token for i, token in enumerate(tokens)])
        targets += [(row, i, part) for i in sorted(chosen) for part in tokens[i]]
    return texts, targets


def masked_loss(model: T2PModel, texts: list[list[tuple[int, ...]]], targets: list[tuple[int, int, int]],
                kinds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy of each masked part among its kind, and whether each was predicted right."""
    tokens, mask = pad_tokens(texts)
    states = model.text_encoder(tokens, mask).states  # (batch, tokens, d_model)
    rows, positions, parts = (torch.tensor(column) for column in zip(*targets))
    logits = states[rows, positions] @ model.text_encoder.embedding.weight.T  # (targets, vocabulary)
    logits = logits.masked_fill(kinds.unsqueeze(0) != kinds[parts].unsqueeze(1), float("-inf"))
    return F.cross_entropy(logits, parts), logits.argmax(1) == parts


def masked_accuracy(model: T2PModel, corpus: NotationCorpus, share: float = 0.3, seed: int = 1) -> float:
    """The share of masked parts predicted right over the whole corpus (one fixed masking)."""
    if not len(corpus):
        return float("nan")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        texts, targets = masked_batch(corpus, range(len(corpus)), model.vocabulary.unknown_id, share,
                                      random.Random(seed))
        _, right = masked_loss(model, texts, targets, part_kinds(model.vocabulary))
    model.train(was_training)
    return float(right.float().mean())


def pretrain_notation(model: T2PModel, corpus: NotationCorpus, config: PretrainConfig, held_out: NotationCorpus | None = None,
                      report: Callable[[str], None] = print) -> dict:
    """Train `model`'s text encoder on masked-symbol prediction over `corpus`; the rest of the model
    is untouched. Returns the masked parts predicted right before and after (on `corpus`, and on
    `held_out`: texts only scored) and the last loss."""
    if not len(corpus):
        raise ValueError("the notation corpus has no text with a symbol to mask")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    kinds = part_kinds(model.vocabulary)
    scored = held_out if held_out is not None and len(held_out) else None
    result = {"strings": len(corpus), "held_out_strings": len(held_out) if held_out is not None else 0,
              "accuracy_before": masked_accuracy(model, corpus, config.mask_share),
              "held_out_accuracy_before": masked_accuracy(model, scored, config.mask_share) if scored else None}
    optimizer = torch.optim.AdamW(model.text_encoder.parameters(), lr=config.learning_rate, weight_decay=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices of a few tokens: a second thread only waits (measured 25x slower on 2 cores)
    model.train()
    began, loss = time.perf_counter(), torch.tensor(float("nan"))
    try:
        for step in range(1, config.steps + 1):
            rows = rng.sample(range(len(corpus)), min(config.batch_size, len(corpus)))
            texts, targets = masked_batch(corpus, rows, model.vocabulary.unknown_id, config.mask_share, rng)
            loss, _ = masked_loss(model, texts, targets, kinds)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.text_encoder.parameters(), 1.0)
            optimizer.step()
            if step % max(1, config.steps // 10) == 0 or step == config.steps:
                report(f"step {step}/{config.steps}: loss {loss.item():.3f} ({time.perf_counter() - began:.0f} s)")
    finally:
        torch.set_num_threads(threads)
        model.eval()
    result.update(loss=loss.item(), seconds=time.perf_counter() - began,
                  accuracy_after=masked_accuracy(model, corpus, config.mask_share),
                  held_out_accuracy_after=masked_accuracy(model, scored, config.mask_share) if scored else None)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="prepared SignWriting shards (their vocabulary, model settings and held-out pairs)")
    parser.add_argument("--out", type=Path, required=True, help="model folder for t2p train --init")
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = PretrainConfig(steps=args.steps, seed=args.seed)
    torch.manual_seed(args.seed)
    model = T2PModel(model_config_from_manifest(load_manifest(args.data), known_texts=training_texts(args.data)))
    held_out = held_out_keys(args.data)
    alphabet = signwriting_alphabets()
    learnt = [sign for key, sign in alphabet if key not in held_out]
    scored = [sign for key, sign in alphabet if key in held_out]
    print(f"{len(learnt)} strings to pretrain on, {len(scored)} of held-out pairs scored only")
    result = pretrain_notation(model, NotationCorpus.encode(model.vocabulary, learnt), config,
                               NotationCorpus.encode(model.vocabulary, scored))
    print(f"masked parts predicted right: {result['accuracy_before']:.3f} -> {result['accuracy_after']:.3f}, "
          f"held-out {result['held_out_accuracy_before']:.3f} -> {result['held_out_accuracy_after']:.3f}")
    model.save(args.out)
    write_json(args.out / "pretraining.json", {"config": config.to_dict(), "result": result})
    print(f"saved {args.out}: t2p train --data {args.data} --init {args.out} --out RUN")


if __name__ == "__main__":
    main()
