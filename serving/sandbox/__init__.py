"""Isolated execution of generated or user-supplied code (never in the gateway
process): namespaces (bubblewrap or unshare), resource limits, an empty
environment, no network. A leaf beside the layers: it imports only config and
errors, and tells its owner of each run's outcome (``on_run``), which counts it.
"""

from serving.sandbox._pytest import PytestReport, run_pytest
from serving.sandbox._runner import Sandbox, SandboxResult, SandboxUnavailableError

__all__ = ["PytestReport", "Sandbox", "SandboxResult", "SandboxUnavailableError", "run_pytest"]
