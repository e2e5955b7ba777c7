"""The ingress requests come in through: Ray Serve's HAProxy (the default) or its Python proxy.

With HAProxy (Ray >= 2.56, the binary comes with `ray[serve]`), HAProxy forwards each request
straight to the replica's own HTTP server ("direct ingress"), without Serve's Python proxy and its
per-request cost (docs/serving.md has the measurements). Every feature of t2p's API works through
either. Ray reads the choice, and HAProxy's settings, from environment variables of the processes it
starts: `environment` gives them, to be set before Ray starts (`t2p serve` does; a cluster started
with `ray start` needs them in its environment). HAProxy gets t2p's limits through
`haproxy_wrapper.py`, which Ray runs in place of the binary.

The Python proxy has no bound on a request's headers or on how long they take to arrive: behind it,
put a reverse proxy that bounds them (docs/serving.md) before exposing it.
"""
from __future__ import annotations

import os
import socket
import stat
import sys
import tempfile
from pathlib import Path

from t2p.serving.config import ServeConfig

INGRESSES = ("haproxy", "python")
DEFAULT_INGRESS = "haproxy"
DRAINING_PERIOD_S = 2
MAX_HEADERS = 64  # HAProxy's own default is 101; a request here has a handful


def environment(ingress: str, limits: ServeConfig, host: str, port: int) -> dict[str, str]:
    """The environment variables that choose `ingress` and configure it, for Ray's processes."""
    if ingress not in INGRESSES:
        raise ValueError(f"ingress must be one of {', '.join(INGRESSES)}, got {ingress!r}")
    common = {
        # Serve waits this long for its proxy (HAProxy's manager, or the Python proxy) to start: on a
        # busy 2-core machine 5 s was not enough and Serve killed it
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    }
    if ingress == "python":
        return {**common, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {
        **common,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # Ray's throughput-optimised mode: the replica runs requests on its own event loop, no extra
        # thread hop; at concurrency 32 and 3 steps x 40 frames 114 req/s against HAProxy alone's 75
        # (10 steps: 38 against 35; bench/serve_ingress.py, docs/serving.md)
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(_wrapper_executable()),
        # a response may take request_timeout_s (t2p answers 504 then); HAProxy waits a little longer
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(int(limits.request_timeout_s) + 30),
        # a stopping replica stays reachable this long so that HAProxy drops it first; Ray's 30 s
        # suit a load balancer on another machine, HAProxy here is told within 0.1 s (and Ctrl-C
        # took 33 s)
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAINING_PERIOD_S),
        "T2P_HAPROXY_REQUEST_TIMEOUT_S": f"{limits.body_timeout_s:g}",
        "T2P_HAPROXY_MAX_HEADERS": str(MAX_HEADERS),
        "T2P_HAPROXY_BIND": host,
        "T2P_HAPROXY_HTTP_PORT": str(port),
        # HAProxy's stats page and metrics default to ports 8404 and 9101: a second server on the
        # machine (or one left over) would hold them and HAProxy would not start
        "RAY_SERVE_HAPROXY_STATS_PORT": os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT") or str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT") or str(_free_port()),
    }


def _free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wrapper_executable() -> Path:
    """An executable Ray can run as HAProxy's binary: this Python running `haproxy_wrapper.py`."""
    wrapper = Path(__file__).with_name("haproxy_wrapper.py")
    folder = Path(tempfile.gettempdir()) / f"t2p-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    script = folder / "haproxy"
    content = f'#!/bin/sh\nexec "{sys.executable}" "{wrapper}" "$@"\n'
    if not script.is_file() or script.read_text() != content:
        partial = script.with_suffix(".partial")
        partial.write_text(content)
        partial.chmod(stat.S_IRWXU)
        partial.replace(script)
    return script
