"""Counted store loops: a byte-loop memset with and without the bulk path.

Boots tests/guests/run_ahead.c (a byte-loop memset over a buffer, passes
times, the loop kvm-unit-tests' page allocator zeroes each allocation with,
under a periodic APIC timer; the second CPU halted) three ways in this
process: compiled with the bulk path and run-ahead (svmsim's default), with
the bulk path but no run-ahead (``Machine.ahead = False``), and with the
bulk path off (``codegen.BULK_LOOPS = False``: one compiled iteration at a
time).  Prints CPU seconds and M guest instructions per CPU second of each,
and checks that the three transcripts (where each timer interrupt landed,
the TSC), retired counts and virtual times are identical.  Usage:

    python3 bench/store_loop_bench.py [--bytes N] [--passes P] [--json]
"""
import argparse
import io
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from svmsim.cpu import codegen  # noqa: E402
from svmsim.machine import Machine  # noqa: E402


def run(kernel, args, bulk, ahead):
    codegen.BULK_LOOPS = bulk
    out = io.BytesIO()
    m = Machine(mem_size="256M", smp=2, serial_out=out)
    m.ahead = ahead
    m.load_kernel(str(kernel), args)
    t = time.process_time()
    r = m.run(max_insns=10 ** 10)
    cpu = time.process_time() - t
    return {"bulk": bulk, "run_ahead": ahead, "cpu_seconds": round(cpu, 3),
            "instructions": r.instructions, "mips_cpu": round(r.instructions / cpu / 1e6, 2),
            "virtual_ns": r.stats["virtual_ns"], "transcript": out.getvalue().decode(),
            "ok": "run_ahead: PASS" in out.getvalue().decode()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=16 << 20)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import guestbuild
    kernel = guestbuild.build_guest("run_ahead")
    args = f"bytes={a.bytes} passes={a.passes} period=1000000"
    rows = [run(kernel, args, True, True), run(kernel, args, True, False), run(kernel, args, False, True)]
    same = all((r["transcript"], r["instructions"], r["virtual_ns"]) ==
               (rows[0]["transcript"], rows[0]["instructions"], rows[0]["virtual_ns"]) for r in rows)
    for r in rows:
        del r["transcript"]
    if a.json:
        print(json.dumps({"rows": rows, "identical": same}, indent=1))
        return 0 if same and all(r["ok"] for r in rows) else 1
    print(f"byte-loop memset of {a.bytes} bytes x {a.passes} passes ({rows[0]['instructions']:,} instructions)")
    for r in rows:
        name = ("bulk" if r["bulk"] else "no bulk") + (" + run-ahead" if r["run_ahead"] and r["bulk"] else "")
        print(f"  {name:20s} {r['cpu_seconds']:8.2f} s CPU  {r['mips_cpu']:8.2f} M instr/s"
              f"  {'PASS' if r['ok'] else 'FAIL'}")
    print(f"  bulk + run-ahead vs no bulk: {rows[2]['cpu_seconds'] / rows[0]['cpu_seconds']:.1f}x;"
          f" identical transcripts, counts and virtual time: {'yes' if same else 'NO'}")
    return 0 if same and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
