"""The code tasks: prompts (fill-in-the-middle in each model family's format,
within the context's token budget), code completion with streaming
post-processing, error repair and unit-test generation with candidates checked
(and run in the sandbox).

It knows no HTTP: it imports ``serving.admission`` (dispatch), ``serving.upstream``
(the SSE reader, model status), the sandbox, config and the leaves.
"""
