"""A replica: one Ray actor that owns one vLLM engine process.

Why vLLM's OpenAI server in a child process rather than an in-process
``AsyncLLM`` streamed back through Ray: measured on the 2-core CI machine
(Ray 2.60), a Ray streaming-generator call costs ~2.1 ms to its first item and
~0.32 ms per further item, and a plain actor call ~1.1 ms round trip. Every
token through Ray would add that, against our budget of <= 2 ms added TTFT
p50 for the whole gateway. Relaying the engine's own SSE over a kept-alive
HTTP connection adds far less per token (see ``benchmarks/overhead``), keeps
vLLM's native ``/metrics`` and request abort-on-disconnect, and gives a real
PID to supervise and kill. Ray still places, restarts and discovers replicas;
it just stays off the token path.

The engine listens on loopback (or the node's cluster address) and every one
of its routes requires this replica's secret (``engine_guard``).

The replica is the one observer of its engine's load: each health check reads
the engine's ``/metrics``, and the load travels with the replica's info
(controller -> gateways); the page itself is kept for ``/metrics/engines``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from typing import Any

from serving.cluster.adapters import ResidentAdapters
from serving.cluster.engine_process import (
    engine_command,
    engine_environment,
    free_port,
    spawn_engine,
    stop_engine,
    tail,
)
from serving.cluster.kv_events import KvEventSockets
from serving.cluster.preflight import fim_problem, group_problem, model_tokenizer_json
from serving.config import HealthConfig, ReplicaGroupConfig
from serving.engine_link.engine_metrics import EngineLoad, parse_engine_metrics
from serving.engine_link.http import EngineConnectionPool, EngineHTTPError
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState, adapter_load_failed
from serving.fim_templates import fim_template
from serving.paths import logs_dir

_PROBE_TIMEOUT_S = 5.0  # start-up probes (models, chat template, FIM tokens)


class ReplicaActor:
    """Ray actor body (wrapped with ``ray.remote`` by the controller)."""

    def __init__(
        self,
        replica_id: str,
        group_json: dict[str, Any],
        local_ray: bool,
        health_json: dict[str, Any] | None = None,
        engine_env: dict[str, str] | None = None,
        adapter_roots: list[str] | None = None,
        kv_events_buffer_steps: int | None = None,
        replica_index: int = 0,
    ) -> None:
        self.replica_id = replica_id
        self.group = ReplicaGroupConfig.model_validate(group_json)
        self.health = HealthConfig.model_validate(health_json or {})
        self.load = EngineLoad()
        self.metrics_page = ""  # the engine's /metrics at the last health check
        engine = self.group.engine
        self.host = self._bind_host(local_ray)
        self.port = free_port(self.host)
        self.token = secrets.token_urlsafe(32)
        self.log_path = logs_dir() / "engines" / f"{replica_id}.log"
        self.state = ReplicaState.STARTING
        self.message = ""
        self.max_model_len: int | None = engine.max_model_len
        self.has_chat_template = False
        self._failed_checks = 0
        self._passed_checks = 0
        self.fatal = False
        self._http = EngineConnectionPool(connect_s=_PROBE_TIMEOUT_S, total_s=_PROBE_TIMEOUT_S)
        self._auth = f"Authorization: Bearer {self.token}\r\n".encode()
        self.adapters = ResidentAdapters(self.group.lora, adapter_roots or [], self._call)
        self._started_at = time.monotonic()
        self.process: subprocess.Popen[bytes] | None = None
        self.kv_events: KvEventSockets | None = None
        self.prompt_prefix_ids: list[int] | None = None
        # A FIM template that does not fit the tokenizer, a speculative method
        # vLLM lacks: configuration errors, known from this node's files
        # before minutes of engine start-up (`seed-serve up` checked the head's).
        problem = group_problem(self.group)
        if problem:
            self._fail_for_good(problem)
            return
        # kv_aware routing: the engine publishes its KV-cache events on Unix
        # sockets its guard relays (serving/cluster/kv_events.py).
        self.kv_events = KvEventSockets.create() if kv_events_buffer_steps else None
        # Started here, not in a method: when Ray restarts a dead replica it
        # runs __init__ again, and the new engine boots without anybody asking.
        self.process = spawn_engine(
            engine_command(
                engine,
                host=self.host,
                port=self.port,
                lora=self.group.lora,
                speculative=self.group.speculative,
            )
            + (self.kv_events.engine_args(kv_events_buffer_steps or 0) if self.kv_events else []),
            {
                **engine_environment(
                    engine,
                    token=self.token,
                    lora=self.group.lora,
                    speculative=self.group.speculative,
                ),
                **(self.kv_events.environment() if self.kv_events else {}),
                **(engine_env or {}),
            },
            self.log_path,
            cpus=engine.cores_of(replica_index),
        )

    def _fail_for_good(self, problem: str) -> None:
        """A configuration error: restarting would fail the same way."""
        self.fatal = True
        self.state = ReplicaState.FAILED
        self.message = problem

    def _bind_host(self, local_ray: bool) -> str:
        mode = self.group.bind
        if mode == "loopback" or (mode == "auto" and local_ray):
            return "127.0.0.1"
        import ray

        return str(ray.util.get_node_ip_address())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _call(
        self, method: str, path: str, body: Any = None, *, timeout_s: float = _PROBE_TIMEOUT_S
    ) -> tuple[int, bytes]:
        """One request to the engine: (status, body); raises EngineHTTPError or TimeoutError."""
        data = b"" if body is None else json.dumps(body).encode()
        headers = self._auth + (b"Content-Type: application/json\r\n" if data else b"")
        response = await self._http.request(
            method, self.url, path, data, headers, total_s=timeout_s
        )
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def _get_json(self, path: str) -> Any:
        status, raw = await self._call("GET", path)
        if status != 200:
            raise EngineHTTPError(f"GET {path} answered HTTP {status}")
        return json.loads(raw)

    async def _healthy(self) -> bool:
        try:
            status, _ = await self._call("GET", "/health")
        except (TimeoutError, EngineHTTPError):
            return False
        return status == 200

    async def _check_fim_tokens(self) -> str:
        """The FIM check with the engine's own /tokenize."""
        template = fim_template(self.group.engine.fim_template)
        if template is None:
            return ""
        counts = {}
        for token in template.tokens:
            body = {
                "model": self.group.engine.served_model_name,
                "prompt": token,
                "add_special_tokens": False,
            }
            status, raw = await self._call("POST", "/tokenize", body)
            if status != 200:
                raise EngineHTTPError(f"/tokenize answered HTTP {status}")
            counts[token] = len(json.loads(raw)["tokens"])
        return fim_problem(self.group.engine.fim_template, counts)

    async def _probe_prompt_prefix(self) -> list[int]:
        """The token ids the engine puts before every prompt (its tokenizer's
        BOS, if it adds one): kv_aware gateways tokenize prompts as it does."""
        body = {"model": self.group.engine.served_model_name, "prompt": ""}
        status, raw = await self._call("POST", "/tokenize", body)
        if status != 200:
            raise EngineHTTPError(f"/tokenize answered HTTP {status}")
        return [int(t) for t in json.loads(raw)["tokens"]]

    def tokenizer_json(self) -> str | None:
        """The model's tokenizer.json (for the gateway's token budgets), if it has one."""
        return model_tokenizer_json(self.group.engine)

    async def _probe_chat_template(self) -> bool:
        """A base model without a chat template answers chat with a 400."""
        body = {
            "model": self.group.engine.served_model_name,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
        }
        try:
            status, _ = await self._call("POST", "/v1/chat/completions", body)
        except (TimeoutError, EngineHTTPError):
            return False
        return status == 200

    def _exited(self) -> bool:
        if self.process is None:
            return True  # never started (a configuration error)
        if self.process.poll() is None:
            return False
        self.state = ReplicaState.FAILED
        self.message = (
            f"engine process exited with code {self.process.returncode}; "
            f"last log lines ({self.log_path}):\n{tail(self.log_path)}"
        )
        return True

    async def wait_ready(self) -> dict[str, Any]:
        """Return this replica's info once its engine serves (or it failed/timed out)."""
        deadline = self._started_at + self.group.startup_timeout_s
        while self.state is ReplicaState.STARTING:
            if self._exited():
                break
            if await self._healthy():
                models = await self._get_json("/v1/models")
                self.max_model_len = int(models["data"][0].get("max_model_len") or 0) or None
                self.has_chat_template = await self._probe_chat_template()
                problem = await self._check_fim_tokens()
                if self.kv_events is not None:
                    self.prompt_prefix_ids = await self._probe_prompt_prefix()
                if problem:
                    self._fail_for_good(problem)
                    await self._terminate_engine()
                    break
                self.state = ReplicaState.READY
                break
            if time.monotonic() > deadline:
                self.state = ReplicaState.FAILED
                self.message = (
                    f"engine not ready after {self.group.startup_timeout_s:g}s; "
                    f"last log lines ({self.log_path}):\n{tail(self.log_path)}"
                )
                break
            await asyncio.sleep(0.5)
        return await self.info()

    async def _check(self) -> bool:
        """One health check: the engine's /metrics answers in time (and gives its load)."""
        try:
            status, raw = await self._call("GET", "/metrics", timeout_s=self.health.timeout_s)
        except (TimeoutError, EngineHTTPError):
            return False
        if status != 200:
            return False
        self.metrics_page = raw.decode("utf-8", "replace")
        self.load = parse_engine_metrics(self.metrics_page)
        self.adapters.seen_active(self.load.active_adapters)
        return True

    def engine_metrics(self) -> str:
        """The engine's own /metrics page as read at the last health check."""
        return self.metrics_page if self.state is ReplicaState.READY else ""

    async def info(self) -> dict[str, Any]:
        """Current state, after one health check of a started engine: a ready
        replica is ejected after ``failure_threshold`` failed checks in a row and
        re-admitted after ``success_threshold`` passed ones."""
        if self.state in (ReplicaState.READY, ReplicaState.UNHEALTHY) and not self._exited():
            if await self._check():
                self._failed_checks = 0
                self._passed_checks += 1
                if (
                    self.state is ReplicaState.UNHEALTHY
                    and self._passed_checks >= self.health.success_threshold
                ):
                    self.state = ReplicaState.READY
                    self.message = ""
            else:
                self._passed_checks = 0
                self._failed_checks += 1
                if self._failed_checks >= self.health.failure_threshold:
                    if self.state is ReplicaState.READY:
                        self.message = f"{self._failed_checks} health checks failed in a row"
                    self.state = ReplicaState.UNHEALTHY
        engine_gone = self.process is not None and self.process.poll() is not None
        if self.state is ReplicaState.FAILED and not self.fatal and engine_gone:
            # A dead engine makes the actor exit so that Ray restarts it
            # (bounded by max_restarts); the controller sees RESTARTING.
            asyncio.get_running_loop().call_later(0.2, os._exit, 1)
        return ReplicaInfo(
            replica_id=self.replica_id,
            group=self.group.name,
            model=self.group.engine.served_model_name,
            state=self.state,
            url=self.url,
            token=self.token,
            max_model_len=self.max_model_len,
            has_chat_template=self.has_chat_template,
            fim_template=self.group.engine.fim_template,
            engine_pid=self.process.pid if self.process is not None else None,
            kv_events=self.kv_events is not None,
            prompt_prefix_ids=self.prompt_prefix_ids,
            node_ip=self.host,
            log_path=str(self.log_path),
            message=self.message,
            running=self.load.running,
            waiting=self.load.waiting,
            kv_cache_usage=self.load.kv_cache_usage,
            prefix_hits=self.load.prefix_hits,
            prefix_queries=self.load.prefix_queries,
            lora_capacity=self.group.lora.capacity if self.group.lora.enabled else 0,
            lora_min_resident_s=self.group.lora.min_resident_s,
            lora_load_bound=self.group.lora.load_bound,
            adapters=self.adapters.report(),
            speculative=self.group.speculative.method,
            lanes=list(self.group.lanes) if self.group.lanes is not None else None,
        ).to_dict()

    async def ensure_adapter(self, name: str, path: str) -> dict[str, Any]:
        """Make a team adapter resident in the engine (see ``ResidentAdapters``)."""
        if self.state is not ReplicaState.READY:
            return adapter_load_failed(f"replica {self.replica_id} is {self.state.value}")
        return await self.adapters.ensure(name, path)

    async def unload_adapter(self, name: str) -> bool:
        return await self.adapters.unload(name)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the engine has nothing running or waiting (or time is up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self._check() and self.load.running + self.load.waiting == 0:
                return True
            await asyncio.sleep(0.2)
        return False

    async def _terminate_engine(self) -> None:
        """SIGTERM the engine, then SIGKILL its whole process group."""
        if self.process is not None:
            await asyncio.to_thread(stop_engine, self.process)

    async def stop(self) -> None:
        """Stop the engine for good."""
        self.state = ReplicaState.STOPPED
        await self._terminate_engine()
        if self.kv_events is not None:
            self.kv_events.remove()
        self._http.close()
