import csv
import json

import numpy as np
import pytest
import torch
from conftest import POSES, tiny_model_config

from t2p.generation import SignRequest, as_pose, generate, refinement_steps
from t2p.model import T2PModel
from t2p.notation import SignText, Vocabulary
from t2p.pose import Keypoints, Skeleton, SkeletonComponent, load_sequence, read_pose, to_sequence, write_pose
from t2p.training import TrainConfig, fit
from t2p.training.batches import Example, collate
from t2p.training.objective import compute_losses

TOY_SKELETON = Skeleton("toy", (SkeletonComponent("BODY", ("P",), (), ((255, 0, 0),), "XYC"),), 2)


def _mean_joint_error(predicted, reference, confidence):
    observed = confidence > 0
    return float(np.linalg.norm(predicted - reference, axis=-1)[observed].mean())


# Two toy texts that start from the same pose and differ in path and length: only a model that
# reads the text reproduces both (the training mean, a text-blind model or one that holds the first
# pose still cannot).
TOY_TARGETS = {"abc": np.array([[[1, 1]], [[2, 2]], [[3, 3]]], np.float32),
               "abd": np.array([[[1, 1]], [[0, 0]], [[-1, -1]], [[-2, -2]], [[-3, -3]]], np.float32)}


@pytest.fixture(scope="module")
def toy_model():
    torch.manual_seed(0)
    signs = [SignText(text, "text") for text in TOY_TARGETS]
    vocabulary = Vocabulary.build(signs)
    model = T2PModel(tiny_model_config(vocabulary, TOY_SKELETON, max_frames=16, log_length_prior=0.0))
    examples = [Example(vocabulary.encode(sign), Keypoints(target, np.ones((len(target), 1), np.float32)))
                for sign, target in zip(signs, TOY_TARGETS.values())]
    # 450 steps reproduce both within 0.08 of every value and the lengths within 0.06 frames (900 did
    # within 0.04, at twice the time)
    fit(model, examples, TrainConfig(batch_size=2, text_dropout=0.0, learning_rate=3e-3, warmup_steps=10),
        iterations=450)
    return model, signs


@pytest.mark.parametrize("steps", [1, 3])
def test_each_toy_text_gets_its_own_sequence_exactly(toy_model, steps):
    model, signs = toy_model
    for sign in signs:
        target = TOY_TARGETS[sign.text]
        start = Keypoints(target[:1], np.ones((1, 1), np.float32))
        (sequence,) = generate(model, [SignRequest(sign, first_pose=start, steps=steps)])
        assert sequence.data.shape == target.shape, sign.text
        np.testing.assert_array_equal(np.round(sequence.data), target, err_msg=sign.text)
        assert (sequence.confidence == 1).all()


def test_each_toy_text_gets_its_own_length(toy_model):
    model, signs = toy_model
    with torch.no_grad():
        location, _ = model.predict_length(model.encode_signs(signs), torch.ones(len(signs), 1, 2),
                                           torch.ones(len(signs), 1))
    assert [round(float(v)) for v in location.exp()] == [len(TOY_TARGETS[sign.text]) for sign in signs]


@pytest.fixture(scope="module")
def real_data():
    rows = list(csv.DictReader(open(POSES / "lexicon_sgg" / "index.csv", encoding="utf-8")))
    skeleton = Skeleton.from_pose(read_pose(POSES / "lexicon_sgg" / rows[0]["path"]))
    sequences = [load_sequence(POSES / "lexicon_sgg" / row["path"], skeleton) for row in rows]
    signs = [SignText(row["words"], "text", row["signed_language"]) for row in rows]
    return skeleton, signs, sequences


@pytest.fixture(scope="module")
def real_model(six_real_signs_model):
    """The session's model fitted to the six real signs (conftest), these four among them: any real
    model trained to reproduce its signs serves here, and training one more cost 20 s."""
    model, _, _ = six_real_signs_model
    return model


def test_real_sequences_are_reproduced_well_under_the_static_baseline(real_data, real_model):
    _, signs, sequences = real_data
    generated = generate(real_model, [SignRequest(sign, first_pose=s, steps=10, length=s.num_frames)
                                      for sign, s in zip(signs, sequences)])
    model_error = np.mean([_mean_joint_error(g.data, s.data, s.confidence) for g, s in zip(generated, sequences)])
    static_error = np.mean([_mean_joint_error(np.repeat(s.data[:1], s.num_frames, 0), s.data, s.confidence)
                            for s in sequences])
    print(f"overfit mean per-joint error: model {model_error:.3f}, static {static_error:.3f}")
    assert model_error < 0.6 * static_error


