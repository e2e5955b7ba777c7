import json
import warnings

import numpy as np
import pytest
from conftest import DATA, POSES
from PIL import Image

import t2p.evaluation.render as render_module
from t2p.cli import main
from t2p.data import prepare
from t2p.data.sources import lexicon_items
from t2p.evaluation.render import Panel, render, render_file, render_refinement
from t2p.model import T2PModel
from t2p.notation import hamnosys_symbols
from t2p.pose import Skeleton, load_sequence, read_pose, to_pose, write_pose
from t2p.training.job import model_config_from_manifest

ESSEN = POSES / "lexicon_sgg" / "essen.pose"    # 73 frames
KINDER = POSES / "lexicon_sgg" / "kinder.pose"  # 45 frames
HAMNOSYS = json.loads((DATA / "hamnosys" / "ham2pose_data.json").read_text())
PILL = HAMNOSYS["10010"]       # real HamNoSys: hampinch12,hamextfingerul,hampalml,hamlips,...
ALTERNATIVE = HAMNOSYS["13672"]  # real HamNoSys with the ASCII symbols { | } inside
UNASSIGNED = "\ue0ff"          # a Private Use Area code point no font here has: drawn as a .notdef box


def _gif_frames(path) -> int:
    with Image.open(path) as image:
        return image.n_frames


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    manifest = prepare(lexicon_items(POSES / "lexicon_sgg" / "index.csv"), tmp_path_factory.mktemp("data"),
                       source="lexicon", fractions=(0.5, 0.25, 0.25), progress=False)
    return T2PModel(model_config_from_manifest(manifest, d_model=32, heads=2, text_layers=1, refiner_layers=1,
                                               dropout=0.0))


def test_render_writes_a_gif_whose_frame_count_equals_the_pose(tmp_path):
    result = render_file(ESSEN, tmp_path / "essen.gif", text="essen", panel_height=96)
    assert result.frames == read_pose(ESSEN).body.data.shape[0] == 73
    assert _gif_frames(tmp_path / "essen.gif") == 73


def test_prediction_and_reference_side_by_side_last_as_long_as_the_longer(tmp_path):
    alone = render_file(KINDER, tmp_path / "alone.gif", panel_height=96)
    both = render_file(KINDER, tmp_path / "both.gif", reference=ESSEN, text="kinder", panel_height=96)
    assert both.frames == _gif_frames(tmp_path / "both.gif") == 73
    assert both.panels == 2 and both.width > 1.8 * alone.width


def test_a_frozen_pose_keeps_every_frame(tmp_path):
    """GIF writers merge identical frames; the frame counter in the caption keeps them apart."""
    skeleton = Skeleton.from_pose(read_pose(ESSEN))
    sequence = load_sequence(ESSEN, skeleton)
    frozen = np.repeat(sequence.data[:1], 20, axis=0)
    pose = to_pose(frozen, skeleton, sequence.fps, sequence.normalization, canvas=sequence.canvas)
    write_pose(pose, tmp_path / "frozen.pose")
    result = render([Panel(read_pose(tmp_path / "frozen.pose"))], tmp_path / "frozen.gif", panel_height=64)
    assert result.frames == _gif_frames(tmp_path / "frozen.gif") == 20


def test_a_frame_shows_a_skeleton(tmp_path):
    render_file(ESSEN, tmp_path / "essen.gif", panel_height=128)
    with Image.open(tmp_path / "essen.gif") as image:
        image.seek(36)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    coloured = (pixels.max(-1) - pixels.min(-1)) > 80  # limbs are drawn in colour on white
    assert coloured.mean() > 0.005


def test_the_refinement_is_drawn_one_panel_per_shown_step(tmp_path, tiny_model):
    first = load_sequence(ESSEN, tiny_model.skeleton)
    result = render_refinement(tiny_model, "essen", tmp_path / "steps.gif", steps=3, first_pose=first, length=8,
                               panel_height=64)
    assert result.panels == 1 + 3  # the start x_T, then every step
    assert result.frames == _gif_frames(tmp_path / "steps.gif") == 8
    many = render_refinement(tiny_model, "essen", tmp_path / "many.gif", steps=50, first_pose=first, length=4,
                             max_panels=5, reference=read_pose(ESSEN), panel_height=48)
    assert many.panels == 1 + 4 + 1  # evenly spaced steps, capped, and the reference
    assert many.frames == 73         # the reference is the longest panel


