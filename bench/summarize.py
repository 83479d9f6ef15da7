"""Merges the benchmarks' JSON (bench/results/<name>.json) into ONE table: summary.json, summary.md and bench/RESULTS.md.

Usage (bench/run calls it):  python bench/summarize.py [--since UNIX_TIME] [--runs N] [--results-file PATH] [NAME ...]

NAME: the comparison benchmarks to merge (default: every results file with rows).
The Markdown holds the date, the machine (cores, CPU model), the comparison
table (figure, project, reference, ratio = project / reference, medians and
the min-max spread of the runs), then the memory, flood-isolation, soak and
fuzzing figures when those were measured in the same run (their files newer
than --since). It is written to bench/results/summary.md and, with
--results-file (bench/run gives bench/RESULTS.md after a whole run), between
the markers of that file; what stands around the markers is kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, machine

SPECIAL = ("summary", "fuzz", "flood", "memory", "soak")
BEGIN, END = "<!-- bench/summarize.py writes from here -->", "<!-- to here -->"


def number(value) -> str:
    if isinstance(value, (int, float)):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def spread_text(spread) -> tuple[str, str]:
    """(project spread, reference spread) as 'min–max' texts; benchmarks give a dict of pairs or one pair."""
    if isinstance(spread, dict):
        return tuple("–".join(number(v) for v in spread.get(side) or []) for side in ("project", "reference"))
    if isinstance(spread, (list, tuple)) and spread:
        return "–".join(number(v) for v in spread), ""
    return "", ""


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fresh(name: str, since: float) -> dict | None:
    path = RESULTS / f"{name}.json"
    if not path.exists() or path.stat().st_mtime < since:
        return None
    return json.loads(path.read_text())


def comparison_rows(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        data = load(name)
        if not data:
            continue
        for row in data.get("rows", []):
            project_spread, reference_spread = spread_text(row.get("spread"))
            rows.append({"benchmark": name, "figure": row["figure"], "project": row["project"], "reference": row["reference"],
                         "ratio": row["ratio"], "project_spread": project_spread, "reference_spread": reference_spread,
                         "unit": row.get("unit", "")})
    return rows


def markdown(summary: dict) -> str:
    lines = [f"Measured {summary['date']} on {summary['machine']}, loopback, {summary['runs']} alternated runs per comparison "
             "(medians; min–max of the runs in brackets; ratio = project / reference).", ""]
    lines += ["| benchmark | figure | greenservers | reference | ratio |", "|---|---|---|---|---|"]
    for row in summary["rows"]:
        project = row["project"] + (f" ({row['project_spread']})" if row["project_spread"] else "")
        reference = row["reference"] + (f" ({row['reference_spread']})" if row["reference_spread"] else "")
        lines.append(f"| {row['benchmark']} | {row['figure']} | {project} | {reference} | {row['ratio']} |")
    memory = summary.get("memory")
    if memory:
        lines += ["", "Resident memory of the worker (all services on), the other services' latency while the address book is indexed "
                  "and changed, and the time from a change to LDAP:",
                  "", "| state | RSS | meanwhile: worst p99 (max) of http, snmp, tftp, ntp; lost |", "|---|---|---|"]
        lines += [f"| {row['state']} | {row['rss_mb']:.1f} MiB | {meanwhile(row)} |" for row in memory["rows"]]
    flood = summary.get("flood")
    if flood:
        lines += ["", f"Flood isolation: p99 latency and lost answers of a legitimate client of each other service "
                  f"(target: p99 < {flood['target_p99_ms']} ms, nothing lost):", "",
                  "| flood | " + " | ".join(flood["services"]) + " |", "|---" * (len(flood["services"]) + 1) + "|"]
        for case in flood["cases"]:
            cells = []
            for service in flood["services"]:
                probe = case["probes"].get(service)
                own = " (flooded itself, not judged)" if service == case.get("flooded") else ""
                cells.append("—" if probe is None else f"{probe['p99_ms']:.1f} ms, {probe['lost']} lost{own}")
            target = case.get("target_p99_ms", flood["target_p99_ms"])
            label = case["flood"] + (f" (target p99 < {target:.0f} ms)" if target != flood["target_p99_ms"] else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for case in flood["cases"]:
            if "reply_bytes" in case:
                lines += ["", f"{case['flood']}: {case['reply_bytes']:,} bytes came back to the flooding sources for "
                              f"{case['request_bytes']:,} sent (x{case['reply_bytes'] / max(1, case['request_bytes']):.4f})."]
    soak = summary.get("soak")
    if soak:
        lines += ["", f"Soak: {soak['minutes']} min of mixed traffic from the real clients ({soak['requests']:,} requests, "
                  f"{soak['failures']} failed): RSS {soak['rss_start_mb']:.1f} → {soak['rss_end_mb']:.1f} MiB "
                  f"({soak['rss_growth_pct']:+.1f} %), open fds {soak['fds_start']} → {soak['fds_end']} (max {soak['fds_max']}), "
                  f"unexpected log lines: {soak['unexpected_log_lines']}."]
    fuzz = summary.get("fuzz")
    if fuzz:
        parts = [f"{t['target']} {t['inputs']:,}" + ("" if t["verdict"] == "ok" else f" {t['verdict']}") for t in fuzz["targets"]]
        lines += ["", "Fuzzing (atheris, inputs per target, no crash, hang or memory growth unless noted): " + ", ".join(parts) + "."]
    return "\n".join(lines) + "\n"


def meanwhile(row: dict) -> str:
    if "visible_median_ms" in row:
        return f"the change found over LDAP after {row['visible_median_ms']} ms (median), {row['visible_max_ms']} ms at most"
    probes = row.get("other_services_meanwhile")
    if not probes:
        return ""
    worst = max(probes.values(), key=lambda probe: probe["p99_ms"])
    lost = sum(probe["lost"] for probe in probes.values())
    drops = row.get("keepalive_dropped")
    idle = row.get("keepalive_dropped_idle_s")
    dropped = (f"; the API's keep-alive connection closed without an answer {drops}x"
               + (f" (after {min(idle):g}-{max(idle):g} s idle)" if idle else "")) if drops else ""
    return f"{worst['p99_ms']:.1f} ms ({max(p['max_ms'] for p in probes.values()):.1f} ms); {lost} lost, during {row['seconds']} s{dropped}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*")
    parser.add_argument("--since", type=float, default=0.0)
    parser.add_argument("--runs", default="5")
    parser.add_argument("--results-file", type=Path, help="a Markdown file whose marked part is replaced (bench/RESULTS.md)")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in RESULTS.glob("*.json") if p.stem not in SPECIAL)
    summary = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "runs": args.runs, "rows": comparison_rows(names)}
    for extra in ("memory", "flood", "soak", "fuzz"):
        data = fresh(extra, args.since)
        if data:
            summary[extra] = data
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    (RESULTS / "summary.md").write_text(text)
    if args.results_file:
        write_between_markers(args.results_file, text)
    print("\n" + text)


def write_between_markers(path: Path, text: str) -> None:
    """Replace what stands between BEGIN and END in `path` with `text`."""
    document = path.read_text()
    head, found, rest = document.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to write between")
    path.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


if __name__ == "__main__":
    main()
