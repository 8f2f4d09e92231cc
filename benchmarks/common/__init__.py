"""Shared pieces of the benchmarks: the machine, statistics, reports, progress."""

from benchmarks.common.machine import machine_info
from benchmarks.common.progress import Progress
from benchmarks.common.report import write_report
from benchmarks.common.stats import percentiles, summarize

__all__ = ["Progress", "machine_info", "percentiles", "summarize", "write_report"]
