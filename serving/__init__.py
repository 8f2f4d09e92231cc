"""Seed Serve: a self-hosted code-assistant endpoint (vLLM on Ray, OpenAI-compatible).

The public surface is small; everything else lives in private-by-convention modules.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("seed-serve")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from serving.config import ServingConfig, load_config
from serving.errors import APIError, ConfigError, SeedServeError, StartupError

__all__ = [
    "APIError",
    "ConfigError",
    "SeedServeError",
    "ServingConfig",
    "StartupError",
    "__version__",
    "load_config",
]