def test_every_keypoint_is_predicted_in_every_frame(real_data, real_model):
    _, signs, sequences = real_data
    (generated,) = generate(real_model, [SignRequest(signs[0], steps=3)])
    assert np.isfinite(generated.data).all()
    assert generated.data.shape[1:] == (50, 3)
    assert generated.confidence.shape == generated.data.shape[:2]
    assert (np.abs(generated.data).sum(-1) > 0).all()  # hands included, no zeroed joints


class CountingRefiner(torch.nn.Module):
    def __init__(self, refiner):
        super().__init__()
        self.inner, self.calls = refiner, 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_generation_applies_every_requested_step(real_model, steps):
    counting = CountingRefiner(real_model.refiner)
    real_model.refiner = counting
    try:
        updates = list(refinement_steps(real_model, [SignRequest("essen", steps=steps),
                                                     SignRequest("pizza", steps=steps)], every_step=True))
    finally:
        real_model.refiner = counting.inner
    assert counting.calls == steps
    assert len(updates) == steps


def test_one_step_returns_the_refiners_estimate_itself(real_model, real_data, monkeypatch):
    """One step goes from the start (beta 1) to beta 0: the output is the refiner's x0_hat where it
    says a joint is there, and nothing else (no leftover mix with the starting sequence)."""
    _, signs, sequences = real_data
    estimates = []
    refine = real_model.refine
    monkeypatch.setattr(real_model, "refine", lambda *args: estimates.append(refine(*args)) or estimates[-1])
    request = SignRequest(signs[0], first_pose=sequences[0], steps=1, guidance=1.0)
    updates = list(refinement_steps(real_model, [request], every_step=True))
    assert len(updates) == 1 and len(estimates) == 1
    (output,) = updates[0].sequences
    poses = estimates[0].poses[0].numpy()                       # (frames, joints, dims)
    present = estimates[0].presence_logits[0].numpy() > 0       # (frames, joints)
    np.testing.assert_array_equal(output.confidence, present.astype(np.float32))
    np.testing.assert_allclose(output.data[present], poses[present], atol=1e-5)
    # the estimate is not the start held still, so equality with it is a claim about the step
    assert np.abs(poses[present] - sequences[0].data[0][None].repeat(len(poses), 0)[present]).max() > 0.1
    (generated,) = generate(real_model, [request])
    np.testing.assert_array_equal(generated.data, output.data)  # generate returns that same last step


def test_text_is_encoded_once_per_call_not_per_step(real_model, monkeypatch):
    calls = []
    original = real_model.text_encoder.forward
    monkeypatch.setattr(real_model.text_encoder, "forward", lambda *a: calls.append(1) or original(*a))
    generate(real_model, [SignRequest("essen", steps=5), SignRequest("kinder", steps=5)])
    assert len(calls) == 1


def test_batching_changes_nothing(real_model, real_data):
    _, signs, sequences = real_data
    texts = [signs[0], signs[1], SignText("", "text"), signs[3]]
    lengths = [40, None, 12, 70]
    steps = [4, 10, 1, 6]
    guidance = [None, 2.0, None, 1.5]
    first = [sequences[2], None, sequences[0], None]
    requests = [SignRequest(*item, seed=3) for item in zip(texts, first, steps, lengths, guidance)]
    batched = generate(real_model, requests)
    for i, request in enumerate(requests):
        (alone,) = generate(real_model, [request])
        assert alone.data.shape == batched[i].data.shape
        np.testing.assert_allclose(batched[i].data, alone.data, atol=1e-4)
        np.testing.assert_array_equal(batched[i].confidence, alone.confidence)


def test_refinement_steps_are_generate_one_step_at_a_time(real_model, real_data):
    """What Serve takes turns with and streams: one record per step of the longest schedule, saying
    which items it refined (fewer steps join later); the last step's sequences are `generate`'s."""
    _, signs, sequences = real_data
    requests = [SignRequest(sign, first_pose=first, steps=steps, length=length)
                for sign, first, steps, length in zip(signs[:3], [sequences[0], None, None], [4, 1, 3], [9, 5, 7])]
    quiet = list(refinement_steps(real_model, requests))
    assert [(step.step, step.steps, step.done) for step in quiet] == [(1, 4, False), (2, 4, False), (3, 4, False),
                                                                       (4, 4, True)]
    assert [step.refined for step in quiet] == [[True, False, False], [True, False, True], [True, False, True],
                                                [True, True, True]]
    assert all(step.sequences is None for step in quiet[:-1])  # unasked, the steps before the last cost nothing extra
    every = list(refinement_steps(real_model, requests, every_step=True))
    expected = generate(real_model, requests)
    for sequence, last, streamed in zip(expected, quiet[-1].sequences, every[-1].sequences):
        np.testing.assert_array_equal(last.data, sequence.data)
        np.testing.assert_array_equal(streamed.data, sequence.data)
    assert not np.allclose(every[0].sequences[0].data, every[-1].sequences[0].data)  # a sequence per step, refined


