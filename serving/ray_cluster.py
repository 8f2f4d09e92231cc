"""Starting or joining Ray."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from serving.errors import StartupError

_AUTH_MODE = "RAY_AUTH_MODE"
logger = logging.getLogger("seed_serve.ray")


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def use_token_auth_if_available() -> None:
    """Ray clusters started by ``ray.init()`` use token auth by default, but a
    process *joining* one only sends its token when RAY_AUTH_MODE=token: set it
    when a token is at hand and the operator did not choose."""
    if _AUTH_MODE not in os.environ and _token_available():
        os.environ[_AUTH_MODE] = "token"
        if "ray" in sys.modules:  # already loaded: make it re-read its config
            with contextlib.suppress(Exception):
                from ray._raylet import Config  # type: ignore[attr-defined]

                Config.initialize("")


def init_ray(
    *,
    namespace: str,
    address: str | None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    log_to_driver: bool = True,
    connect_timeout_s: float = 0.0,
) -> dict[str, Any]:
    """Start a local Ray (``address`` None) or join one; return its address info.

    Joining retries for ``connect_timeout_s`` (a Ray head starting alongside the
    gateway, as in Kubernetes, is not an error yet), with a warning per attempt."""
    if address is not None:
        # Before Ray's first import: its config reads RAY_AUTH_MODE when loaded.
        use_token_auth_if_available()
    import ray

    kwargs: dict[str, Any] = {
        "namespace": namespace,
        "log_to_driver": log_to_driver,
        "configure_logging": False,
    }
    if address is None:
        kwargs.update(include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus)
    else:
        kwargs["address"] = address
    deadline = time.monotonic() + connect_timeout_s
    delay = 1.0
    while True:
        try:
            context = ray.init(**kwargs)
            break
        except Exception as exc:
            where = address or "a local Ray"
            if address is None or time.monotonic() + delay > deadline:
                raise StartupError(f"could not start or join Ray ({where}): {exc}") from exc
            logger.warning(
                "Ray at %s is not reachable yet (%s); retrying in %gs", where, exc, delay
            )
            with contextlib.suppress(Exception):
                ray.shutdown()
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
    # Ray Client (ray://) contexts carry no address_info: the address is all there is.
    info = getattr(context, "address_info", None)
    return dict(info) if info else {"address": address}


def ray_answers(timeout_s: float = 1.0) -> bool:
    """Whether Ray's GCS answers within ``timeout_s`` (a blocking call).

    A stop signal sent to the whole process group or cgroup (what systemd's
    default ``KillMode=control-group`` does) reaches Ray's own processes too:
    from that moment its GCS answers nothing (measured: every call waits out
    its timeout), and a driver that waits for it is killed 60 s later with
    exit code 1. A healthy GCS answers this in about a millisecond."""
    try:
        from ray._private import worker  # the driver's GCS client (no public probe)

        client = worker.global_worker.gcs_client  # type: ignore[attr-defined]
        client.internal_kv_get(b"seed-serve:probe", b"seed-serve", timeout=timeout_s)
    except Exception:
        return False
    return True


def shutdown_ray() -> bool:
    """Leave Ray: disconnect, and stop the local Ray this process started.

    False when Ray does not answer any more (see :func:`ray_answers`): then
    the local Ray's processes are killed here (they are shutting down anyway),
    and this process must end at once (``os._exit``): Ray's driver cannot be
    torn down without its GCS (it waits 60 s for it, then dies with 1)."""
    import ray

    if ray_answers():
        ray.shutdown()
        return True
    logger.info("Ray does not answer (stopped with this process); killing what is left of it")
    from ray._private import worker

    node = worker._global_node
    if node is not None and node.head:
        with contextlib.suppress(Exception):
            node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    return False
