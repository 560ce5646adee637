"""Two slow paths of kvm-unit-tests' long SVM subtests, as machine code:

* ``insb``: reg_corruption's guest loop (``mov dx, 4D0h; lea rdi, [var];
  mov byte [var], 0AAh; insb``; here with a counter) in a 64-bit guest with
  nested paging and a zeroed IOPM (no IOIO exit): CPU microseconds per
  iteration;
* ``gp``: RDMSR and WRMSR of an MSR that does not exist in 64-bit host mode,
  each a #GP whose handler steps over the instruction and IRETQs (what
  msr_intercept_check's ``rdmsr_safe``/``wrmsr_safe`` cost on every other
  round trip): CPU microseconds per #GP + IRETQ.

The harnesses are the tests' (tests/test_string_io_probe.py,
tests/test_event_delivery_reads.py).  Usage:
``python3 bench/exit_paths_bench.py [--insb N] [--gp N] [--json]``;
for host-instruction counts run it under cachegrind with two sizes and take
the difference (docs/PERFORMANCE.md).
"""
import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def insb_loop(n):
    from test_svm_npt import npt_rig
    from svmsim.svm.exits import ExitCode
    guest = f"""
        mov ebx, {n}
    1:  mov dx, 0x4d0
        lea rdi, [rip + 2f]
        mov byte ptr [rdi], 0xaa
        insb
        dec ebx
        jnz 1b
        vmmcall
    2:  .byte 0
    """
    r = npt_rig(guest, intercepts=(ExitCode.VMMCALL,))
    t = time.process_time()
    r.run(max_insns=10 * n + 1000)
    t = time.process_time() - t
    assert r.exitcode == ExitCode.VMMCALL, r.exitcode
    return t


def gp_loop(n):
    import test_event_delivery_reads as ev
    from cpuharness import make_machine, asm, CODE_ADDR
    m = make_machine("long64")
    cpu = m.cpus[0]
    ev._idt(m.bus)
    cpu.idtr_base, cpu.idtr_limit = ev.IDT, 16 * 256 - 1
    m.bus.write_bytes(CODE_ADDR, asm(ev.LOOP.replace("150", str(n))) + b"\xf4")
    cpu.rip = CODE_ADDR
    t = time.process_time()
    while not cpu.halted:
        m.engine.run(cpu, 100_000)
    t = time.process_time() - t
    assert cpu.regs[15] == 2 * n
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--insb", type=int, default=50_000, help="INSB loop iterations (0: skip)")
    ap.add_argument("--gp", type=int, default=10_000, help="RDMSR+WRMSR pairs, two #GPs each (0: skip)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = {}
    if a.insb:
        out["insb_us_per_iteration"] = round(insb_loop(a.insb) / a.insb * 1e6, 2)
    if a.gp:
        out["gp_iretq_us_each"] = round(gp_loop(a.gp) / (2 * a.gp) * 1e6, 2)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
