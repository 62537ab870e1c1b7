#!/usr/bin/env python3
"""Load on a deployed MLflow tracking server: N concurrent clients, each creating a run and logging
metric values one call at a time, then in batches. Prints calls/s, p50, p95 and errors per phase.

    python benchmarks/mlflow_load.py                          # the local stack (make up)
    python benchmarks/mlflow_load.py --target sqlite=https://127.0.0.1:5500,files/keys \\
        --target postgresql=https://127.0.0.1:25500,/tmp/pg/keys --clients 16,64

Each target is LABEL=URL,KEYS_DIR: the clients sign in as the deployment's admin (its password in
KEYS_DIR/secrets) and check the server against its CA (KEYS_DIR/tls/ca.pem). MLflow's client
retries as it does in a notebook (a connection the server closed, a 5xx answer): a call that
still fails is an error, its values lost to the user. The last line is the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent


def parse_target(text: str) -> dict[str, str]:
    label, _, rest = text.partition("=")
    url, _, keys = rest.partition(",")
    if not label or not url.startswith("https://") or not keys:
        raise argparse.ArgumentTypeError(f"not LABEL=https://HOST:PORT,KEYS_DIR: {text!r}")
    return {"label": label, "url": url, "keys": keys}


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def configure(target: dict[str, str]) -> None:
    keys = Path(target["keys"])
    os.environ.update({
        "MLFLOW_TRACKING_URI": target["url"],
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": (keys / "secrets/mlflow_admin_password").read_text().split()[0],
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(keys / "tls/ca.pem"),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
    })


def phase(clients: int, work: Any) -> dict[str, Any]:
    """Run `work(index, record)` in `clients` threads at once; record(seconds, error) per call."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def record(seconds: float, error: str | None) -> None:
        with lock:
            if error is None:
                latencies.append(seconds)
            else:
                errors.append(error)

    def worker(index: int) -> None:
        barrier.wait()
        work(index, record)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    calls = len(latencies) + len(errors)
    return {
        "calls": calls, "errors": len(errors), "seconds": round(wall, 2),
        "calls_per_s": round(calls / wall, 1) if wall else 0.0,
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else 0.0,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
        "first_errors": sorted(set(errors))[:3],
    }


def timed(record: Any, call: Any) -> None:
    started = time.perf_counter()
    try:
        call()
    except Exception as error:  # noqa: BLE001 - every failure of a call is a figure
        record(0.0, f"{type(error).__name__}: {' '.join(str(error).split())[-240:]}")
        return
    record(time.perf_counter() - started, None)


def load(target: dict[str, str], clients: int, values: int, batch: int) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    configure(target)
    client = MlflowClient()
    name = "aie-load-test"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tag = uuid.uuid4().hex[:8]
    runs: list[str] = [""] * clients

    def create(index: int, record: Any) -> None:
        def call() -> None:
            runs[index] = client.create_run(experiment_id, run_name=f"load-{tag}-{index}").info.run_id
        timed(record, call)

    def one_at_a_time(index: int, record: Any) -> None:
        for step in range(values):
            timed(record, lambda step=step: client.log_metric(runs[index], "loss", 1.0 / (step + 1), step=step))

    def batches(index: int, record: Any) -> None:
        for start in range(0, values, batch):
            now = int(time.time() * 1000)
            steps = range(start, min(values, start + batch))
            metrics = [Metric("accuracy", step / values, now, step) for step in steps]
            timed(record, lambda metrics=metrics: client.log_batch(runs[index], metrics=metrics))

    result = {"target": target["label"], "clients": clients, "values": values, "batch": batch,
              "create_run": phase(clients, create)}
    if all(runs):
        result["log_metric"] = phase(clients, one_at_a_time)
        result["log_batch"] = phase(clients, batches)
        # What was logged is there: every step of both metrics, in every run.
        lost = 0
        for run_id in runs:
            for key in ("loss", "accuracy"):
                lost += values - len(client.get_metric_history(run_id, key))
        result["values_missing"] = lost
    for run_id in filter(None, runs):
        client.delete_run(run_id)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", type=parse_target,
                        help="LABEL=URL,KEYS_DIR (repeatable; default: the local stack)")
    parser.add_argument("--clients", default="16,64", help="comma-separated client counts (default 16,64)")
    parser.add_argument("--values", type=int, default=100, help="metric values each client logs per phase")
    parser.add_argument("--batch", type=int, default=10, help="values per log_batch call")
    args = parser.parse_args(argv)
    targets = args.target or [parse_target(f"local=https://127.0.0.1:5500,{PROJECT / 'files/keys'}")]
    results = []
    print(f"{'target':<12} {'clients':>7} {'phase':<11} {'calls':>6} {'calls/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'errors':>6}")
    for target in targets:
        for clients in (int(c) for c in args.clients.split(",")):
            result = load(target, clients, args.values, args.batch)
            results.append(result)
            for name in ("create_run", "log_metric", "log_batch"):
                if name in result:
                    figures = result[name]
                    print(f"{target['label']:<12} {clients:>7} {name:<11} {figures['calls']:>6} "
                          f"{figures['calls_per_s']:>8} {figures['p50_ms']:>8} {figures['p95_ms']:>8} "
                          f"{figures['errors']:>6}", flush=True)
                    for error in figures["first_errors"]:
                        print(f"{'':<12} error: {error}")
            missing = result.get("values_missing", "n/a")
            print(f"{target['label']:<12} {clients:>7} values missing after the run: {missing}")
    print(json.dumps(results))
    phases = ("create_run", "log_metric", "log_batch")
    failed = any(r[name]["errors"] for r in results for name in phases if name in r)
    return 1 if failed or any(r.get("values_missing", 1) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
