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
TOKEN_ENV = "T2P_API_TOKEN"  # t2p.serve_http.TOKEN_ENV (not imported: --help stays fast)


# the limits of t2p.serve.ServeConfig; unset flags keep its defaults (GET /v1/model lists them)
LIMIT_FLAGS = {
    "max_text_length": (int, "characters of text (and of each of texts) per request"),
    "max_spoken_text_length": (int, "characters of spoken_text per request"),
    "max_signs": (int, "signs of a sentence, before and after fingerspelling"),
    "max_frames": (int, "frames per sign, asked for or predicted"),
    "max_steps": (int, "refinement steps per request"),
    "max_step_frames": (int, "steps x frames of one request"),
    "max_batch_size": (int, "requests per generate call"),
    "batch_wait_timeout_s": (float, "seconds a batch waits to fill"),
    "max_loaded_models": (int, "models a replica keeps loaded besides the one requests get unnamed (least recently used out)"),
    "max_guidance": (float, "largest |guidance|"),
    "max_first_pose_bytes": (int, "size of a first_pose .pose file"),
    "max_body_bytes": (int, "size of a request body (larger: 413)"),
    "request_timeout_s": (float, "seconds a request may take (longer: 504)"),
    "cors_origins": (str, "comma-separated origins browsers may call from, e.g. https://app.example"),
    "auth_token_file": (Path, f"file holding the bearer token (else ${TOKEN_ENV}); required unless --host is loopback"),
    "device": (str, "auto, cpu or cuda[:N]"),
    "threads": (int, "CPU threads of the replica (0: every core)"),
    "access_log": (bool, "Serve's line per request in the proxy's and the replica's logs"),
}


def register(subparsers) -> None:
    parser = add_verb(subparsers, "serve",
                      "Serve a model over HTTP with Ray Serve: POST /v1/generate, GET /healthz, GET /v1/model.",
                      "t2p serve --model runs/default/best --lexicon my_lexicon --port 8000 &\n"
                      "  curl -s localhost:8000/v1/generate -d '{\"text\": \"hallo\"}' -o hallo.pose\n"
                      "  curl -s localhost:8000/v1/generate -d '{\"spoken_text\": \"Die Kinder essen Pizza\", "
                      "\"language\": \"sgg\", \"format\": \"json\"}'\n"
                      f"  {TOKEN_ENV}=$(openssl rand -hex 32) t2p serve --host 0.0.0.0   # beyond loopback: a token")
    parser.add_argument("--model", default=argparse.SUPPRESS,
                        help="model folder (default: $T2P_MODEL, else runs/default/best in the repo)")
    parser.add_argument("--models", nargs="+", metavar="NAME=DIR", default=argparse.SUPPRESS,
                        help="several model folders by name, picked per request by \"model\" (instead of --model)")
    parser.add_argument("--default-model", metavar="NAME",
                        help="the one of --models that requests naming none get; the first when not given")
    parser.add_argument("--lexicon", type=Path,
                        help="a spoken-to-signed lexicon folder (index.csv): its recordings sign the glosses it has")
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on")
    parser.add_argument("--port", type=int, default=8000, help="port the HTTP proxy listens on")
    for name, (kind, help) in LIMIT_FLAGS.items():
        typed = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        parser.add_argument(f"--{name.replace('_', '-')}", **typed, default=argparse.SUPPRESS,
                            help=f"{help} (default: t2p.serve.ServeConfig's)")
    parser.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from t2p.serve import ServeConfig, build_app, resolve_lexicon_dir, resolve_model_dir, resolve_models
    from t2p.serve_http import load_token, require_token_if_exposed

    given = vars(args)
    if "models" in given:
        if "model" in given:
            raise CommandError("give --model (one folder) or --models (several, by name), not both")
        pairs = [entry.split("=", 1) for entry in given["models"]]
        if not all(len(pair) == 2 for pair in pairs):
            raise CommandError(f"--models takes NAME=DIR, got {' '.join(given['models'])}")
        models, default_model = resolve_models(None, {name: str(resolve_model_dir(folder, base=Path.cwd()))
                                                      for name, folder in pairs}, args.default_model)
    else:
        model_dir = resolve_model_dir(given["model"], base=Path.cwd()) if "model" in given else resolve_model_dir(None)
        models, default_model = {"default": str(model_dir)}, args.default_model
    lexicon = resolve_lexicon_dir(args.lexicon, base=Path.cwd()) if args.lexicon else None
    if "auth_token_file" in given:
        given["auth_token_file"] = str(given["auth_token_file"].resolve())
    limits = ServeConfig(**{name: given[name] for name in LIMIT_FLAGS if name in given})
    require_token_if_exposed(args.host, load_token(limits.auth_token_file))  # before Ray starts
    _check_port_free(args.host, args.port)

    import ray
    from ray import serve

    own_cluster = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(include_dashboard=False) if own_cluster else ray.init()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(signum, lambda *_: stop.set())
    # a blocked signal is inherited: started by a process that blocks them (Ray blocks SIGINT in every
    # process it starts), Ctrl-C would never arrive and the server would run on
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        serve.start(http_options={"host": args.host, "port": args.port},
                    logging_config={"enable_access_log": limits.access_log})  # the proxy's
        app_args = {"models": models, **({"default_model": default_model} if default_model else {}),
                    **asdict(limits), **({"lexicon": str(lexicon)} if lexicon else {})}
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
        if not stop.is_set():
            names = ", ".join(f"{name}={folder}" for name, folder in models.items())
            print(f"t2p serve: {names} on http://{args.host}:{args.port} "
                  "(POST /v1/generate, GET /healthz, GET /v1/models); Ctrl-C to stop", flush=True)
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
