"""`t2p serve`: the Ray Serve endpoint of `t2p.serve` on this machine, until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from dataclasses import asdict
from pathlib import Path

from t2p.cli import CommandError, add_verb

APP_NAME = "t2p"


# the limits of t2p.serve.ServeConfig; unset flags keep its defaults (GET /v1/model lists them)
LIMIT_FLAGS = {
    "max_text_length": (int, "characters of text per request"),
    "max_frames": (int, "frames per output, asked for or predicted"),
    "max_steps": (int, "refinement steps per request"),
    "max_batch_size": (int, "requests per generate call"),
    "batch_wait_timeout_s": (float, "seconds a batch waits to fill"),
    "max_guidance": (float, "largest |guidance|"),
    "max_first_pose_bytes": (int, "size of a first_pose .pose file"),
    "device": (str, "auto, cpu or cuda[:N]"),
    "threads": (int, "CPU threads of the replica (0: every core)"),
}


def register(subparsers) -> None:
    parser = add_verb(subparsers, "serve",
                      "Serve a model over HTTP with Ray Serve: POST /v1/generate, GET /healthz, GET /v1/model.",
                      "t2p serve --model runs/default/best --port 8000 &\n"
                      "  curl -s localhost:8000/v1/generate -d '{\"text\": \"hallo\"}' -o hallo.pose")
    parser.add_argument("--model", default=argparse.SUPPRESS,
                        help="model folder (default: $T2P_MODEL, else runs/default/best in the repo)")
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on")
    parser.add_argument("--port", type=int, default=8000, help="port the HTTP proxy listens on")
    for name, (kind, help) in LIMIT_FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=argparse.SUPPRESS,
                            help=f"{help} (default: t2p.serve.ServeConfig's)")
    parser.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from t2p.serve import ServeConfig, build_app, resolve_model_dir

    given = vars(args)
    model_dir = resolve_model_dir(given["model"], base=Path.cwd()) if "model" in given else resolve_model_dir(None)
    limits = ServeConfig(**{name: given[name] for name in LIMIT_FLAGS if name in given})
    _check_port_free(args.host, args.port)

    import ray
    from ray import serve

    own_cluster = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(include_dashboard=False) if own_cluster else ray.init()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app({"model": str(model_dir), **asdict(limits)}), name=APP_NAME, route_prefix="/")
        if not stop.is_set():
            print(f"t2p serve: {model_dir} on http://{args.host}:{args.port} "
                  "(POST /v1/generate, GET /healthz, GET /v1/model); Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if own_cluster:
            serve.shutdown()
            ray.shutdown()
        else:  # a shared cluster: take down only this application
            serve.delete(APP_NAME)
    print("t2p serve: stopped", flush=True)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Ray's proxy would otherwise keep retrying a taken port while clients reach whatever holds it."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        raise CommandError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
