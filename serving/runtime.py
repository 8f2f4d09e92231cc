"""Running Seed Serve: ``up`` (local Ray + replicas + gateway) and ``gateway``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from serving.api.state import GatewayState
from serving.cluster.controller import create_or_get_controller
from serving.cluster.preflight import group_problem
from serving.config import ServingConfig
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState
from serving.errors import ConfigError
from serving.paths import COMPLETE_MARKER, demo_model_dir, run_state_file
from serving.ray_cluster import init_ray, ray_answers, shutdown_ray
from serving.upstream.registry import RayControllerSource, ReplicaRegistry

logger = logging.getLogger("seed_serve")

# Engines get their own grace (15 s) to stop inside the controller's shutdown.
_REPLICAS_STOP_S = 60.0

T = TypeVar("T")


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


def check_groups(config: ServingConfig) -> None:
    """Before Ray starts: local model folders must exist (and a demo model must
    be completely built), and what this host's files say about each group
    (serving.cluster.preflight) must hold: a refusal in a second, not after
    Ray and an engine actor started (~10 s measured on the 2-core CI machine)."""
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
        problem = group_problem(group)
        if problem:
            raise ConfigError(f"replica_groups[{index}]", problem)


# --------------------------------------------------------------------------- ray


def _uvicorn_server(
    app: Any,
    host: str,
    port: int,
    log_level: str,
    *,
    signals: bool,
    state: GatewayState | None = None,
    drain_timeout_s: float = 0.0,
) -> Any:
    import uvicorn

    class GatewayServer(uvicorn.Server):
        """SIGTERM/SIGINT first drain (new requests get 503 + Retry-After while
        in-flight ones finish, up to drain_timeout_s), then stop; a second
        signal stops at once. uvicorn would re-raise the signal after shutting
        down, so the process died of it; we still have replicas to stop after
        that, and a requested stop is a clean exit (0). A second server in the
        same process (the metrics port) leaves the signals to the main one."""

        draining: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if state is not None and self.draining is None and drain_timeout_s > 0:
                loop = asyncio.get_event_loop()
                self.draining = loop.create_task(self._drain_then_exit())
                return
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

        async def _drain_then_exit(self) -> None:
            assert state is not None
            await state.drain(drain_timeout_s)
            self.should_exit = True

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            if signals:
                with super().capture_signals():
                    yield
            else:
                yield

    return GatewayServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            log_level=log_level,
            access_log=False,
            # The gateway alone decides whom to believe about X-Forwarded-For
            # (auth.trusted_proxies); uvicorn would otherwise rewrite the client
            # address for any local peer, so a local process could pick its
            # address past the allow-lists.
            proxy_headers=False,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=30,
        )
    )


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the gateway process's event loop: uvloop, as ``uvicorn.run`` would
    (``asyncio.run`` would give the slower stdlib loop; the capacity figures
    in benchmarks/README.md are measured on this one)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve_gateway(
    config: ServingConfig,
    registry: ReplicaRegistry,
    *,
    on_started: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """The gateway (and its metrics port, if configured) until a signal stops it."""
    from serving.api.app import build_app, build_metrics_app
    from serving.observability.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    state = GatewayState()
    gateway = config.gateway
    app = build_app(config, registry, metrics=metrics, state=state)
    server = _uvicorn_server(
        app,
        gateway.host,
        gateway.port,
        gateway.log_level,
        signals=True,
        state=state,
        drain_timeout_s=gateway.drain_timeout_s,
    )
    server.exit_code = 0
    helpers: list[asyncio.Task[Any]] = []
    metrics_server = None
    if gateway.metrics_port is not None:
        metrics_server = _uvicorn_server(
            build_metrics_app(app),
            gateway.metrics_host,
            gateway.metrics_port,
            "warning",
            signals=False,
        )
        metrics_task = asyncio.create_task(metrics_server.serve())
    if on_started is not None:
        helpers.append(asyncio.create_task(on_started(server)))
    # Everything built so far lives as long as the process: keep it out of the
    # collector's full passes, which otherwise stall every request for 100+ ms
    # now and then (measured: benchmarks/overhead capacity).
    gc.collect()
    gc.freeze()
    try:
        await server.serve()
    finally:
        for task in helpers:
            task.cancel()
        if metrics_server is not None:
            metrics_server.should_exit = True  # it finishes by itself
            helpers.append(metrics_task)
        await asyncio.gather(*helpers, return_exceptions=True)
    return int(server.exit_code)


def _gateway_url(config: ServingConfig) -> str:
    host = config.gateway.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.gateway.port}/v1"


def ready_snippet(config: ServingConfig, replicas: list[ReplicaInfo], api_key: str | None) -> str:
    url = _gateway_url(config)
    model = config.models()[0]
    ready = sum(r.ready for r in replicas)
    key = api_key or "unused"
    body = json.dumps({"model": model, "prompt": "def fibonacci(n):", "max_tokens": 64})
    where = (
        f"  API key (tenant demo): {key}   (also in {config.auth.demo_key_file})\n\n"
        if api_key
        else ""
    )
    return (
        f"\nSeed Serve is ready at {url}  ({ready}/{len(replicas)} replicas of "
        f"{', '.join(config.models())})\n\n{where}"
        f"  curl {url}/completions -H 'Content-Type: application/json' \\\n"
        f"       -H 'Authorization: Bearer {key}' \\\n"
        f"       -d '{body}'\n\n"
        f'  python -c \'from openai import OpenAI; c = OpenAI(base_url="{url}", api_key="{key}"); '
        f'print(c.completions.create(model="{model}", prompt="def fibonacci(n):", '
        "max_tokens=64).choices[0].text)'\n"
        + (
            f"\n  Console: {url.removesuffix('/v1')}/console  (sign in "
            + (
                "with your company account)\n"
                if config.auth.oidc is not None
                else "with an admin key: seed-serve keys create --tenant ops --name me "
                "--role admin)\n"
            )
            if config.console.enabled
            else ""
        )
    )


async def _announce_when_ready(
    config: ServingConfig, controller: Any, server: Any, api_key: str | None
) -> None:
    timeout = max(g.startup_timeout_s for g in config.replica_groups) + 30
    data = await controller.wait_ready.remote(timeout)
    replicas = [ReplicaInfo.from_dict(d) for d in data]
    for replica in replicas:
        if replica.state is not ReplicaState.READY:
            logger.error(
                "replica %s is %s: %s", replica.replica_id, replica.state.value, replica.message
            )
    if any(r.ready for r in replicas):
        print(ready_snippet(config, replicas, api_key), flush=True)
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


def _demo_key(config: ServingConfig) -> str | None:
    """The embedded default's key for tenant `demo` (created on first start)."""
    if not config.auth.enabled or not config.auth.demo_key_file:
        return None
    from serving.admission.keys import ensure_demo_key

    return ensure_demo_key(
        Path(config.auth.keys_file).expanduser(), Path(config.auth.demo_key_file).expanduser()
    )


