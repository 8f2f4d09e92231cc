"""Running pytest on code + tests inside the sandbox, and reading what happened.

A run passes only if pytest exits 0 *and* its report says at least one test
ran and none failed: code that calls ``sys.exit(0)`` or ``os._exit(0)`` before
its assertions leaves no passing report, so it never counts as a pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from serving.sandbox._runner import Sandbox

REPORT_FILE = ".seed-serve-report.json"
_PLUGIN_MODULE = "_seed_serve_report"
_PLUGIN = """
import json

_results = []
_collect_errors = []


def pytest_collectreport(report):
    if report.failed:
        _collect_errors.append({"name": report.nodeid or "collection", "message": str(report.longrepr)[-1500:]})


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        _results.append({
            "name": report.nodeid.split("::")[-1],
            "when": report.when,
            "outcome": report.outcome,
            "message": "" if report.passed else str(report.longreprtext or "")[-1500:],
        })


def pytest_sessionfinish(session, exitstatus):
    with open(REPORT_FILE, "w") as handle:
        json.dump({"exitstatus": int(exitstatus), "results": _results, "collect_errors": _collect_errors}, handle)
""".replace("REPORT_FILE", repr(REPORT_FILE))


@dataclass
class TestFailure:
    name: str
    message: str


@dataclass
class PytestReport:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    failures: list[TestFailure] = field(default_factory=list)
    timed_out: bool = False
    exit_code: int | None = None
    output: str = ""

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and not self.timed_out
            and self.passed >= 1
            and self.failed == 0
            and self.errors == 0
        )


async def run_pytest(
    sandbox: Sandbox, code_files: dict[str, str], test_file: str, test_source: str
) -> PytestReport:
    """Run ``test_source`` (saved as ``test_file``) against ``code_files`` in the sandbox."""
    files = {**code_files, test_file: test_source, f"{_PLUGIN_MODULE}.py": _PLUGIN}
    result = await sandbox.run_python(
        files,
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            _PLUGIN_MODULE,
            "-p",
            "no:cacheprovider",
            "--rootdir",
            ".",
            "--tb=short",
            "--no-header",
            test_file,
        ],
        collect=(REPORT_FILE,),
        # Only our report plugin: whatever else is installed stays out.
        env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    report = PytestReport(
        timed_out=result.timed_out,
        exit_code=result.exit_code,
        output=(result.stdout + result.stderr)[-4000:],
    )
    raw = result.files.get(REPORT_FILE)
    if raw is None:
        if result.timed_out:
            report.failures.append(TestFailure("timeout", "the test run did not finish in time"))
        else:
            report.failures.append(
                TestFailure("run", "the test run ended without a report (exited early or crashed)")
            )
        report.errors = max(report.errors, 1)
        return report
    try:
        data = json.loads(raw)
    except ValueError:
        report.errors = 1
        report.failures.append(TestFailure("report", "unreadable test report"))
        return report
    for error in data.get("collect_errors", []):
        report.errors += 1
        report.failures.append(TestFailure(str(error.get("name")), str(error.get("message"))))
    if int(data.get("exitstatus", -1)) not in (0, 1) and not data.get("collect_errors"):
        report.errors += 1
        report.failures.append(
            TestFailure("pytest", f"pytest stopped with exit status {data.get('exitstatus')}")
        )
    for item in data.get("results", []):
        outcome = item.get("outcome")
        if item.get("when") == "call" and outcome == "passed":
            report.passed += 1
        elif outcome == "skipped":
            continue
        elif item.get("when") == "call":
            report.failed += 1
            report.failures.append(TestFailure(str(item.get("name")), str(item.get("message"))))
        else:
            report.errors += 1
            report.failures.append(TestFailure(str(item.get("name")), str(item.get("message"))))
    return report