def test_the_longest_predicted_length_may_differ_per_item(real_model, real_data):
    _, signs, _ = real_data
    (free,) = generate(real_model, [SignRequest(signs[0], steps=1)])
    assert len(free) > 3
    capped, same = generate(real_model, [SignRequest(signs[0], steps=1, max_length=3), SignRequest(signs[0], steps=1)])
    assert len(capped) == 3 and len(same) == len(free)


def test_each_item_samples_its_length_with_its_own_seed(real_model, real_data):
    _, signs, _ = real_data
    seeds = [1, 2, 1, None]
    requests = [SignRequest(sign, seed=seed, steps=1, length_temperature=2.0) for sign, seed in zip(signs[:4], seeds)]
    batched = generate(real_model, requests)
    alone = [generate(real_model, [request])[0] for request in requests]
    assert [len(s) for s in batched] == [len(s) for s in alone]
    # and a seed does change the sampled length (else this test could not fail)
    lengths = {len(generate(real_model, [SignRequest(signs[0], seed=seed, steps=1, length_temperature=2.0)])[0])
               for seed in range(6)}
    assert len(lengths) > 1


def test_first_pose_decides_the_start_and_missing_keypoints_are_completed(real_model, real_data):
    _, signs, sequences = real_data
    first = sequences[1].data[0].copy()
    confidence = sequences[1].confidence[0].copy()
    confidence[8:29] = 0  # the left hand is missing
    with torch.no_grad():
        completed = real_model.complete_first_pose(torch.tensor(first[None]), torch.tensor(confidence[None]))[0].numpy()
    observed = confidence > 0
    np.testing.assert_array_equal(completed[observed], first[observed])
    assert np.isfinite(completed[~observed]).all() and np.abs(completed[~observed]).sum() > 0


def test_a_gap_is_filled_from_the_values_around_it(real_model, real_data):
    """The known values reach the model (and its starting sequence), not only the output: moving the
    frames after a gap moves the frames filled in it, and the fill beats holding the first pose."""
    _, signs, sequences = real_data
    reference = sequences[0]
    confidence = reference.confidence.copy()
    confidence[10:20] = 0  # a gap of ten frames
    moved = reference.data.copy()
    moved[20:, :, 0] += 0.5  # everything after the gap half a shoulder width to the side
    (filled,), (filled_moved,) = (generate(real_model, [SignRequest(signs[0], first_pose=reference, steps=5,
                                                                    observed=Keypoints(data, confidence))])
                                  for data in (reference.data, moved))
    gap = slice(10, 20)
    shift = (filled_moved.data[gap, :, 0] - filled.data[gap, :, 0]).mean()
    assert 0.1 < shift < 0.5  # part of the way: the gap leads from the old position to the new one
    truth, seen = reference.data[gap], reference.confidence[gap] > 0
    error = np.linalg.norm(filled.data[gap] - truth, axis=-1)[seen].mean()
    held = np.linalg.norm(reference.data[0][None] - truth, axis=-1)[seen].mean()
    assert error < 0.5 * held


def test_save_and_load_give_the_same_outputs(real_model, tmp_path):
    real_model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = T2PModel.load(tmp_path / "model")
    requests = [SignRequest(text, steps=4, guidance=2.0) for text in ("essen", "kinder")]
    before = generate(real_model, requests)
    after = generate(loaded, requests)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.confidence, b.confidence)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model"]["skeleton"]["components"][0]["name"] == "POSE_LANDMARKS"