def run_up(config: ServingConfig) -> int:
    """Local Ray (unless ``ray.address`` is set), the replicas, and the gateway."""
    check_groups(config)
    check_port_free(config.gateway.host, config.gateway.port)
    address_info = init_ray(
        namespace=config.ray.namespace,
        address=config.ray.address,
        num_cpus=config.ray.num_cpus,
        num_gpus=config.ray.num_gpus,
    )
    import ray

    exit_code = 1  # until the gateway ran and said otherwise
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
                    # Gateways joined later (seed-serve gateway) share the stack's keys.
                    "keys_file": config.auth.keys_file,
                }
            )
        )
        registry = ReplicaRegistry(
            RayControllerSource(controller),
            refresh_interval_s=config.gateway.replica_refresh_interval_s,
        )
        api_key = _demo_key(config)

        async def announce(server: Any) -> None:
            await _announce_when_ready(config, controller, server, api_key)

        async def serve() -> int:
            try:
                return await serve_gateway(config, registry, on_started=announce)
            finally:
                await _stop_replicas(controller)

        exit_code = run_event_loop(serve())
    finally:
        _remove_own_state_file(state_file)
        if not shutdown_ray():
            _exit_at_once(exit_code)
    return exit_code


def _exit_at_once(code: int) -> None:
    """End the process now, past Ray's exit hooks (they would wait 60 s for a
    GCS that is gone)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _stop_replicas(controller: Any) -> None:
    """Ask the controller to stop every engine, unless Ray no longer answers.

    A stop signal sent to the whole process group or cgroup (systemd's default
    ``KillMode=control-group``) stops Ray's own processes alongside the
    gateway: they shut down by themselves and take their actors, and with
    them the engines, along; meanwhile no call to Ray is answered. A cheap
    call first tells which case this is, in a second."""
    if not await asyncio.to_thread(ray_answers):
        logger.info("Ray does not answer (it is stopping too); its replicas stop with it")
        return
    logger.info("stopping replicas")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(controller.shutdown.remote(), _REPLICAS_STOP_S)


def run_gateway(config: ServingConfig) -> int:
    """Only the gateway, joining an existing Ray cluster (and sharing its controller)."""
    check_port_free(config.gateway.host, config.gateway.port)
    init_ray(
        namespace=config.ray.namespace,
        address=config.ray.address or "auto",
        connect_timeout_s=config.ray.connect_timeout_s,
    )
    import ray

    exit_code = 1  # until the gateway ran and said otherwise
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
        exit_code = run_event_loop(serve_gateway(config, registry))
    finally:
        if not shutdown_ray():
            _exit_at_once(exit_code)
    return exit_code