def test_render_command_writes_an_mp4(tmp_path, capsys):
    out = tmp_path / "kinder.mp4"
    assert main(["render", str(KINDER), "--text", "kinder", "--height", "64", "-o", str(out)]) == 0
    import cv2
    video = cv2.VideoCapture(str(out))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 45
    assert "45 frames" in capsys.readouterr().out


def test_render_command_draws_a_models_refinement(tmp_path, tiny_model, capsys):
    from t2p.generation import SignRequest, generate
    tiny_model.save(tmp_path / "model")
    out = tmp_path / "steps.gif"
    assert main(["render", str(ESSEN), "--model", str(tmp_path / "model"), "--text", "essen", "--steps", "2",
                 "--height", "48", "-o", str(out)]) == 0
    # one frame per frame of the sign the library generates for the same request (the start is x_T) ...
    (expected,) = generate(tiny_model, [SignRequest("essen", first_pose=load_sequence(ESSEN, tiny_model.skeleton),
                                                    steps=2)])
    assert _gif_frames(out) == len(expected) and f"({len(expected)} frames" in capsys.readouterr().out
    # ... and three panels side by side: the start, step 1 and step 2
    single = render_file(ESSEN, tmp_path / "one.gif", panel_height=48)
    with Image.open(out) as image:
        assert 2.5 * single.width < image.width < 3.5 * single.width


