"""SVM benchmark: world-switch rate and guest-mode speed, svmsim vs QEMU TCG.

Boots tests/guests/svm_loop.c twice on each engine:

* ``exits=E iters=0``: E CPUID exits, each a VMRUN + #VMEXIT + a minimal
  handler in the hypervisor -> round trips per second;
* ``exits=0 iters=N``: the guest runs loop.c's 10-instruction body N times
  without an exit -> guest instructions per second.

QEMU's rate includes its start-up (~0.1 s), so give it enough work.  svmsim's
exit rate is also given per CPU second of the process (less disturbed by a
loaded machine than wall time), and with the boot (``exits=0 iters=0``,
booted and measured the same way) subtracted, as bench/smc_bench.py does:
the rate of the round trips themselves, compiling included.  Usage:
``python bench/svm_bench.py [--exits E] [--iters N] [--qemu-exits E] [--qemu-iters N] [--json]``
"""
import argparse
import io
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def svmsim_run(kernel, append):
    from svmsim.machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    m.load_kernel(str(kernel), append)
    cpu = time.process_time()
    r = m.run(timeout=1200)
    cpu = time.process_time() - cpu
    return r.wall_time, r.instructions, b"svm_loop: PASS" in out.getvalue(), cpu


def qemu_run(kernel, append):
    from svmsim.testing import qemu_available, qemu_command
    if not qemu_available():
        return None
    cmd = qemu_command(kernel, append)         # the reference QEMU line the tests use
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=1200)
    return time.perf_counter() - t, None, b"svm_loop: PASS" in p.stdout, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exits", type=int, default=100_000)
    ap.add_argument("--iters", type=int, default=300_000)
    ap.add_argument("--qemu-exits", type=int, default=2_000_000)
    ap.add_argument("--qemu-iters", type=int, default=100_000_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import guestbuild
    kernel = guestbuild.build_guest("svm_loop")
    rows = []
    for engine, runner, exits, iters in (("svmsim", svmsim_run, a.exits, a.iters),
                                         ("qemu tcg", qemu_run, a.qemu_exits, a.qemu_iters)):
        r1 = runner(kernel, f"exits={exits} iters=0")
        r2 = runner(kernel, f"exits=0 iters={iters}")
        if r1 is None:
            continue
        r0 = runner(kernel, "exits=0 iters=0")
        boot = r0[3] if r0[3] is not None else r0[0]        # CPU s for svmsim, wall for QEMU
        spent = (r1[3] if r1[3] is not None else r1[0]) - boot
        rows.append({"engine": engine, "exits": exits, "exit_seconds": r1[0],
                     "exits_per_s": exits / r1[0], "iters": iters, "loop_seconds": r2[0],
                     "guest_mips": 10 * iters / r2[0] / 1e6, "ok": r1[2] and r2[2],
                     "exits_per_cpu_s": exits / r1[3] if r1[3] else None,
                     "boot_seconds": boot, "exits_per_s_after_boot": exits / spent if spent > 0 else None})
    if len(rows) == 2:
        rows[1]["exit_ratio"] = rows[1]["exits_per_s"] / rows[0]["exits_per_s"]
        rows[1]["mips_ratio"] = rows[1]["guest_mips"] / rows[0]["guest_mips"]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'engine':<10} {'exits':>10} {'s':>7} {'exits/s':>10} {'(per CPU s)':>11} {'(no boot)':>10} "
          f"{'iters':>12} {'s':>7} {'guest M/s':>10}  ok")
    for r in rows:
        per_cpu = f"{r['exits_per_cpu_s']:>11,.0f}" if r["exits_per_cpu_s"] else " " * 11
        nb = r["exits_per_s_after_boot"]
        no_boot = f"{nb:>10,.0f}" if nb else " " * 10
        print(f"{r['engine']:<10} {r['exits']:>10,} {r['exit_seconds']:>7.2f} {r['exits_per_s']:>10,.0f} "
              f"{per_cpu} {no_boot} {r['iters']:>12,} {r['loop_seconds']:>7.2f} {r['guest_mips']:>10.2f}  "
              f"{'yes' if r['ok'] else 'NO'}")
    if len(rows) == 2:
        print(f"QEMU/svmsim: {rows[1]['exit_ratio']:.0f}x exits/s, {rows[1]['mips_ratio']:.0f}x guest instructions/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
