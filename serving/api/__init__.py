"""The HTTP protocols: the OpenAI API and the code routes, declared once in
the route table (``routes``) and served by one ASGI app (``gateway``) behind
the front door (keys, limits, audit, metrics). Request and answer models are
pydantic (``protocol``, ``code_protocol``); every answer is built in
``responses``. Ollama's, llama.cpp's and Tabby's protocols (``ollama``,
``llamacpp``, ``tabby``) are thin fronts that map onto the same completion at
the cursor (``cursor``) and answer errors in their own shape (``dialects``).

It may import every layer below it: ``serving.tasks``, ``serving.admission``,
``serving.upstream``, ``serving.observability``, config and the leaves.
"""

from serving.api.app import build_app

__all__ = ["build_app"]
