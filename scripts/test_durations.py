#!/usr/bin/env python3
"""Per-test durations from a JUnit report (pytest --junitxml): writes them, slowest first, as
tab-separated lines (seconds, outcome, test) and prints the slowest ones.

    scripts/test_durations.py test-artifacts/junit.xml test-artifacts/durations.tsv [--top 15]

A test's time is its setup, call and teardown together (pytest's default junit_duration_report),
so the first test of a shared deployment carries that deployment.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def durations(report: Path) -> list[tuple[float, str, str]]:
    """(seconds, outcome, test id) of every test case in the report, slowest first."""
    found = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        module = case.get("classname", "").replace(".", "/")
        found.append((float(case.get("time", 0)), outcome, f"{module}.py::{case.get('name', '')}"))
    return sorted(found, reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"test_durations: no JUnit report at {args.report} (pytest did not get to write it)", file=sys.stderr)
        return 1
    found = durations(args.report)
    args.output.write_text("".join(f"{seconds:.1f}\t{outcome}\t{test}\n" for seconds, outcome, test in found))
    print(f"{len(found)} tests in {sum(seconds for seconds, _, _ in found):.0f} s; the {args.top} slowest "
          f"(all in {args.output}):")
    for seconds, outcome, test in found[:args.top]:
        print(f"{seconds:8.1f} s  {outcome:<8} {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
