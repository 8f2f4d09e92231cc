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
