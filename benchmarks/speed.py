"""How long the commands people run all day take, against a deployed stack.

Runs each command ``--repeat`` times through the CLI (``python -m aie.cli``, as `aie` does) and
prints the best and the median wall time beside the target:

- ``aie up`` with nothing to change (a first run settles anything pending and is not counted);
- ``aie status``;
- ``aie serve`` with nothing to change, and ``aie predict`` (one request), when a model is
  registered (``--serve`` skips them otherwise, saying so).

    python benchmarks/speed.py [-i inventory/local] [-e VARS ...] [--repeat 3] [--label local]

Every command must succeed: a failure stops the benchmark with its error.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TARGETS = {"up": 30.0, "status": 3.0, "serve": 15.0, "predict": 2.0}


def timed(command: list[str], settle: bool = False) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aie.cli", *command], cwd=PROJECT, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"aie {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    if command[0] in ("up", "serve") and not settle and "changed=0" not in done.stdout:
        sys.exit(f"aie {command[0]} changed something on a run that should change nothing: {done.stdout.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", default=str(PROJECT / "inventory" / "local"))
    parser.add_argument("-e", "--extra-vars", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="also time aie serve and aie predict")
    parser.add_argument("--label", default="local stack", help="what the figures are of")
    parser.add_argument("--up-target", type=float, default=TARGETS["up"],
                        help="target of the no-op aie up (60 s for four hosts)")
    args = parser.parse_args()
    common = ["-i", args.inventory] + [part for value in args.extra_vars for part in ("-e", value)]
    targets = dict(TARGETS, up=args.up_target)
    commands = ["up", "status"] + (["serve", "predict"] if args.serve else [])
    timed(["up", *common], settle=True)  # anything pending is done before timing
    print(f"{'command':<12} {'best':>8} {'median':>8} {'target':>8}   ({args.label}, {args.repeat} runs)")
    for name in commands:
        figures = [timed([name, *common]) for _ in range(args.repeat)]
        best, median = min(figures), statistics.median(figures)
        verdict = "ok" if median <= targets[name] else "over"
        print(f"aie {name:<8} {best:>7.1f}s {median:>7.1f}s {targets[name]:>7.0f}s   {verdict}")
    if not args.serve:
        print("aie serve, aie predict: not timed (--serve times them once a model is registered)")


if __name__ == "__main__":
    main()
