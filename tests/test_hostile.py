"""Hostile and careless input: every file reader, CLI verb and route answers a stranger's mistake
with one clear line or a 4xx and its JSON message, never a traceback or a 5xx, and goes on. (The
served API under slow clients is in test_serve.py; these need no Ray.)"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import BIN, POSES, tiny_model_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from t2p.cli import main
from t2p.data.sources import index_items
from t2p.model import ModelFolderError, ScheduleConfig, T2PModel
from t2p.notation import SignText, Vocabulary
from t2p.pose import PoseFormatError, Skeleton, read_pose

ESSEN = POSES / "lexicon_sgg" / "essen.pose"  # pose-format 0.1: its frame count is read from its length
SIGNWRITING = sorted((POSES / "signwriting_samples").glob("*.pose"))[0]  # pose-format 0.2: the count is stored


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    skeleton = Skeleton.from_pose(read_pose(ESSEN))
    vocabulary = Vocabulary.build([SignText(word, "text", "sgg") for word in ("essen", "kinder")])
    model = T2PModel(tiny_model_config(vocabulary, skeleton, max_frames=32), ScheduleConfig(steps=1))
    return model.save(tmp_path_factory.mktemp("hostile") / "model")


def _one_line_error(capsys, code: int, expected_code: int = 2) -> str:
    error = capsys.readouterr().err.strip()
    assert code == expected_code, error
    assert "\n" not in error and "Traceback" not in error, error
    return error


# --- files: what the header says, and finite -----------------------------------------------------

@pytest.mark.parametrize("source", [ESSEN, SIGNWRITING], ids=["pose-format 0.1", "pose-format 0.2"])
def test_a_truncated_pose_file_is_refused_with_its_name_and_frames(tmp_path, source):
    whole = source.read_bytes()
    frames = read_pose(whole).body.data.shape[0]
    cut = tmp_path / "cut.pose"
    cut.write_bytes(whole[:len(whole) // 3])
    with pytest.raises(PoseFormatError, match=rf"cut.pose: truncated: the header announces {frames} frames"):
        read_pose(cut)


def test_a_pose_with_nan_is_refused_naming_the_frame_and_point(tmp_path):
    pose = read_pose(ESSEN)
    pose.body.data[7, 0, 12, 0] = np.nan
    pose.body.confidence[7, 0, 12] = 1.0
    damaged = tmp_path / "nan.pose"
    with open(damaged, "wb") as handle:
        pose.write(handle)
    component, point = [(c.name, p) for c in pose.header.components for p in c.points][12]
    with pytest.raises(PoseFormatError, match=rf"nan.pose: frame 7 has a non-finite value .* at {component}/{point};"):
        read_pose(damaged)


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.pose"
    path.write_bytes(ESSEN.read_bytes()[:60000])
    return path


def test_every_verb_that_reads_a_pose_refuses_a_truncated_one_in_one_line(model_dir, tmp_path, capsys):
    truncated = _truncated(tmp_path)
    verbs = [["correct", str(truncated), "--model", str(model_dir), "-o", str(tmp_path / "c.pose")],
             ["generate", "--model", str(model_dir), "--text", "essen", "--first-pose", str(truncated),
              "-o", str(tmp_path / "g.pose")],
             ["compare", str(truncated), str(ESSEN)],
             ["render", str(truncated), "-o", str(tmp_path / "r.gif")]]
    for command in verbs:
        error = _one_line_error(capsys, main(command))
        assert "truncated.pose: truncated: the header announces 73 frames" in error, command


def test_prepare_refuses_a_truncated_recording_or_skips_and_lists_it(ray_session, tmp_path, capsys):
    truncated = _truncated(tmp_path)
    shutil.copy(ESSEN, tmp_path / "essen.pose")
    index = tmp_path / "index.csv"
    index.write_text("path,text,notation,language\nessen.pose,essen,text,sgg\ntruncated.pose,kaputt,text,sgg\n")
    error = _one_line_error(capsys, main(["prepare", "--source", "index", "--index", str(index),
                                          "--out", str(tmp_path / "refused"), "--split", "1,0,0"]))
    assert "truncated.pose: truncated" in error and "--skip-bad" in error
    assert main(["prepare", "--source", "index", "--index", str(index), "--out", str(tmp_path / "data"),
                 "--split", "1,0,0", "--skip-bad"]) == 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == 1
    assert [Path(entry["path"]).name for entry in manifest["skipped"]] == [truncated.name]


# --- the command line: numbers, model folders, index lines ---------------------------------------

@pytest.mark.parametrize("flag, value", [("--guidance", "nan"), ("--guidance", "inf"), ("--speed", "nan"),
                                         ("--speed", "-inf"), ("--length", "inf"), ("--steps", "nan")])
def test_a_non_finite_number_on_the_command_line_is_one_line(model_dir, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(model_dir), "--text", "essen", flag, value, "-o", str(tmp_path / "x.pose")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and "Traceback" not in error


def test_evaluate_refuses_non_finite_guidance(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "m", "--data", "d", "--out", "o", "--guidance", "1,nan"])
    assert "expected finite numbers" in capsys.readouterr().err


def _damaged(model_dir: Path, tmp_path: Path, damage) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(model_dir, folder)
    damage(folder)
    return folder


MODEL_DAMAGES = {
    "empty weights": (lambda f: (f / "model.safetensors").write_bytes(b""), "model.safetensors: the weights cannot be read"),
    "truncated weights": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
                          "model.safetensors: the weights cannot be read"),
    "corrupt weights": (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 4096), "the weights cannot be read"),
    "config of another size": (
        lambda f: (f / "config.json").write_text((f / "config.json").read_text().replace('"d_model": 32', '"d_model": 64')),
        "model.safetensors does not fit"),
    "config that is not JSON": (lambda f: (f / "config.json").write_text("{not json"), "config.json: not valid JSON"),
    "config of another kind": (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object"),
}


@pytest.mark.parametrize("damage", MODEL_DAMAGES, ids=list(MODEL_DAMAGES))
def test_a_damaged_model_folder_is_one_line_naming_the_file(model_dir, tmp_path, capsys, damage):
    harm, message = MODEL_DAMAGES[damage]
    folder = _damaged(model_dir, tmp_path, harm)
    with pytest.raises(ModelFolderError, match=message):
        T2PModel.load(folder)
    error = _one_line_error(capsys, main(["generate", "--model", str(folder), "--text", "essen",
                                          "-o", str(tmp_path / "x.pose")]))
    assert message in error


def test_t2p_serve_refuses_a_damaged_model_within_seconds_before_ray_starts(model_dir, tmp_path):
    folder = _damaged(model_dir, tmp_path, MODEL_DAMAGES["truncated weights"][0])
    done = subprocess.run([str(BIN / "t2p"), "serve", "--model", str(folder), "--port", "8019"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the weights cannot be read" in lines[0], done.stderr
    assert "ray" not in done.stdout.lower()  # it failed before any Ray started


@pytest.mark.parametrize("line, message", [("[1, 2, 3]", "expected a JSON object"),
                                           ('{"path": "a.pose", "text": 5, "notation": "text", "language": "ase"}',
                                            "text must be text, got int"),
                                           ('{"path": "a.pose"}', "lacks column(s) text, notation, language")])
def test_a_bad_index_line_is_one_line_naming_it(tmp_path, line, message):
    index = tmp_path / "index.jsonl"
    index.write_text(line + "\n")
    with pytest.raises(ValueError, match=re_escape(message)):
        index_items(index)


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def test_a_csv_index_saved_with_a_byte_order_mark_is_read(tmp_path):
    index = tmp_path / "index.csv"
    index.write_bytes("\ufeffpath,text,notation,language\nessen.pose,essen,text,sgg\n".encode("utf-8"))
    (item,) = index_items(index)
    assert item.text == "essen" and item.path == tmp_path / "essen.pose"


def test_a_run_folder_that_cannot_be_written_is_one_line(real_corpus, tmp_path, capsys):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    error = _one_line_error(capsys, main(["train", "--data", str(real_corpus.folder), "--out", str(blocked / "run")]),
                            expected_code=1)
    assert error.startswith("t2p train: error: ") and str(blocked) in error and "Not a directory" in error


def test_a_run_started_from_a_model_that_cannot_start_it_is_refused_in_one_line(real_corpus, tmp_path, capsys):
    from conftest import tiny_model_config

    from t2p.model import T2PModel
    from t2p.notation import SignText, Vocabulary
    from t2p.pose import Skeleton, SkeletonComponent

    error = _one_line_error(capsys, main(["train", "--data", str(real_corpus.folder), "--out", str(tmp_path / "a"),
                                          "--init", str(tmp_path)]))
    assert "is not a t2p model folder" in error
    skeleton = Skeleton("toy", (SkeletonComponent("BODY", ("P",), (), ((255, 0, 0),), "XYC"),), 2)
    T2PModel(tiny_model_config(Vocabulary.build([SignText("a")]), skeleton, d_model=16)).save(tmp_path / "small")
    error = _one_line_error(capsys, main(["train", "--data", str(real_corpus.folder), "--out", str(tmp_path / "b"),
                                          "--init", str(tmp_path / "small")]))
    assert error.startswith("t2p train: error: --init ") and "d_model 16 (here 128)" in error
    assert not (tmp_path / "b" / "ray").exists()  # refused before Ray started


# --- HTTP: every mistake a 4xx with a JSON message -----------------------------------------------

def _new_api(model_dir, servers: list, **limits):
    from dataclasses import asdict

    from t2p.serving import ServeConfig
    from t2p.serving.app import T2PServer
    from t2p.serving.http import create_api
    config = ServeConfig(**{"max_frames": 32, "max_steps": 4, **limits})
    server = T2PServer(str(model_dir), asdict(config), http_host="127.0.0.1")
    servers.append(server)
    return create_api(config, lambda: server)


@pytest.fixture
def api(model_dir):
    """`api(**limits)`: the HTTP app over a server made in this process, closed after the test (its
    refinement thread would slow every later test)."""
    servers = []
    yield lambda **limits: _new_api(model_dir, servers, **limits)
    for server in servers:
        server.close()


def test_json_nested_too_deeply_is_a_400_with_a_message(api):
    from fastapi.testclient import TestClient
    with TestClient(api()) as client:
        for depth in (5_000, 100_000):
            response = client.post("/v1/generate", content=b"[" * depth + b"]" * depth)
            assert response.status_code == 400 and "nested too deeply" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_head_is_allowed_where_get_is(api):
    from fastapi.testclient import TestClient
    with TestClient(api()) as client:
        for route in ("/healthz", "/v1/model", "/v1/models", "/"):
            assert client.head(route).status_code == 200, route


def test_a_slow_upload_is_a_408_saying_so(api):
    app = api(body_timeout_s=0.3)

    async def slow_body():
        yield b'{"text": "es'
        await asyncio.sleep(1.0)
        yield b'sen"}'

    async def send():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t2p") as client:
            slow = await client.post("/v1/generate", content=slow_body(), headers={"content-type": "application/json"})
            fast = await client.post("/v1/generate", json={"text": "essen", "length": 3})
            return slow, fast

    slow, fast = asyncio.run(send())
    assert slow.status_code == 408 and "the upload was too slow" in slow.json()["detail"]
    assert fast.status_code == 200


REQUEST_FIELDS = {
    "text": st.one_of(st.text(max_size=40), st.integers(), st.none()),
    "texts": st.one_of(st.lists(st.text(max_size=10), max_size=4), st.text(max_size=5)),
    "spoken_text": st.text(max_size=30),
    "notation": st.sampled_from(["text", "hamnosys", "signwriting", "x", ""]),
    "language": st.one_of(st.sampled_from(["sgg", "ase", "DE", ""]), st.integers()),
    "steps": st.one_of(st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=3)),
    "length": st.one_of(st.integers(-5, 100), st.floats(allow_nan=True)),
    "guidance": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)),
    "speed": st.floats(allow_nan=True, allow_infinity=True),
    "first_pose": st.one_of(st.text(max_size=20), st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())),
    "format": st.sampled_from(["pose", "json", "gif"]),
    "stream": st.one_of(st.booleans(), st.integers()),
    "model": st.one_of(st.text(max_size=8), st.sampled_from(["default", "../etc"])),
    "keep_proportions": st.one_of(st.booleans(), st.text(max_size=3)),
    "fallback": st.text(max_size=12),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=st.fixed_dictionaries({}, optional=REQUEST_FIELDS))
def test_fuzzed_generate_requests_never_get_a_5xx(fuzz_client, body):
    # Python's json writes NaN and Infinity, which JSON has not: a careless client sends them
    response = fuzz_client.post("/v1/generate", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 8000), flips=st.lists(st.tuples(st.integers(0, 7999), st.integers(0, 255)), max_size=6))
@example(cut=0, flips=[(10, 0)])  # found by this test: a header of no components crashed pose-format's reader
def test_fuzzed_pose_bytes_are_read_or_refused_never_a_crash(fuzz_client, cut, flips):
    data = bytearray(ESSEN.read_bytes()[:cut or None])
    for position, value in flips:
        if position < len(data):
            data[position] = value
    try:
        read_pose(bytes(data))
    except PoseFormatError:
        pass  # refused with a message: the only failure allowed
    response = fuzz_client.post("/v1/correct", json={"pose": base64.b64encode(bytes(data)).decode()})
    assert response.status_code < 500, response.text


@pytest.fixture(scope="module")
def fuzz_client(model_dir):
    from fastapi.testclient import TestClient
    servers = []
    with TestClient(_new_api(model_dir, servers)) as client:
        yield client
    servers[0].close()


def test_every_number_the_api_reads_is_finite():
    from pydantic import ValidationError

    from t2p.serving.requests import GenerateRequest
    for field in ("guidance", "speed"):
        with pytest.raises(ValidationError):
            GenerateRequest(text="a", **{field: math.nan})
