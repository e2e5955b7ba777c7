"""The two things t2p asks of Ray Serve that Ray 2.60 has no public API for, each behind one
function: revisit them when upgrading Ray (`pyproject.toml` allows ray >= 2.43)."""
from __future__ import annotations

from typing import Any, Callable


def proxy_host() -> str | None:
    """The address Serve's HTTP proxy listens on, as the running Serve controller has it; None when
    it cannot be told (then a token is required, as for any address beyond loopback). Ray 2.60:
    the Serve client's `http_config` (`ray.serve.context._get_global_client`)."""
    from ray.serve.exceptions import RayServeException
    try:
        from ray.serve.context import _get_global_client
        return _get_global_client().http_config.host
    except (ImportError, AttributeError, RayServeException):  # another Ray's internals, or no Serve running
        return None


def multiplexed_models(loader: Callable[..., Any]) -> list[str]:
    """The model ids Serve's multiplexing holds loaded for `loader` (the function wrapped by
    `@serve.multiplexed`). Ray 2.60: the wrapper Serve keeps on the function,
    `__serve_multiplex_wrapper`, and its `models` dict; [] where it is not there."""
    wrapper = getattr(loader, "__serve_multiplex_wrapper", None)
    return list(getattr(wrapper, "models", {}) or {})
