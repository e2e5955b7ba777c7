"""`t2p serve`: the Ray Serve endpoint of `t2p.serving.app` on this machine, until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

from t2p.cli import CommandError, add_verb, finite_number
from t2p.serving import ServeConfig
from t2p.serving.config import TOKEN_ENV
from t2p.serving.ingress import DEFAULT_INGRESS, INGRESSES

APP_NAME = "t2p"
# every limit of ServeConfig is a flag of its own; unset flags keep its defaults (GET /v1/model lists them)
LIMITS = fields(ServeConfig)


def register(subparsers) -> None:
    parser = add_verb(subparsers, "serve",
                      "Serve a model over HTTP with Ray Serve: POST /v1/generate, GET /healthz, GET /v1/model.",
                      "t2p serve --model runs/default/best --lexicon my_lexicon --port 8000 &\n"
                      "  curl -s localhost:8000/v1/generate -d '{\"text\": \"hallo\"}' -o hallo.pose\n"
                      "  curl -s localhost:8000/v1/generate -d '{\"spoken_text\": \"Die Kinder essen Pizza\", "
                      "\"language\": \"sgg\", \"format\": \"json\"}'\n"
                      f"  {TOKEN_ENV}=$(openssl rand -hex 32) t2p serve --host 0.0.0.0   # beyond loopback: a token")
    parser.add_argument("--model", default=argparse.SUPPRESS,
                        help="model folder (default: $T2P_MODEL, else runs/default/best)")
    parser.add_argument("--models", nargs="+", metavar="NAME=DIR", default=argparse.SUPPRESS,
                        help="several model folders by name, picked per request by \"model\" (instead of --model)")
    parser.add_argument("--default-model", metavar="NAME",
                        help="the one of --models that requests naming none get; the first when not given")
    parser.add_argument("--lexicon", type=Path,
                        help="a spoken-to-signed lexicon folder (index.csv): its recordings sign the glosses it has")
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP ingress listens on")
    parser.add_argument("--port", type=int, default=8000, help="port the HTTP ingress listens on")
    parser.add_argument("--ingress", choices=INGRESSES, default=DEFAULT_INGRESS,
                        help="haproxy: Ray Serve's HAProxy forwards each request straight to a replica; python: "
                             "Serve's Python proxy (docs/serving.md compares them)")
    for limit in LIMITS:
        kind = {"int": int, "float": finite_number, "str": str, "bool": bool}[limit.type]
        typed = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        parser.add_argument(f"--{limit.name.replace('_', '-')}", **typed, default=argparse.SUPPRESS,
                            help=f"{limit.metadata['help']} (default: {limit.default!r})")
    parser.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from t2p.model import T2PModel
    from t2p.serving import ingress
    from t2p.serving.config import resolve_lexicon_dir, resolve_models
    from t2p.serving.http import load_token, require_token_if_exposed

    given = vars(args)
    if "models" in given:
        if "model" in given:
            raise CommandError("give --model (one folder) or --models (several, by name), not both")
        pairs = [entry.split("=", 1) for entry in given["models"]]
        if not all(len(pair) == 2 for pair in pairs):
            raise CommandError(f"--models takes NAME=DIR, got {' '.join(given['models'])}")
        models, default_model = resolve_models(None, dict(pairs), args.default_model)
    else:
        models, default_model = resolve_models(given.get("model"), None, args.default_model)
    lexicon = resolve_lexicon_dir(args.lexicon) if args.lexicon else None
    if "auth_token_file" in given:
        given["auth_token_file"] = str(Path(given["auth_token_file"]).resolve())
    limits = ServeConfig(**{limit.name: given[limit.name] for limit in LIMITS if limit.name in given})
    require_token_if_exposed(args.host, load_token(limits.auth_token_file))  # before Ray starts
    for folder in models.values():  # a damaged model folder fails here, in a second, not in a replica
        T2PModel.load(folder)
    _check_port_free(args.host, args.port)
    own_cluster = not os.environ.get("RAY_ADDRESS")

    import ray
    from ray import serve

    from t2p.cluster import quiet_ray_logs, verbose
    from t2p.serving.app import build_app
    quiet_ray_logs()  # Ray's INFO lines stay in its session logs (logs/serve: requests, replicas) unless --verbose
    if not ray.is_initialized():
        if own_cluster:
            ray.init(address="local", include_dashboard=False, log_to_driver=verbose())
        else:
            ray.init(log_to_driver=verbose())
        quiet_ray_logs()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(signum, lambda *_: stop.set())
    # a blocked signal is inherited: started by a process that blocks them (Ray blocks SIGINT in every
    # process it starts), Ctrl-C would never arrive and the server would run on
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        # the ingress and its settings reach Serve's controller (and the proxy and replicas it starts)
        # as environment variables; a controller already running in the cluster keeps its own
        environment = ingress.environment(args.ingress, limits, args.host, args.port)
        serve.start(http_options={"host": args.host, "port": args.port},
                    logging_config={"enable_access_log": limits.access_log},  # the proxy's
                    controller_options={"runtime_env": {"env_vars": environment}})
        app_args = {"models": models, **({"default_model": default_model} if default_model else {}),
                    **asdict(limits), **({"lexicon": str(lexicon)} if lexicon else {})}
        serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        if not stop.is_set() and _answers(url, stop):
            names = ", ".join(f"{name}={folder}" for name, folder in models.items())
            print(f"t2p serve: {names} ready on {url} ({'HAProxy' if args.ingress == 'haproxy' else 'Python proxy'} "
                  "ingress; POST /v1/generate, GET /healthz, GET /v1/models; the page: "
                  f"{url}/); Ctrl-C to stop", flush=True)
            if not verbose():
                print(f"t2p serve: Ray's logs (requests, replicas): {_serve_logs()}", flush=True)
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


READY_TIMEOUT_S = 120


def _serve_logs() -> str:
    """The folder of this Ray session's Serve logs."""
    import ray
    try:
        return str(Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve")
    except AttributeError:  # connected to a cluster started elsewhere: its head node has them
        return "/tmp/ray/session_latest/logs/serve (on the head node)"


def _answers(url: str, stop: threading.Event) -> bool:
    """Whether a request through the ingress reaches a replica (its /healthz names one) before
    READY_TIMEOUT_S: `serve.run` returns once HAProxy has a backend, which may still be Serve's
    fallback proxy, and requests sent then failed."""
    import httpx
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/healthz", timeout=5, trust_env=False)
            if answer.status_code == 200 and answer.json().get("replica"):
                return True
        except (httpx.HTTPError, ValueError):
            pass
        stop.wait(0.25)
    if not stop.is_set():
        raise CommandError(f"{url}/healthz did not answer within {READY_TIMEOUT_S} s: see Ray's logs "
                           "(/tmp/ray/session_latest/logs/serve)")
    return False


def _check_port_free(host: str, port: int) -> None:
    """Ray's proxy would otherwise keep retrying a taken port while clients reach whatever holds it."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        raise CommandError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
