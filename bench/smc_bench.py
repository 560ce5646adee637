"""Code and data on one page, and self-modifying code: svmsim next to QEMU TCG.

Boots tests/guests/smc.c once per phase (issue 14, item 3):

* ``near`` / ``far``: a loop whose counter shares its code page, and the same
  loop with the counter on a page holding no code.  Target: near within 2x of far.
* ``smc`` / ``smcref``: a loop that stores into the immediate of the
  instruction it executes next, and the same loop storing to a data page
  and reading the value from there.  Target: smc within 5x of smcref.
* ``flip`` / ``flipref``: a loop that rewrites the opcode of the next
  instruction every iteration (ADD <-> SUB), and the same loop storing the
  byte to a data page.  Target: flip within 5x of flipref (the engine swaps
  kept versions of the rewritten block, engine.py ``_revive``).

The boot (``near=0``: no phase runs) is measured too and subtracted, so a
rate is (instructions of the phase) / (seconds of the phase).  svmsim counts
retired instructions; QEMU does not, so its count is svmsim's for the phase
scaled by the ratio of the iteration counts (every phase is linear in its
count, and both run the same binary).  svmsim is timed by wall clock and by
its process's CPU time; QEMU by wall clock and its child CPU time; the
ratios use CPU time (the project machine is shared).  Usage:

    python3 bench/smc_bench.py [--phases near,far,...] [--scale F] [--no-qemu] [--json]
"""
import argparse
import json
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from runs import qemu_run, svmsim_run  # noqa: E402 (bench/)

# phase: (svmsim count, QEMU count)
PHASES = {
    "near": (1_000_000, 3_000_000),
    "far": (1_000_000, 100_000_000),
    "smc": (200_000, 200_000),
    "smcref": (1_000_000, 100_000_000),
    "flip": (100_000, 100_000),
    "flipref": (1_000_000, 100_000_000),
}
PAIRS = (("near", "far", 2), ("smc", "smcref", 5), ("flip", "flipref", 5))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from guestbuild import build_guest
    kernel = build_guest("smc")
    phases = [p for p in a.phases.split(",") if p]
    for p in phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r} (phases: {', '.join(PHASES)})")

    boot_s = svmsim_run(kernel, "near=0")
    boot_q = None if a.no_qemu else qemu_run(kernel, "near=0")
    rows = {}
    for p in phases:
        n_s, n_q = (max(1, int(n * a.scale)) for n in PHASES[p])
        wall, cpu, insns, ok, out, stats = svmsim_run(kernel, f"{p}={n_s}")
        insns -= boot_s.insns
        wall, cpu = wall - boot_s.wall, cpu - boot_s.cpu
        row = {"phase": p, "svmsim_count": n_s, "instructions": insns, "svmsim_wall": wall,
               "svmsim_cpu": cpu, "svmsim_mips": insns / cpu / 1e6,
               "svmsim_mips_wall": insns / wall / 1e6, "ok": ok, "stats": stats}
        if boot_q is not None:
            qw, qc, okq, outq = qemu_run(kernel, f"{p}={n_q}")
            qw, qc = max(qw - boot_q.wall, 1e-3), max(qc - boot_q.cpu, 1e-3)
            q_insns = insns * n_q / n_s
            row.update({"qemu_count": n_q, "qemu_wall": qw, "qemu_cpu": qc,
                        "qemu_mips": q_insns / qc / 1e6, "qemu_mips_wall": q_insns / qw / 1e6,
                        "qemu_ok": okq})
            if n_q == n_s:
                row["ok"] = ok and okq and out == outq
        rows[p] = row
    ratios = []
    for slow, fast, target in PAIRS:
        if slow in rows and fast in rows:
            r = {"pair": f"{slow}/{fast}", "target": target,
                 "svmsim": rows[fast]["svmsim_mips"] / rows[slow]["svmsim_mips"]}
            if "qemu_mips" in rows[slow] and "qemu_mips" in rows[fast]:
                r["qemu"] = rows[fast]["qemu_mips"] / rows[slow]["qemu_mips"]
            ratios.append(r)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.json:
        print(json.dumps({"boot": [boot_s.wall, boot_s.cpu], "rows": list(rows.values()), "ratios": ratios,
                          "peak_rss_mib": rss}, indent=2))
        return 0
    print(f"{'phase':<8} {'count':>9} {'insns':>11} {'cpu s':>6} {'M/s cpu':>8} {'M/s wall':>8} "
          f"{'dropped':>8} | {'QEMU count':>11} {'cpu s':>6} {'M/s cpu':>8} {'M/s wall':>8}  ok")
    for r in rows.values():
        line = (f"{r['phase']:<8} {r['svmsim_count']:>9,} {r['instructions']:>11,} {r['svmsim_cpu']:>6.2f} "
                f"{r['svmsim_mips']:>8.2f} {r['svmsim_mips_wall']:>8.2f} "
                f"{r['stats']['blocks_invalidated']:>8,} | ")
        if "qemu_mips" in r:
            line += (f"{r['qemu_count']:>11,} {r['qemu_cpu']:>6.2f} {r['qemu_mips']:>8.1f} "
                     f"{r['qemu_mips_wall']:>8.1f}")
        else:
            line += " " * 37
        print(line + f"  {'yes' if r['ok'] else 'NO'}")
    for r in ratios:
        tgt = f" (target <= {r['target']}x: {'met' if r['svmsim'] <= r['target'] else 'NOT met'})" \
            if r["target"] else ""
        q = f", QEMU TCG {r['qemu']:.1f}x" if "qemu" in r else ""
        print(f"{r['pair']}: svmsim {r['svmsim']:.2f}x slower{tgt}{q}")
    print(f"boot (subtracted): svmsim {boot_s.wall:.2f} s" + (f", QEMU {boot_q.wall:.2f} s" if boot_q else ""))
    print(f"peak RSS: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
