"""Isolated execution of generated or user-supplied code (never in the gateway process)."""

from serving.sandbox._pytest import PytestReport, run_pytest
from serving.sandbox._runner import Sandbox, SandboxResult, SandboxUnavailableError

__all__ = ["PytestReport", "Sandbox", "SandboxResult", "SandboxUnavailableError", "run_pytest"]
