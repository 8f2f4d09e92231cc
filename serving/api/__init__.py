"""The OpenAI-compatible HTTP gateway."""

from serving.api.app import build_app

__all__ = ["build_app"]
