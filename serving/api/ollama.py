"""Ollama's API as a thin front: ``/api/generate`` (with ``suffix``:
fill-in-the-middle) is a completion at the cursor (``serving.api.cursor``),
``/api/chat`` (and ``/api/generate`` without a suffix on a model with a chat
template, as Ollama applies the template) the OpenAI chat path; the answers
are Ollama's NDJSON lines. Continue's ``ollama`` provider, Twinny and the
``ollama`` Python client connect unmodified (README: their settings).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from serving.api.cursor import CursorCompletions, CursorRequest, StartedCompletion
from serving.api.dialects import OLLAMA
from serving.api.ollama_protocol import (
    OLLAMA_API_VERSION,
    AssistantMessage,
    ChatChunk,
    ChatRequest,
    GenerateChunk,
    GenerateRequest,
    ModelDetails,
    OllamaOptions,
    ShowRequest,
    ShowResponse,
    TagList,
    TagModel,
    VersionResponse,
    created_at,
)
from serving.api.openai_serving import OpenAIServing
from serving.api.protocol import ChatCompletionRequest
from serving.api.protocol import ChatMessage as OpenAIChatMessage
from serving.api.responses import Answer, BodyAnswer, EventStream, guarded, json_answer
from serving.errors import BadRequestError, UpstreamError
from serving.fim_templates import fim_template
from serving.request_context import RequestContext
from serving.upstream.client import EngineHTTPError
from serving.upstream.registry import ModelStatus
from serving.upstream.sse import json_events

NDJSON_TYPE = b"application/x-ndjson"
# Ollama's field names, for errors that name them.
_NAMES = {"prefix": "prompt", "max_tokens": "options.num_predict", "model": "model"}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _max_tokens(options: OllamaOptions) -> int | None:
    value = options.num_predict
    if value is None or value in (-1, -2, 0):  # Ollama: -1 unlimited, -2 fill the context
        return None
    if value < 0:
        raise BadRequestError(
            f"Invalid value for 'options.num_predict': {value} (use a positive count or -1).",
            param="options.num_predict",
        )
    return value


class OllamaServing:
    def __init__(self, cursor: CursorCompletions, openai: OpenAIServing) -> None:
        self.cursor = cursor
        self.openai = openai
        self.started = datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def _model(self, name: str | None, ctx: RequestContext) -> ModelStatus:
        if not name:
            raise BadRequestError("model is required", param="model")
        return self.cursor.model(name, ctx)

    # ------------------------------------------------------------------ generate

    async def generate(self, request: GenerateRequest, ctx: RequestContext) -> Answer:
        status = self._model(request.model, ctx)
        ctx.model = status.name
        if request.context:
            raise BadRequestError(
                "'context' (the deprecated token list) is not supported; send the text in "
                "'prompt'.",
                param="context",
            )
        if request.template:
            raise BadRequestError(
                "'template' is not supported: prompts are rendered in the model's own format "
                "(or send 'raw': true with a prompt you rendered).",
                param="template",
            )
        if request.raw and request.system:
            raise BadRequestError("raw mode does not support template, system, or context",
                                  param="raw")  # fmt: skip
        if not request.prompt and not request.suffix:
            # Ollama's "load the model" call: the model is always loaded here.
            load = GenerateChunk(
                model=status.name, created_at=created_at(), response="", done=True,
                done_reason="load",
            )  # fmt: skip
            return json_answer(load)
        options = request.options or OllamaOptions()
        template = fim_template(status.fim_template)
        # A prompt a client rendered with the model's FIM tokens (Twinny; Continue
        # with raw) is sent as it is, never rendered a second time. With a
        # suffix, the tokens are the file's own text (say, a FIM template being
        # edited): the gateway renders.
        rendered = request.raw or (
            not request.suffix
            and template is not None
            and any(token in request.prompt for token in template.tokens)
        )
        if not request.suffix and not rendered and status.has_chat_template:
            messages = [OpenAIChatMessage(role="user", content=request.prompt)]
            if request.system:
                messages.insert(0, OpenAIChatMessage(role="system", content=request.system))
            return await self._chat(status, messages, options, request.stream, ctx, chat=False)
        fim = bool(request.suffix) or rendered
        if fim and ctx.document is None:
            ctx.document = f"ollama:{status.name}"  # per key: the developer's cursor
        started = await self.cursor.start(
            CursorRequest(
                prefix=request.prompt,
                suffix="" if rendered else request.suffix,
                model=status.name,
                mode="auto" if request.suffix else "none",
                max_tokens=_max_tokens(options),
                clamp_max_tokens=True,  # Ollama's default is "unlimited"
                stop=options.stops(),
                sampling=options.sampling(),
                rendered=rendered,
                strict_language=False,
                names=_NAMES,
            ),
            ctx,
        )
        if not request.stream:
            first = None
            async for delta in started.run.deltas():
                first = first or (time.monotonic() if delta.text else None)
            started.note(ctx)
            return json_answer(self._generate_end(started, started.run.texts[0], first))
        return EventStream(
            guarded(self._generate_lines(started, ctx), OLLAMA.stream_error, end=b""),
            content_type=NDJSON_TYPE,
        )

    async def _generate_lines(
        self, started: StartedCompletion, ctx: RequestContext
    ) -> AsyncIterator[bytes]:
        first = None
        async for delta in started.run.deltas():
            if delta.text:
                first = first or time.monotonic()
                yield GenerateChunk(
                    model=started.status.name, created_at=created_at(), response=delta.text,
                    done=False,
                ).line()  # fmt: skip
        started.note(ctx)
        yield self._generate_end(started, "", first).line()

    @staticmethod
    def _generate_end(started: StartedCompletion, text: str, first: float | None) -> GenerateChunk:
        now = time.monotonic()
        first = first or now
        run = started.run
        return GenerateChunk(
            model=started.status.name,
            created_at=created_at(),
            response=text,
            done=True,
            done_reason="length" if run.finish_reasons.get(0) == "length" else "stop",
            total_duration=_ns(now - started.started),
            load_duration=0,
            prompt_eval_count=run.prompt_tokens,
            prompt_eval_duration=_ns(first - started.started),
            eval_count=run.completion_tokens,
            eval_duration=_ns(now - first),
        )

    # ------------------------------------------------------------------ chat

    async def chat(self, request: ChatRequest, ctx: RequestContext) -> Answer:
        status = self._model(request.model, ctx)
        if not request.messages:
            raise BadRequestError("messages are required", param="messages")
        messages = [
            OpenAIChatMessage(role="user" if m.role == "tool" else m.role, content=m.content)
            for m in request.messages
        ]
        options = request.options or OllamaOptions()
        return await self._chat(status, messages, options, request.stream, ctx, chat=True)

    async def _chat(
        self,
        status: ModelStatus,
        messages: list[OpenAIChatMessage],
        options: OllamaOptions,
        stream: bool,
        ctx: RequestContext,
        *,
        chat: bool,
    ) -> Answer:
        max_tokens = _max_tokens(options)
        limit = self.cursor.config.completion_max_tokens_limit
        request = ChatCompletionRequest(
            model=status.name,
            messages=messages,
            max_tokens=min(max_tokens, limit) if max_tokens else None,
            stop=options.stops(),
            **options.sampling(),
        )
        call = await self.openai.open_chat_stream(request, ctx)
        started = time.monotonic()
        model = status.name

        def piece(text: str, done: bool = False, **counts: object) -> bytes:
            if chat:
                return ChatChunk(
                    model=model, created_at=created_at(),
                    message=AssistantMessage(content=text), done=done, **counts,  # type: ignore[arg-type]
                ).line()  # fmt: skip
            return GenerateChunk(
                model=model, created_at=created_at(), response=text, done=done,
                **counts,  # type: ignore[arg-type]
            ).line()  # fmt: skip

        async def lines() -> AsyncIterator[bytes]:
            first: float | None = None
            reason = "stop"
            prompt_tokens = completion_tokens = 0
            text: list[str] = []
            try:
                async for event in json_events(call.chunks()):
                    usage = event.get("usage")
                    if usage:
                        prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        completion_tokens = int(usage.get("completion_tokens") or 0)
                    for choice in event.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content") or ""
                        if content:
                            first = first or time.monotonic()
                            ctx.relayed_events += 1  # usage, if the answer is cut short
                            text.append(content)
                            if stream:
                                yield piece(content)
                        if choice.get("finish_reason"):
                            reason = "length" if choice["finish_reason"] == "length" else "stop"
            except (TimeoutError, EngineHTTPError) as exc:
                raise UpstreamError(
                    f"Replica {call.replica.replica_id} failed mid-answer: "
                    f"{exc or type(exc).__name__}",
                    code="replica_failed",
                ) from None
            finally:
                call.finish()
            ctx.usage(prompt_tokens, completion_tokens)
            ctx.finish_reason = reason
            ctx.completion_text = "".join(text)
            now = time.monotonic()
            first = first or now
            yield piece(
                "" if stream else "".join(text), True, done_reason=reason,
                total_duration=_ns(now - started), load_duration=0,
                prompt_eval_count=prompt_tokens, prompt_eval_duration=_ns(first - started),
                eval_count=completion_tokens, eval_duration=_ns(now - first),
            )  # fmt: skip

        if not stream:  # the one line is the whole answer
            body = b"".join([line async for line in lines()])
            return BodyAnswer(body.rstrip(b"\n"))
        return EventStream(guarded(lines(), OLLAMA.stream_error, end=b""), content_type=NDJSON_TYPE)

    # ------------------------------------------------------------------ models

    def _details(self, status: ModelStatus) -> ModelDetails:
        family = status.fim_template
        return ModelDetails(family=family, families=[family])

    async def tags(self, ctx: RequestContext) -> TagList:
        """The served models, then the caller's tenant's team adapters of them
        (`<base>:<adapter>`, Ollama's own `name:tag` shape)."""
        served = {status.name: status for status in self.cursor.registry.models()}
        entries = [(name, status) for name, status in served.items()]
        entries += [
            (f"{adapter.base_model}:{adapter.name}", served[adapter.base_model])
            for adapter in self.cursor.models.adapters(ctx)
            if adapter.base_model in served
        ]
        return TagList(
            models=[
                TagModel(
                    name=name,
                    model=name,
                    modified_at=self.started,
                    size=0,
                    digest=hashlib.sha256(name.encode()).hexdigest(),
                    details=self._details(status),
                )
                for name, status in entries
            ]
        )

    async def show(self, request: ShowRequest, ctx: RequestContext) -> ShowResponse:
        status = self._model(request.model or request.name, ctx)
        template = fim_template(status.fim_template)
        if template is not None:
            # Go template syntax, as Ollama shows it: Continue uses suffix-FIM
            # when the template mentions .Suffix.
            fim = template.template.replace("{prefix}", "{{ .Prompt }}").replace(
                "{suffix}", "{{ .Suffix }}"
            )
            go_template = (
                f"{{{{- if .Suffix }}}}{fim}{{{{- else }}}}{{{{ .Prompt }}}}{{{{- end }}}}"
            )
            capabilities = ["completion", "insert"]
        else:
            go_template = "{{ .Prompt }}"
            capabilities = ["completion"]
        parameters = []
        if status.max_model_len:
            parameters.append(f"num_ctx {status.max_model_len}")
        family = status.fim_template
        return ShowResponse(
            modelfile=f"# served by Seed Serve\nFROM {status.name}\n",
            parameters="\n".join(parameters),
            template=go_template,
            details=self._details(status),
            model_info={
                "general.architecture": family,
                "general.basename": status.name,
                f"{family}.context_length": status.max_model_len,
            },
            capabilities=capabilities,
            modified_at=self.started,
        )

    async def version(self, ctx: RequestContext) -> VersionResponse:
        return VersionResponse(version=OLLAMA_API_VERSION)
