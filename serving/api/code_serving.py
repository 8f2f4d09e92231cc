"""Serving logic of /v1/code/*: completion at the cursor, repair, test generation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from serving.api.code_protocol import (
    CodeCompletionChunk,
    CodeCompletionRequest,
    CodeCompletionResponse,
    CodeRepairRequest,
    CodeRepairResponse,
    CodeTestsRequest,
    CodeTestsResponse,
    LineRange,
    TestFailureInfo,
)
from serving.api.cursor import CursorCompletions, CursorRequest
from serving.api.protocol import Usage
from serving.api.responses import DONE, Answer, EventStream, guarded, json_answer, sse_event
from serving.config import TasksConfig
from serving.errors import BadRequestError
from serving.request_context import RequestContext
from serving.sandbox import Sandbox
from serving.tasks.languages import UnsupportedLanguage, resolve_language
from serving.tasks.repair import Repairer
from serving.tasks.repo_snippets import Snippet
from serving.tasks.testgen import TestWriter


class CodeServing:
    def __init__(
        self,
        config: TasksConfig,
        cursor: CursorCompletions,
        sandbox: Sandbox,
    ) -> None:
        self.config = config
        self.cursor = cursor
        self.completer = cursor.completer
        self.sandbox = sandbox
        self.repairer = Repairer(cursor.completer, sandbox)
        self.test_writer = TestWriter(cursor.completer, sandbox)

    # ------------------------------------------------------------------ shared checks

    @staticmethod
    def _language(language: str | None, path: str | None) -> str:
        try:
            return resolve_language(language, path)
        except UnsupportedLanguage as exc:
            raise BadRequestError(str(exc), param="language", code="unsupported_language") from None

    def _candidates(self, requested: int | None, default: int) -> int:
        count = requested or default
        if count > self.config.max_candidates:
            raise BadRequestError(
                f"Invalid value for 'n_candidates': at most {self.config.max_candidates}.",
                param="n_candidates",
            )
        return count

    # ------------------------------------------------------------------ completion

    async def completion(self, request: CodeCompletionRequest, ctx: RequestContext) -> Answer:
        if ctx.document is None and request.document:
            ctx.document = request.document
        sampling: dict[str, object] = {"temperature": request.temperature}
        if request.top_p is not None:
            sampling["top_p"] = request.top_p
        if request.seed is not None:
            sampling["seed"] = request.seed
        started = await self.cursor.start(
            CursorRequest(
                prefix=request.prefix,
                suffix=request.suffix,
                model=request.model,
                language=request.language,
                path=request.path,
                mode=request.mode,
                max_tokens=request.max_tokens,
                stop=request.stop,
                sampling=sampling,
                context=[
                    Snippet(path=f.path, text=f.text, kind="snippet", rank=rank)
                    for rank, f in enumerate(request.context or ())
                ],
            ),
            ctx,
        )
        run, prepared, status = started.run, started.prepared, started.status
        completion_id, created, mode = started.id, started.created, started.mode
        language = started.language or "unknown"

        def answer(text: str, finish_reason: str) -> CodeCompletionResponse:
            ctx.usage(run.prompt_tokens, run.completion_tokens)
            ctx.finish_reason = finish_reason
            return CodeCompletionResponse(
                id=completion_id,
                created=created,
                model=status.name,
                text=text,
                finish_reason=finish_reason,
                mode=mode if mode != "none" else "block",
                language=language,
                fim="native" if prepared.fim_mode == "native" else "prefix-only",
                prompt_trimmed=prepared.trimmed,
                usage=Usage.of(run.prompt_tokens, run.completion_tokens),
            )

        if not request.stream:
            async for _ in run.deltas():
                pass
            ctx.completion_text = run.texts[0]
            return json_answer(answer(run.texts[0], run.finish_reasons[0]))

        async def events() -> AsyncIterator[bytes]:
            finish = "stop"
            async for delta in run.deltas():
                if delta.text:
                    chunk = CodeCompletionChunk(
                        id=completion_id, created=created, model=status.name, text=delta.text
                    )
                    yield sse_event(chunk.model_dump_json().encode())
                if delta.finish_reason:
                    finish = delta.finish_reason
            ctx.completion_text = run.texts[0]
            final = answer("", finish).model_copy(update={"object": "code.completion.chunk"})
            yield sse_event(final.model_dump_json().encode())
            yield DONE

        return EventStream(guarded(events()))

    # ------------------------------------------------------------------ repair

    async def repair(self, request: CodeRepairRequest, ctx: RequestContext) -> CodeRepairResponse:
        status = self.cursor.model(request.model, ctx)
        ctx.model = status.name
        ctx.prompt_text = request.code
        self.cursor.check_size("code", request.code, request.test, request.error)
        language = self._language(request.language, request.path)
        if request.test is not None:
            if language != "python":
                raise BadRequestError(
                    "'test' can only be run for Python code (pytest).", param="test"
                )
            self.sandbox.require()  # fail before spending GPU time, not after
        result = await self.repairer.repair(
            status,
            code=request.code,
            error=request.error,
            language=language,
            path=request.path,
            test=request.test,
            n_candidates=self._candidates(request.n_candidates, self.config.repair_candidates),
            temperature=request.temperature,
            seed=request.seed,
            max_tokens=self.config.repair_max_tokens,
            ctx=ctx,
        )
        ctx.usage(result.prompt_tokens, result.completion_tokens)
        best = result.best
        change = best.change
        ctx.response_id = f"repair-{uuid.uuid4().hex}"
        ctx.language = language
        ctx.completion_text = best.code
        return CodeRepairResponse(
            id=ctx.response_id,
            model=status.name,
            fixed_code=best.code,
            diff=change.diff if change else "",
            location=LineRange(start=change.start, end=change.end) if change else None,
            verified=best.verified,
            syntax_ok=best.syntax_ok,
            candidates_tried=result.tried,
            test_output=best.report.output if best.report else None,
            usage=Usage.of(result.prompt_tokens, result.completion_tokens),
        )

    # ------------------------------------------------------------------ tests

    async def tests(self, request: CodeTestsRequest, ctx: RequestContext) -> CodeTestsResponse:
        status = self.cursor.model(request.model, ctx)
        ctx.model = status.name
        ctx.prompt_text = request.code
        self.cursor.check_size("code", request.code)
        language = self._language(request.language, None)
        if language != "python":
            raise BadRequestError(
                f"Test generation supports Python (pytest) only, not {language}.",
                param="language",
                code="unsupported_language",
            )
        if request.framework.lower() != "pytest":
            raise BadRequestError(
                f"framework {request.framework!r} is not supported; use 'pytest'.",
                param="framework",
            )
        self.sandbox.require()
        result = await self.test_writer.write(
            status,
            code=request.code,
            strength=request.strength,
            n_candidates=self._candidates(request.n_candidates, self.config.tests_candidates),
            temperature=request.temperature,
            seed=request.seed,
            max_tokens=self.config.tests_max_tokens,
            regenerations=self.config.tests_regenerations,
            ctx=ctx,
        )
        ctx.usage(result.prompt_tokens, result.completion_tokens)
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        best = result.best
        ctx.language = language
        if best is None or best.report is None:
            return CodeTestsResponse(
                id=f"tests-{uuid.uuid4().hex}",  # nothing to accept: not tracked
                model=status.name,
                tests="",
                syntax_ok=False,
                test_count=0,
                passed=0,
                passed_on_given_code=False,
                failures=[
                    TestFailureInfo(name="generation", message="no candidate parsed as a test file")
                ],
                candidates_tried=result.tried,
                usage=usage,
            )
        report = best.report
        ctx.response_id = f"tests-{uuid.uuid4().hex}"
        ctx.completion_text = best.source
        return CodeTestsResponse(
            id=ctx.response_id,
            model=status.name,
            tests=best.source,
            syntax_ok=True,
            test_count=max(best.test_count, report.total),
            passed=report.passed,
            passed_on_given_code=report.ok,
            failures=[TestFailureInfo(name=f.name, message=f.message) for f in report.failures],
            candidates_tried=result.tried,
            usage=usage,
        )
