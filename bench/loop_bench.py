"""Guest instructions per second on the 10-instruction benchmark loop.

Two workloads:

* ``raw``: the loop of tests/guests/loop.c assembled on its own and run on
  a bare 64-bit CPU (tests/cpuharness.py), in quanta of 1000 instructions
  as Machine.run does - no boot needed;
* ``kernel``: the Multiboot kernel tests/guests/loop.c (``iters=N`` on its
  command line) booted by ``svmsim.machine.Machine``, and, if
  qemu-system-x86_64 is installed, the same kernel under QEMU TCG with a
  larger N for comparison.

Each svmsim run is done with the tier-2 compiler on (the default) and off
(``--no-interp`` skips the latter).  Usage:

    python3 bench/loop_bench.py [--mode raw|kernel|all] [--iters N]
                                [--qemu-iters N] [--json]
"""
import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

LOOP_ASM = """
xor edx, edx
1:
mov rax, [rsi]
add rax, rcx
xor rax, rdx
mov [rsi], rax
add [rsi+8], rax
mov rdx, [rsi+8]
xor rdx, rcx
add rdx, 0x5bd1e995
dec rcx
jnz 1b
hlt
"""
NEVER = 10 ** 15          # a hot threshold no block reaches: interpreter only


def checksum(n):
    """What loop.c prints, recomputed (as tests/test_guests_qemu.py does)."""
    m = (1 << 64) - 1
    m0 = m1 = 0
    rdx = 0
    for c in range(n, 0, -1):
        rax = ((m0 + c) & m) ^ rdx
        m0 = rax
        m1 = (m1 + rax) & m
        rdx = ((m1 ^ c) + 0x5BD1E995) & m
    return m0 ^ m1


def run_raw(iters, compiled=True, quantum=1000):
    from cpuharness import make_machine, asm, CODE_ADDR, DATA_ADDR
    m = make_machine("long64")
    cpu = m.cpus[0]
    if not compiled:
        m.engine.hot_threshold = NEVER
    m.bus.write_bytes(CODE_ADDR, asm(LOOP_ASM))
    cpu.rip = CODE_ADDR
    cpu.regs[1], cpu.regs[6] = iters, DATA_ADDR
    hlt = CODE_ADDR + len(asm(LOOP_ASM)) - 1
    done = 0
    start = time.perf_counter()
    while cpu.rip != hlt and not m.stopping:
        n = m.engine.run(cpu, quantum)
        done += n
        if n == 0:
            break
    wall = time.perf_counter() - start
    ok = cpu.rip == hlt and (m.bus.read(DATA_ADDR, 8) ^ m.bus.read(DATA_ADDR + 8, 8)) == checksum(iters)
    return {"workload": "raw loop", "engine": "svmsim" + ("" if compiled else " (interpreter)"),
            "iters": iters, "instructions": done, "seconds": wall,
            "mips": done / wall / 1e6 if wall else 0.0, "ok": ok,
            "compiled_blocks": m.engine.stats.get("blocks_compiled", 0)}


def run_kernel(path, iters, compiled=True, timeout=600):
    from svmsim.machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    if not compiled:
        m.engine.hot_threshold = NEVER
    m.load_kernel(str(path), f"iters={iters}")
    r = m.run(timeout=timeout)
    text = out.getvalue().decode("latin-1")
    ok = f"checksum=0x{checksum(iters):016x}" in text
    return {"workload": "loop kernel", "engine": "svmsim" + ("" if compiled else " (interpreter)"),
            "iters": iters, "instructions": r.instructions, "seconds": r.wall_time,
            "mips": r.instructions / r.wall_time / 1e6 if r.wall_time else 0.0, "ok": ok,
            "status": r.reason, "compiled_blocks": r.stats.get("engine", {}).get("blocks_compiled", 0)}


def run_qemu(path, iters, timeout=600):
    from svmsim.testing import qemu_available, qemu_command
    if not qemu_available():
        return None
    cmd = qemu_command(path, f"iters={iters}")  # the reference QEMU line the tests use
    start = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    wall = time.perf_counter() - start
    ok = f"checksum=0x{checksum(iters):016x}".encode() in p.stdout
    insns = 10 * iters                   # the loop body dominates; boot is negligible
    return {"workload": "loop kernel", "engine": "qemu tcg", "iters": iters, "instructions": insns,
            "seconds": wall, "mips": insns / wall / 1e6, "ok": ok, "status": f"exit {p.returncode}"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("raw", "kernel", "all"), default="all")
    ap.add_argument("--iters", type=int, default=300_000, help="loop iterations on svmsim")
    ap.add_argument("--interp-iters", type=int, default=30_000, help="iterations for the interpreter-only runs")
    ap.add_argument("--qemu-iters", type=int, default=200_000_000, help="loop iterations under QEMU")
    ap.add_argument("--no-interp", action="store_true", help="skip the interpreter-only runs")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    a = ap.parse_args(argv)

    rows = []
    if a.mode in ("raw", "all"):
        rows.append(run_raw(a.iters))
        if not a.no_interp:
            rows.append(run_raw(a.interp_iters, compiled=False))
    if a.mode in ("kernel", "all"):
        from guestbuild import build_guest
        path = build_guest("loop")
        k = run_kernel(path, a.iters)
        rows.append(k)
        if k["ok"] and not a.no_interp:
            rows.append(run_kernel(path, a.interp_iters, compiled=False))
        q = None if a.no_qemu else run_qemu(path, a.qemu_iters)
        if q is not None:
            rows.append(q)
            if k["ok"] and k["mips"]:
                q["ratio_vs_svmsim"] = q["mips"] / k["mips"]
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if a.json:
        print(json.dumps({"results": rows, "peak_rss_mib": rss_kib / 1024}, indent=2))
        return 0
    print(f"{'workload':<12} {'engine':<24} {'iters':>11} {'insns':>12} {'seconds':>8} {'M insn/s':>9}  ok  note")
    for r in rows:
        note = r.get("status", "")
        if "ratio_vs_svmsim" in r:
            note += f"  ({r['ratio_vs_svmsim']:.0f}x svmsim)"
        print(f"{r['workload']:<12} {r['engine']:<24} {r['iters']:>11,} {r['instructions']:>12,} "
              f"{r['seconds']:>8.2f} {r['mips']:>9.2f}  {'yes' if r['ok'] else 'NO ':<3} {note}")
    print(f"peak RSS: {rss_kib / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
