"""The JSON log format: every line carries the request id."""

from __future__ import annotations

import io
import json
import logging

from serving.observability.logs import JsonFormatter, RequestIdFilter, request_id_var


def test_json_log_lines_carry_the_request_id_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("seed_serve.test-json")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    token = request_id_var.set("req-42")
    try:
        log.info("answered %s", "/v1/completions", extra={"status": 200, "tenant": "alpha"})
    finally:
        request_id_var.reset(token)
    log.info("outside a request")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "req-42" and first["message"] == "answered /v1/completions"
    assert first["status"] == 200 and first["tenant"] == "alpha" and first["level"] == "info"
    assert second["request_id"] is None
