"""A free TCP port for the tests that start servers (Ray's GCS and dashboard, Serve, torch.distributed)."""
import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; a race with another process is unlikely)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
