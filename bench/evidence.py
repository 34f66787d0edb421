"""Evidence bundle benchmark: export a payee's bundle of a million events, then verify it.

    residuals stack up                     # once
    python -m bench.evidence --events 1000000

In a fresh database of the local stack: a payee's month stored straight into the ledger
tables with batch signatures and proofs (:mod:`bench.payee_month`, COPY), the period
closed (``residuals finance close``), then, each in a fresh process measured on its own
(``wait4``: wall, CPU, peak RSS), ``residuals finance evidence --payee TAL-BENCH`` and
``residuals verify`` of the file it wrote; ``--whole`` also exports and verifies the whole
statement. Target (issue 17): the export streams in <= 1 GiB whatever the event count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.payee_month import PAYEE, store_payee_month
from residuals.platform.config import load
from residuals.stack import lifecycle
from residuals.stack.settings import StackSettings
from tests.support.payouts import migrated_database

TARGET_MIB = 1024
#: Runs ``python -m residuals`` and, at exit, writes the process's own peak RSS (VmHWM,
#: KiB) to $BENCH_PEAK_FILE. Not ``ru_maxrss`` from wait4: Linux carries the parent's
#: high-water mark into a forked child across exec, so it would report the benchmark's.
_LAUNCH = """
import atexit, os, runpy, sys

def peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(kib)

atexit.register(peak)
runpy.run_module("residuals", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Run:
    """A child process, measured on its own."""

    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    stdout: str

    def figures(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "peak_rss_mib": self.peak_rss_mib}


def run(args: list[str], env: dict[str, str], folder: Path) -> Run:
    """``python -m residuals ARGS`` in a fresh process: wall time, its own CPU (``wait4``)
    and its own peak RSS (see :data:`_LAUNCH`)."""
    out_path, err_path, peak_path = folder / "stdout", folder / "stderr", folder / "peak"
    env = {**env, "BENCH_PEAK_FILE": str(peak_path)}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, *args], stdout=out, stderr=err, env=env
        )
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    result = Run(
        exit_code=child.returncode,
        wall_s=round(wall, 2),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        peak_rss_mib=round(int(peak_path.read_text()) / 1024, 1),
        stdout=out_path.read_text(),
    )
    if result.exit_code not in (0, 1):
        sys.stderr.write(err_path.read_text())
        raise SystemExit(f"residuals {' '.join(args)} exited {result.exit_code}")
    return result


def export_and_verify(env: dict[str, str], folder: Path, payee: str | None) -> dict[str, Any]:
    """Export (the payee's part, or the whole statement) and verify it; the figures."""
    who = ["--payee", payee] if payee else []
    export = run(["finance", "evidence", "--period", "2026-10", *who, "--out", str(folder)],
                 env, folder)  # fmt: skip
    if export.exit_code:
        raise SystemExit(f"export failed: {export.stdout}")
    path = Path(export.stdout.splitlines()[0])
    verify = run(["verify", "--json", str(path)], env, folder)
    report = json.loads(verify.stdout)
    rows = report["counts"]["events"] + report["counts"]["dead_letters"]
    size = path.stat().st_size
    path.unlink()
    return {
        "export": {**export.figures(), "within_target": export.peak_rss_mib <= TARGET_MIB},
        "bundle_mib": round(size / 1048576, 1),
        "bundle_bytes_per_row": round(size / max(1, rows), 1),
        "counts": report["counts"],
        "verify": {**verify.figures(), "ok": report["ok"], "exit_code": verify.exit_code},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="the payee's events")
    parser.add_argument("--others", type=int, default=10_000, help="another talent's events")
    parser.add_argument("--whole", action="store_true", help="also the whole statement's bundle")
    args = parser.parse_args(argv)

    stack = load(StackSettings)
    if not lifecycle.health(stack).postgres.healthy:  # its own database gets every migration
        raise SystemExit("the local stack's PostgreSQL is not running: residuals stack up")
    with migrated_database(stack) as dsn, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        month = store_payee_month(dsn, args.events, args.others)
        stored_s = round(time.perf_counter() - started, 1)
        env = {**os.environ, "DATABASE_URL": dsn}
        close = run(["finance", "close", "--period", str(month.period)], env, folder)
        if close.exit_code:
            raise SystemExit(f"close failed: {close.stdout}")
        report: dict[str, Any] = {
            "events": month.events,
            "repeats": month.repeats,
            "other_talent_events": month.others,
            "store_s": stored_s,
            "close": close.figures(),
            "payee": export_and_verify(env, folder, PAYEE),
        }
        if args.whole:
            report["whole_statement"] = export_and_verify(env, folder, None)
    report["load_average_1m"] = round(os.getloadavg()[0], 2)
    report["benchmark_peak_rss_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    report["target"] = f"export peak RSS <= {TARGET_MIB} MiB (streaming)"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
