"""Page-table construction benchmark: M guest instructions/s, svmsim vs QEMU TCG.

Boots tests/guests/pt_build.c, which builds 4-level page tables identity-
mapping ``gib`` GiB with 4 KiB pages the way kvm-unit-tests' setup_mmu does
before every SVM subtest (a call per page, a walk from the top, zeroed
tables from a byte-loop memset), ``reps`` times, then switches CR3 to them
and back (issue 14, item 2).

svmsim counts the instructions; QEMU runs the same deterministic kernel
with more repetitions, so its rate is svmsim's instructions per repetition
times its repetitions over its wall time (start-up included, ~0.1 s: give
it enough work).  svmsim's rate is also given per CPU second of the
process, which a loaded machine disturbs less than wall time.  Usage:

    python3 bench/pt_bench.py [--gib N] [--reps R] [--qemu-reps R] [--json]
"""
import argparse
import json
import os
import re
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from runs import qemu_run, svmsim_run  # noqa: E402 (bench/)


def _checksum(text):
    m = re.search(r"checksum=(0x[0-9a-f]+)", text)
    return m.group(1) if m else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--qemu-reps", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import guestbuild
    kernel = guestbuild.build_guest("pt_build")
    wall, cpu, insns, _, out, _ = svmsim_run(kernel, f"gib={a.gib} reps={a.reps}")
    out = out.decode(errors="replace")
    rows = [{"engine": "svmsim", "gib": a.gib, "reps": a.reps, "instructions": insns,
             "seconds": wall, "cpu_seconds": cpu, "mips": insns / wall / 1e6,
             "mips_cpu": insns / cpu / 1e6, "ok": "pt_build: PASS" in out,
             "checksum": _checksum(out),
             "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}]
    q = qemu_run(kernel, f"gib={a.gib} reps={a.qemu_reps}")
    if q is not None:
        qwall, qout = q.wall, q.out.decode(errors="replace")
        qinsns = insns * a.qemu_reps / a.reps           # the same kernel, deterministic
        rows.append({"engine": "qemu tcg", "gib": a.gib, "reps": a.qemu_reps,
                     "instructions": int(qinsns), "seconds": qwall, "mips": qinsns / qwall / 1e6,
                     "ok": "pt_build: PASS" in qout, "checksum": _checksum(qout)})
        rows[1]["ratio"] = rows[1]["mips"] / rows[0]["mips"]
        rows[1]["same_tables"] = rows[1]["checksum"] == rows[0]["checksum"]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'engine':<9} {'GiB':>4} {'reps':>5} {'M instr':>9} {'s':>7} {'M instr/s':>10} "
          f"{'(per CPU s)':>11}  ok")
    for r in rows:
        per_cpu = f"{r['mips_cpu']:>11.2f}" if "mips_cpu" in r else " " * 11
        print(f"{r['engine']:<9} {r['gib']:>4} {r['reps']:>5} {r['instructions'] / 1e6:>9.1f} "
              f"{r['seconds']:>7.2f} {r['mips']:>10.2f} {per_cpu}  {'yes' if r['ok'] else 'NO'}")
    if len(rows) == 2:
        print(f"QEMU/svmsim: {rows[1]['ratio']:.0f}x; same tables (checksum): "
              f"{'yes' if rows[1]['same_tables'] else 'NO'}; "
              f"svmsim peak RSS {rows[0]['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
