"""Realistic code, svmsim next to QEMU TCG: tests/guests/workload.c phase by phase.

Each phase (page-table construction, calls and returns, REP STOSQ, REP MOVSQ,
local-APIC MMIO, UART output, a loop whose counter shares its code page, the
same loop with the counter elsewhere, self-modifying code) is booted on its
own, with a large count on QEMU and a smaller one on svmsim.  The boot itself
is measured too (``pt=0``: no phase runs) and subtracted from both engines,
so a rate is (instructions of the phase) / (seconds of the phase).

svmsim counts retired instructions; QEMU does not, so its instruction count
is svmsim's count for the phase scaled by the ratio of the two counts (every
phase is linear in its count, and both run the same binary).  REP STOS/MOVS
phases also report bytes per second.  Usage:

    python3 bench/workload_bench.py [--phases pt,calls,...] [--scale F] [--no-qemu] [--json]
"""
import argparse
import json
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from runs import qemu_run, svmsim_run  # noqa: E402 (bench/)

BUF = 64 << 10
# phase: (svmsim count, QEMU count, extra arguments, bytes per count or 0)
PHASES = {
    "pt": (1, 30, "mib=4096", 0),
    "calls": (300, 30_000, "", 0),
    "stos": (2_000, 200_000, "", BUF),
    "movs": (2_000, 200_000, "", BUF),
    "apic": (50_000, 3_000_000, "", 0),
    "uart": (3_000, 100_000, "", 0),
    "near": (1_000_000, 3_000_000, "", 0),
    "far": (1_000_000, 100_000_000, "", 0),
    "smc": (100_000, 100_000, "", 0),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--profile", metavar="PREFIX", help="cProfile each svmsim phase to PREFIX-<phase>.prof")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from guestbuild import build_guest
    kernel = build_guest("workload")
    phases = [p for p in a.phases.split(",") if p]
    for p in phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r} (phases: {', '.join(PHASES)})")

    boot_s = svmsim_run(kernel, "pt=0")
    boot_q = None if a.no_qemu else qemu_run(kernel, "pt=0")
    rows = []
    for p in phases:
        n_s, n_q, extra, nbytes = PHASES[p]
        n_s = max(1, int(n_s * a.scale))
        n_q = max(1, int(n_q * a.scale))
        prof = f"{a.profile}-{p}.prof" if a.profile else None
        run = svmsim_run(kernel, f"{p}={n_s} {extra}".strip(), profile=prof)
        ok, out = run.ok, run.out
        secs = run.wall - boot_s.wall
        phase_insns = run.insns - boot_s.insns
        row = {"phase": p, "svmsim_count": n_s, "svmsim_seconds": secs, "instructions": phase_insns,
               "svmsim_mips": phase_insns / secs / 1e6, "ok": ok}
        if nbytes:
            row["svmsim_mb_s"] = n_s * nbytes / secs / 1e6
        if boot_q is not None:
            tq, _, okq, outq = qemu_run(kernel, f"{p}={n_q} {extra}".strip())
            qsecs = max(tq - boot_q.wall, 1e-3)
            row.update({"qemu_count": n_q, "qemu_seconds": qsecs,
                        "qemu_mips": phase_insns * n_q / n_s / qsecs / 1e6, "qemu_ok": okq})
            if nbytes:
                row["qemu_mb_s"] = n_q * nbytes / qsecs / 1e6
            row["ratio"] = row["qemu_mips"] / row["svmsim_mips"]
            # The phase's checksum line must match (same work at the same count).
            if n_q == n_s:
                row["ok"] = ok and okq and out == outq
        rows.append(row)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.json:
        print(json.dumps({"boot_seconds": boot_s.wall, "rows": rows, "peak_rss_mib": rss}, indent=2))
        return 0
    print(f"{'phase':<7} {'count':>9} {'insns':>12} {'s':>7} {'M insn/s':>9} {'MB/s':>7} | "
          f"{'QEMU count':>11} {'s':>6} {'M insn/s':>9} {'MB/s':>7} {'QEMU/svmsim':>11}  ok")
    for r in rows:
        mb = f"{r['svmsim_mb_s']:7.0f}" if "svmsim_mb_s" in r else " " * 7
        line = (f"{r['phase']:<7} {r['svmsim_count']:>9,} {r['instructions']:>12,} {r['svmsim_seconds']:>7.2f} "
                f"{r['svmsim_mips']:>9.2f} {mb} | ")
        if "qemu_mips" in r:
            qmb = f"{r['qemu_mb_s']:7.0f}" if "qemu_mb_s" in r else " " * 7
            line += (f"{r['qemu_count']:>11,} {r['qemu_seconds']:>6.2f} {r['qemu_mips']:>9.1f} {qmb} "
                     f"{r['ratio']:>10.0f}x")
        else:
            line += " " * 50
        print(line + f"  {'yes' if r['ok'] else 'NO'}")
    print(f"boot (subtracted): svmsim {boot_s.wall:.2f} s" + (f", QEMU {boot_q.wall:.2f} s" if boot_q else ""))
    print(f"peak RSS: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
