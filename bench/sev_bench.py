"""SEV guest code and data: the encryption engine's data path, measured.

* ``engine``: the memory controller alone (svmsim.memory.encryption): 8-byte
  reads and writes through a guest's key slot, and page-sized transfers,
  per second;
* ``guest``: tests/guests/sev_work.S (loop.c's body on private data, then
  sweeps over a 64 KiB private buffer, then memset/memcpy rounds of REP
  STOSD/REP MOVSD over 64 KiB, all private: 32-bit, paging off)
  booted by the reference VMM (svmsim.vmm) as an SEV guest launched through
  the AMD-SP, next to the same guest without SEV, and - if
  qemu-system-x86_64 is installed - on QEMU TCG (not encrypted there).

Usage: ``python3 bench/sev_bench.py [--iters N] [--sweeps M] [--clears K] [--json]``
"""
import argparse
import io
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def engine_rates(seconds=1.0):
    """Accesses per second of the engine's read/write at 8 bytes and at 4 KiB."""
    from svmsim.memory.encryption import EncryptionEngine
    eng = EncryptionEngine(15)
    eng.load_key(3, bytes(range(16)))
    mem = bytearray(1 << 20)
    rd = lambda a, n: bytes(mem[a:a + n])                       # noqa: E731
    wr = lambda a, d: mem.__setitem__(slice(a, a + len(d)), d)  # noqa: E731
    out = {}
    for name, fn in (("read 8 B", lambda i: eng.read(rd, 0x1000 + (i * 8) % 0x8000, 8, 3)),
                     ("write 8 B", lambda i: eng.write(rd, wr, 0x1000 + (i * 8) % 0x8000, b"abcdefgh", 3)),
                     ("read 4 KiB", lambda i: eng.read(rd, 0x1000 * (1 + i % 64), 0x1000, 3)),
                     ("write 4 KiB", lambda i: eng.write(rd, wr, 0x1000 * (1 + i % 64), bytes(0x1000), 3))):
        n, t0 = 0, time.process_time()
        while time.process_time() - t0 < seconds:
            for i in range(n, n + 200):
                fn(i)
            n += 200
        out[name] = n / (time.process_time() - t0)
    return out


def svmsim_guest(kernel, sev):
    from svmsim.machine import Machine
    from svmsim.vmm import Vmm, launch_sev
    from svmsim.sev.crypto import GuestOwner
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    vmm = Vmm(m, asid=5)
    info = vmm.load_kernel(str(kernel))
    if sev:
        launch_sev(vmm, GuestOwner(policy=1), regions=[(info.load_addr, info.load_end - info.load_addr)])
    cpu = m.cpus[0]
    before, t0 = cpu.retired, time.process_time()
    r = vmm.run(max_insns=10 ** 10)
    secs = time.process_time() - t0
    insns = cpu.retired - before
    return {"engine": "svmsim" + (" SEV" if sev else " (no SEV)"), "instructions": insns, "seconds": secs,
            "mips": insns / secs / 1e6, "ok": r.reason.startswith("isa-debug-exit: guest wrote 0x0"),
            "output": out.getvalue().decode("latin-1")}


def qemu_guest(kernel):
    from svmsim.testing import qemu_available, qemu_command
    if not qemu_available():
        return None
    cmd = qemu_command(kernel)                 # the reference QEMU line the tests use
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=1800)
    return {"engine": "qemu tcg (no SEV)", "seconds": time.perf_counter() - t, "ok": p.returncode == 1,
            "output": p.stdout.decode("latin-1")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=100_000)
    ap.add_argument("--sweeps", type=int, default=4)
    ap.add_argument("--clears", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import guestbuild
    kernel = guestbuild.build_guest("sev_work", kind="asm",
                                    asflags=(f"-DITERS={a.iters}", f"-DSWEEPS={a.sweeps}",
                                            f"-DCLEARS={a.clears}"))
    res = {"engine": engine_rates(), "guest": [svmsim_guest(kernel, True), svmsim_guest(kernel, False)]}
    q = qemu_guest(kernel)
    if q is not None:
        q["instructions"] = res["guest"][1]["instructions"]   # the same binary and work
        q["mips"] = q["instructions"] / q["seconds"] / 1e6
        res["guest"].append(q)
    same = len({g["output"] for g in res["guest"]}) == 1
    if a.json:
        print(json.dumps(res | {"same_output": same}, indent=2))
        return 0
    print("encryption engine (one key slot, CPU s):")
    for k, v in res["engine"].items():
        print(f"  {k:<12} {v:>12,.0f} /s")
    print(f"{'guest':<20} {'insns':>12} {'s':>7} {'M insn/s':>9}  ok")
    for g in res["guest"]:
        print(f"{g['engine']:<20} {g['instructions']:>12,} {g['seconds']:>7.2f} {g['mips']:>9.2f}  "
              f"{'yes' if g['ok'] else 'NO'}")
    print(f"SEV / no SEV: {res['guest'][0]['seconds'] / res['guest'][1]['seconds']:.1f}x the time; "
          f"same output on every engine: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