@pytest.mark.parametrize("arguments, message", [
    (["-o", "out.png", str(ESSEN)], ".gif or .mp4"),
    (["--steps", "3", "-o", "out.gif", str(ESSEN)], "--model"),
    (["-o", "out.gif"], "give a .pose file"),
])
def test_render_command_explains_a_mistake_in_one_line(arguments, message, capsys):
    assert main(["render", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error


# --- HamNoSys in captions -----------------------------------------------------------------------

def _caption_ink(caption: str, panel_height: int = 160) -> np.ndarray:
    """Where one composed frame's caption strip (below a blank panel) is dark."""
    panel = np.full((panel_height, 240, 3), 255, np.uint8)
    frame = render_module._compose([panel], [""], caption, 0, 1, 4)
    return frame[panel_height:].min(axis=-1) < 160


@pytest.fixture
def without_hamnosys_font(monkeypatch, tmp_path):
    monkeypatch.setattr(render_module, "HAMNOSYS_FONT", tmp_path / "missing" / "HamNoSysUnicode.ttf")
    render_module._hamnosys_font.cache_clear()
    render_module._hamnosys_font_file.cache_clear()
    yield
    render_module._hamnosys_font.cache_clear()
    render_module._hamnosys_font_file.cache_clear()


def test_a_hamnosys_caption_shows_its_symbols_not_boxes():
    first, second = PILL["hamnosys"][:2]  # hampinch12, hamextfingerul
    box = _caption_ink(UNASSIGNED)
    assert _caption_ink(first).any()
    assert not np.array_equal(_caption_ink(first), box)
    assert not np.array_equal(_caption_ink(second), box)
    assert not np.array_equal(_caption_ink(first), _caption_ink(second))
    assert not np.array_equal(_caption_ink("kinder " + PILL["hamnosys"]),
                              _caption_ink("kinder " + UNASSIGNED * len(PILL["hamnosys"])))


def test_the_hamnosys_font_has_a_glyph_for_every_symbol():
    font = render_module._hamnosys_font(32)
    assert font is not None, f"{render_module.HAMNOSYS_FONT} does not load"

    def glyph(char):
        mask = font.getmask(char)
        return mask.size, bytes(mask)

    notdef = glyph(UNASSIGNED)
    symbols = [char for char in hamnosys_symbols().values() if render_module._runs(char) == [(char, True)]]
    assert len(symbols) > 190  # the Private Use Area symbols (U+E000-U+E0F1) of HamNoSys 4
    assert [f"U+{ord(char):04X}" for char in symbols if glyph(char) == notdef] == []
    assert len({glyph(char) for char in symbols}) > 0.9 * len(symbols)  # distinct drawings, not one shape


def test_a_caption_mixing_text_and_hamnosys_is_split_into_runs():
    ham = ALTERNATIVE["hamnosys"]
    assert "{" in ham and "|" in ham
    assert render_module._runs(f"[{ham}], essen {ham} ") == [
        ("[", False), (ham, True), ("], essen ", False), (ham, True), (" ", False)]
    assert render_module._runs("essen 1/3") == [("essen 1/3", False)]
    latin = _caption_ink("essen")
    assert np.array_equal(latin, _caption_ink("essen"))  # text without HamNoSys is drawn as before
    mixed = _caption_ink("essen " + PILL["hamnosys"])
    assert mixed.sum() > latin.sum()


def test_render_draws_a_hamnosys_caption_without_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*HamNoSys font")
        result = render_file(KINDER, tmp_path / "kinder.gif", text="kinder " + PILL["hamnosys"], panel_height=48)
    assert result.frames == _gif_frames(tmp_path / "kinder.gif") == 45


def test_without_the_font_hamnosys_is_written_as_symbol_names(without_hamnosys_font):
    assert render_module._readable(PILL["hamnosys"]) == PILL["hamnosys_text"]
    assert render_module._readable(ALTERNATIVE["hamnosys"]) == ALTERNATIVE["hamnosys_text"]
    assert render_module._readable("essen \ue00f\ue000") == "essen U+E00F,hamfist"  # U+E00F: no symbol
    with pytest.warns(RuntimeWarning, match="HamNoSys font"):
        drawn = _caption_ink("essen " + PILL["hamnosys"])
    assert np.array_equal(drawn, _caption_ink("essen " + PILL["hamnosys_text"]))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*HamNoSys font")  # warned once, not for every caption
        _caption_ink(ALTERNATIVE["hamnosys"])


def _rgb_frame(path, index) -> np.ndarray:
    with Image.open(path) as image:
        image.seek(index)
        return np.asarray(image.convert("RGB")).astype(int)


def _near(pixels: np.ndarray, colour, tolerance: int = 40) -> np.ndarray:
    return (np.abs(pixels - np.array(colour)) <= tolerance).all(-1)


def test_a_correction_draws_the_filled_values_in_green_and_only_there(tmp_path):
    from t2p.evaluation.render import HIGHLIGHT_COLOR, render_correction
    damaged = read_pose(ESSEN)
    offset = 0
    for component in damaged.header.components:
        if component.name == "LEFT_HAND_LANDMARKS":
            break
        offset += len(component.points)
    assert (damaged.body.confidence[20:31, :, offset:offset + 21] > 0).all()
    damaged.body.confidence[20:31, :, offset:offset + 21] = 0  # the tracker lost this hand for 11 frames
    write_pose(damaged, tmp_path / "damaged.pose")
    # the recording itself stands for the corrected file: what it has and the damaged one lacks was "filled"
    render_correction(ESSEN, tmp_path / "damaged.pose", tmp_path / "repaired.gif", panel_height=160)
    render_correction(ESSEN, ESSEN, tmp_path / "nothing-filled.gif", panel_height=160)

    def highlighted(path, frame):  # compared with the same render where nothing was filled
        return int(_near(_rgb_frame(path, frame), HIGHLIGHT_COLOR).sum())
    extra = {frame: highlighted(tmp_path / "repaired.gif", frame) - highlighted(tmp_path / "nothing-filled.gif", frame)
             for frame in (10, 25, 45)}
    assert extra[25] > 50, extra  # the filled hand, in the highlight colour
    assert abs(extra[10]) <= 5 and abs(extra[45]) <= 5, extra  # nothing filled there: nothing highlighted


def test_a_composed_sentence_names_the_sign_or_transition_of_every_frame(tmp_path):
    from t2p.evaluation.render import render_composition
    segments = [{"text": "A", "begin": 0, "end": 30, "kind": "sign"},
                {"text": "A→B", "begin": 30, "end": 40, "kind": "transition"},
                {"text": "B", "begin": 40, "end": 73, "kind": "sign"}]
    (tmp_path / "sentence.segments.json").write_text(json.dumps(segments))
    render_composition(ESSEN, tmp_path / "sentence.segments.json", tmp_path / "sentence.gif", panel_height=160)
    sign_blue = (20, 60, 200)  # a sign's name is written in blue, a transition's in grey
    for frame, in_transition in ((10, False), (35, True), (60, False)):
        caption = _rgb_frame(tmp_path / "sentence.gif", frame)[-60:]  # the caption lines under the panel
        assert bool(_near(caption, sign_blue, 50).sum() > 10) is not in_transition, frame
