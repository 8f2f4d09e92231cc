"""Running Seed Serve: ``up`` (local Ray + replicas + gateway) and ``gateway``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from serving.config import ServingConfig
from serving.engines.controller import create_or_get_controller
from serving.engines.registry import RayControllerSource, ReplicaRegistry
from serving.engines.types import ReplicaInfo, ReplicaState
from serving.errors import ConfigError
from serving.paths import COMPLETE_MARKER, demo_model_dir, run_state_file
from serving.ray_cluster import init_ray

logger = logging.getLogger("seed_serve")


# --------------------------------------------------------------------------- checks


def check_port_free(host: str, port: int) -> None:
    """Raise ConfigError naming gateway.port/host if we could not listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "gateway.port", f"{host}:{port} is already in use by another process"
                ) from None
            raise ConfigError(
                "gateway.host", f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None


def check_models(config: ServingConfig) -> None:
    """Local model folders must exist (and a demo model must be completely built)."""
    for index, group in enumerate(config.replica_groups):
        engine = group.engine
        field = f"replica_groups[{index}].engine"
        path = engine.local_model_path()
        if path is not None:
            is_demo = path.resolve() == demo_model_dir().resolve()
            hint = " (build it with `seed-serve demo-model`)" if is_demo else ""
            if not path.is_dir():
                raise ConfigError(f"{field}.model", f"{path} does not exist{hint}")
            if is_demo and not (path / COMPLETE_MARKER).exists():
                raise ConfigError(
                    f"{field}.model", f"{path} is an incomplete demo-model build{hint}"
                )
            if not (path / "config.json").exists():
                raise ConfigError(
                    f"{field}.model", f"{path} has no config.json: not a model folder"
                )
        if engine.chat_template and not Path(engine.chat_template).expanduser().is_file():
            raise ConfigError(f"{field}.chat_template", f"{engine.chat_template} does not exist")


# --------------------------------------------------------------------------- logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("seed_serve").setLevel(level.upper())


# --------------------------------------------------------------------------- ray


def _uvicorn_server(config: ServingConfig, app: Any) -> Any:
    import uvicorn

    class GatewayServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT once it has shut down, so the process
        dies of the signal; we still have replicas to stop after that, and a
        requested stop is a clean exit (0)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return GatewayServer(
        uvicorn.Config(
            app,
            host=config.gateway.host,
            port=config.gateway.port,
            loop="uvloop",
            http="httptools",
            log_level=config.gateway.log_level,
            access_log=False,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=30,
        )
    )


def _gateway_url(config: ServingConfig) -> str:
    host = config.gateway.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.gateway.port}/v1"


def ready_snippet(config: ServingConfig, replicas: list[ReplicaInfo]) -> str:
    url = _gateway_url(config)
    model = config.models()[0]
    ready = sum(r.ready for r in replicas)
    body = json.dumps({"model": model, "prompt": "def fibonacci(n):", "max_tokens": 64})
    return (
        f"\nSeed Serve is ready at {url}  ({ready}/{len(replicas)} replicas of {', '.join(config.models())})\n\n"
        f"  curl {url}/completions -H 'Content-Type: application/json' \\\n"
        f"       -d '{body}'\n\n"
        f'  python -c \'from openai import OpenAI; c = OpenAI(base_url="{url}", api_key="unused"); '
        f'print(c.completions.create(model="{model}", prompt="def fibonacci(n):", max_tokens=64).choices[0].text)\'\n'
    )


async def _announce_when_ready(config: ServingConfig, controller: Any, server: Any) -> None:
    timeout = max(g.startup_timeout_s for g in config.replica_groups) + 30
    data = await controller.wait_ready.remote(timeout)
    replicas = [ReplicaInfo.from_dict(d) for d in data]
    for replica in replicas:
        if replica.state is not ReplicaState.READY:
            logger.error(
                "replica %s is %s: %s", replica.replica_id, replica.state.value, replica.message
            )
    if any(r.ready for r in replicas):
        print(ready_snippet(config, replicas), flush=True)
    else:
        logger.error("no replica could start; stopping")
        server.exit_code = 1
        server.should_exit = True


# --------------------------------------------------------------------------- commands


def _remove_own_state_file(path: Path) -> None:
    """Remove the run state file if this process wrote it (a newer `up` may own it)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def run_up(config: ServingConfig) -> int:
    """Local Ray (unless ``ray.address`` is set), the replicas, and the gateway."""
    from serving.api.app import build_app

    check_models(config)
    check_port_free(config.gateway.host, config.gateway.port)
    address_info = init_ray(
        namespace=config.ray.namespace,
        address=config.ray.address,
        num_cpus=config.ray.num_cpus,
        num_gpus=config.ray.num_gpus,
    )
    import ray

    exit_code = 0
    state_file = run_state_file()
    try:
        controller = create_or_get_controller(
            config, local_ray=config.ray.address is None, detached=False
        )
        ray.get(controller.start.remote())
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "ray_address": address_info.get("gcs_address") or address_info.get("address"),
                    "namespace": config.ray.namespace,
                    "controller_name": config.ray.controller_name,
                    "gateway_url": _gateway_url(config),
                }
            )
        )
        registry = ReplicaRegistry(
            RayControllerSource(controller),
            refresh_interval_s=config.gateway.replica_refresh_interval_s,
        )
        server = _uvicorn_server(config, build_app(config, registry))
        server.exit_code = 0

        async def serve() -> None:
            announcer = asyncio.create_task(_announce_when_ready(config, controller, server))
            try:
                await server.serve()
            finally:
                announcer.cancel()
                logger.info("stopping replicas")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(controller.shutdown.remote(), 60)

        asyncio.run(serve())
        exit_code = int(server.exit_code)
    finally:
        _remove_own_state_file(state_file)
        ray.shutdown()
    return exit_code


def run_gateway(config: ServingConfig) -> int:
    """Only the gateway, joining an existing Ray cluster (and sharing its controller)."""
    from serving.api.app import build_app

    check_port_free(config.gateway.host, config.gateway.port)
    init_ray(namespace=config.ray.namespace, address=config.ray.address or "auto")
    import ray

    try:
        controller = create_or_get_controller(config, local_ray=False, detached=True)
        ray.get(controller.start.remote())
        theirs = ray.get(controller.config_json.remote())
        if theirs.get("replica_groups") != config.model_dump(mode="json")["replica_groups"]:
            logger.warning(
                "the running controller was started with other replica groups; serving its models: %s",
                ", ".join(
                    sorted({g["engine"]["served_model_name"] for g in theirs["replica_groups"]})
                ),
            )
        registry = ReplicaRegistry(
            RayControllerSource(controller),
            refresh_interval_s=config.gateway.replica_refresh_interval_s,
        )
        server = _uvicorn_server(config, build_app(config, registry))
        asyncio.run(server.serve())
    finally:
        ray.shutdown()
    return 0
