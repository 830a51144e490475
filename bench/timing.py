"""Small helpers shared by the benchmarks: alternating timing, medians, tables, machine state, workers."""

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
              cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Run every contender `warmup` times, then `repeats` rounds of each in turn; seconds per run.

    Alternating within one process keeps both sides under the same machine load. If `cpu` is given
    it receives each run's CPU seconds (all threads of this process, or the `cpu` value of a dict a
    contender returns for work done elsewhere): less sensitive than wall time to other processes.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    seconds = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            result = fn()
            seconds[name].append(time.perf_counter() - start)
            if cpu is not None:
                used = result["cpu"] if isinstance(result, dict) and "cpu" in result else time.process_time() - start_cpu
                cpu.setdefault(name, []).append(used)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min-max as a percentage of the median: how noisy a figure is."""
    return f"{100 * (max(values) - min(values)) / statistics.median(values):.0f}%"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas_env = " ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ)
    return f"{cpu}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, {blas_env or 'OpenBLAS unpinned'}"


def git_revision() -> str:
    """This checkout's commit; the installed version outside a git checkout (a copy, an archive)."""
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        revision = ""
    if revision:
        return revision
    try:
        return f"{importlib.metadata.version('mflux-studio')} (not a git checkout)"
    except importlib.metadata.PackageNotFoundError:
        return "(not a git checkout)"


def run_worker(module: str, *args: str, env: dict | None = None) -> dict:
    """Run `python -m module *args` in its own process (so its memory is its own; `env`: its environment)
    and return the JSON it printed on its last `RESULT ` line, or {"error": the tail of its output}."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    results = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"error": "\n".join(tail)}
    return json.loads(results[-1])
