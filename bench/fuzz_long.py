#!/usr/bin/env python3
"""The long fuzzing pass: every protocol core and the port/settings parsers under atheris (libFuzzer, coverage-guided).

Usage:  bench/fuzz_long.py [TARGET ...] [--count N] [--max-len BYTES] [--rss-mb MB] [--timeout S]
        TARGET: snmp, tftp, ber, ldap, ntp, settings (default: all); --count is per target (default 1,000,000).

The targets and their seed corpora (real-client traffic) are tests/support/fuzz_targets.py,
the same the short pass in tests/core/test_fuzz.py runs under hypothesis. Each target
runs in its own process with libFuzzer's limits: -timeout (a hang is an input
slower than that), -rss_limit_mb (memory must stay bounded), -runs (the count).
A crash leaves crash-<sha1> under bench/results/fuzz/<target>/ and a non-zero
exit; turn it into a regression vector in tests/vectors/fuzz_regressions.py.
Results (inputs, seconds, exec/s, verdict per target): bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "fuzz"
sys.path.insert(0, str(REPO / "tests"))


def run_one(name: str, count: int, max_len: int, rss_mb: int, timeout: int) -> dict:
    """Fuzz one target in this process (atheris.Fuzz never returns: libFuzzer exits)."""
    import atheris

    with atheris.instrument_imports(include=["greenservers"]):
        from support import fuzz_targets
    target = fuzz_targets.TARGETS[name]
    corpus = OUT / name / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(fuzz_targets.seeds().get(name, [])):
        (corpus / f"seed-{index}").write_bytes(seed)
    argv = [sys.argv[0], f"-runs={count}", f"-max_len={max_len}", f"-rss_limit_mb={rss_mb}", f"-timeout={timeout}",
            f"-artifact_prefix={OUT / name}/", "-print_final_stats=1", str(corpus)]
    atheris.Setup(argv, target)
    atheris.Fuzz()


def available_targets() -> list[str]:
    from support import fuzz_targets
    return list(fuzz_targets.TARGETS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*")
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--rss-mb", type=int, default=1024)
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(args.targets[0], args.count, args.max_len, args.rss_mb, args.timeout)
        return 0
    names = args.targets or available_targets()
    unknown = set(names) - set(available_targets())
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}; known: {', '.join(available_targets())}")
    results, failed = [], False
    for name in names:
        (OUT / name).mkdir(parents=True, exist_ok=True)
        log_path = OUT / name / "fuzz.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, __file__, "--child", name, f"--count={args.count}", f"--max-len={args.max_len}",
                                   f"--rss-mb={args.rss_mb}", f"--timeout={args.timeout}"], stdout=log, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - started
        text = log_path.read_text(errors="replace")
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
        peak = re.findall(r"stat::peak_rss_mb:\s*(\d+)", text)
        inputs = int(runs[-1]) if runs else 0
        verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log_path})"
        failed |= proc.returncode != 0
        row = {"target": name, "inputs": inputs, "seconds": round(seconds, 1), "exec_per_s": round(inputs / seconds) if seconds else 0,
               "peak_rss_mb": int(peak[-1]) if peak else None, "verdict": verdict}
        results.append(row)
        print(
            f"{name:10} {inputs:>10} inputs {seconds:8.1f} s {row['exec_per_s']:>7}/s peak {row['peak_rss_mb']} MB  {verdict}", flush=True
        )
        if proc.returncode != 0:
            print("\n".join(text.splitlines()[-40:]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    summary = OUT.parent / "fuzz.json"
    earlier = json.loads(summary.read_text())["targets"] if summary.exists() else []
    merged = {row["target"]: row for row in earlier + results}  # a run of some targets keeps the others' last results
    summary.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "targets": list(merged.values())}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