def test_loading_rejects_unknown_config_keys(real_model, tmp_path):
    real_model.save(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    config["model"]["surprise"] = 1
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown model config keys: \\['surprise'\\]"):
        T2PModel.load(tmp_path / "model")


def test_a_new_model_starts_from_another_models_weights_token_by_token():
    # a model pretrained on one vocabulary starts one whose vocabulary has other letters, in
    # another order: shared tokens keep their trained rows, new ones their own start
    first = Vocabulary.build([SignText("abc", "text", "ase")])
    second = Vocabulary.build([SignText("xcb", "text", "gsg")])
    source = T2PModel(tiny_model_config(first, TOY_SKELETON))
    target = T2PModel(tiny_model_config(second, TOY_SKELETON))
    untouched = target.text_encoder.embedding.weight.detach().clone()
    copied = target.start_from(source)
    assert copied["kept"] == 0 and copied["entries"] == len(set(first.tokens) & set(second.tokens))
    rows = {entry: i for i, entry in enumerate(first.tokens)}
    for i, entry in enumerate(second.tokens):
        for table in ("text_encoder.embedding.weight", "length_predictor.tokens_in.weight"):
            own, theirs = target.state_dict()[table][i], source.state_dict()[table]
            if entry in rows:
                assert torch.equal(own, theirs[rows[entry]]), (table, entry)
        if entry not in rows:  # "text:x", "lang:gsg"
            assert torch.equal(target.text_encoder.embedding.weight[i], untouched[i]), entry
    assert {"text:x", "lang:gsg"} <= set(second.tokens) - set(rows)
    for name, tensor in source.refiner.state_dict().items():
        assert torch.equal(target.refiner.state_dict()[name], tensor), name


def test_starting_from_a_model_of_another_size_is_refused_by_name():
    vocabulary = Vocabulary.build([SignText("abc", "text")])
    source = T2PModel(tiny_model_config(vocabulary, TOY_SKELETON, d_model=16))
    target = T2PModel(tiny_model_config(vocabulary, TOY_SKELETON))
    before = {name: tensor.clone() for name, tensor in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"d_model 16 \(here 32\).*--set d_model="):
        target.start_from(source)
    assert all(torch.equal(target.state_dict()[name], tensor) for name, tensor in before.items())


def test_generated_pose_is_written_in_the_first_pose_space(real_model, real_data, tmp_path):
    _, signs, sequences = real_data
    (generated,) = generate(real_model, [SignRequest(signs[0], first_pose=sequences[0], steps=2)])
    write_pose(as_pose(real_model, generated, sequences[0]), tmp_path / "out.pose")
    back = to_sequence(read_pose(tmp_path / "out.pose"), real_model.skeleton, normalize=False)
    np.testing.assert_array_equal(back.confidence, generated.confidence)
    present = generated.confidence > 0
    assert present.any()
    np.testing.assert_allclose(back.data[present], sequences[0].normalization.invert(generated.data)[present],
                               rtol=1e-4, atol=1e-3)


def test_losses_are_finite_and_ignore_padding(real_model, real_data):
    _, signs, sequences = real_data
    vocabulary = real_model.vocabulary
    examples = [Example(vocabulary.encode(g), s) for g, s in zip(signs, sequences)]
    batch = collate(examples)
    assert batch.frame_mask.sum(1).tolist() == [s.num_frames for s in sequences]
    poisoned = collate(examples)
    poisoned.poses[~poisoned.frame_mask] = 1e6  # values in padding must not matter
    config = TrainConfig(text_dropout=0.0)
    clean = compute_losses(real_model, batch, config, torch.Generator().manual_seed(1))
    dirty = compute_losses(real_model, poisoned, config, torch.Generator().manual_seed(1))
    for name in clean:
        assert torch.isfinite(clean[name])
        assert torch.allclose(clean[name], dirty[name], rtol=1e-4), name


def test_invalid_arguments_are_clear_errors(real_model):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        generate(real_model, [SignRequest("essen", steps=0)])
    with pytest.raises(ValueError, match="steps must be in 1..1000"):
        generate(real_model, [SignRequest("essen", steps=1001)])
    with pytest.raises(ValueError, match="length must be in 1..128"):
        generate(real_model, [SignRequest("essen", length=1000)])
    for guidance in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance must be a finite number"):
            SignRequest("essen", guidance=guidance)


def test_the_best_measured_steps_and_guidance_become_the_model_default(real_model, real_data):
    from dataclasses import replace

    from t2p.data import PreparedItem
    from t2p.training.validation import choose_generation_defaults
    _, signs, sequences = real_data
    items = [PreparedItem(str(i), str(i), "validation", sign, sign.text, sequence, "")
             for i, (sign, sequence) in enumerate(zip(signs, sequences))]
    saved = replace(real_model.schedule_config)
    schedule, table = choose_generation_defaults(real_model, items, steps=(1, 4), guidance=(1.0, 3.0))
    assert [(row["steps"], row["guidance"]) for row in table] == [(1, 1.0), (1, 3.0), (4, 1.0), (4, 3.0)]
    (chosen,) = [row for row in table if row["chosen"]]
    lowest = min(row["val_dtw_mje"] for row in table)
    good = [row for row in table if row["val_dtw_mje"] <= lowest * 1.01]
    assert chosen in good  # as good as the best, within 1% ...
    assert chosen["steps"] == min(row["steps"] for row in good)  # ... and the cheapest such
    assert (schedule.steps, schedule.guidance) == (chosen["steps"], chosen["guidance"])
    assert real_model.schedule_config == saved  # the model itself is left as it was


def test_training_batches_group_similar_lengths_and_use_every_example_once():
    from t2p.training.batches import length_batches
    lengths = [25, 258, 24, 26, 105, 27, 25, 30]
    batches = length_batches(lengths, 3, torch.Generator().manual_seed(0))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    longest_first = sorted(batches, key=lambda batch: max(lengths[i] for i in batch), reverse=True)
    assert [sorted(lengths[i] for i in batch) for batch in longest_first] == [[105, 258], [26, 27, 30], [24, 25, 25]]
