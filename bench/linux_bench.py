"""Linux boot benchmark (issue 16): instructions and wall time from reset to
the first line of init, svmsim bare, svmsim as a guest of the reference VMM
(nested paging), and QEMU TCG.

The workload is tests/linuxbuild.py's kernel and initramfs (built with
SVMSIM_BUILD_LINUX=1 if not cached).  Each engine stops when the console
shows init's first line.  Beside wall time, each row gives the CPU time the
process used (on a loaded machine the wall time mostly measures the load).
QEMU counts no instructions (TCG); its times include its start-up and SeaBIOS.

Usage: ``python bench/linux_bench.py [--skip-guest] [--skip-sev] [--json]``
"""
import argparse
import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]            # svmsim from this tree

FIRST_LINE = b"init: hello from user space"


class _StopAtLine:
    """A serial sink that ends the run when init's first line appears."""

    def __init__(self, machine_ref):
        self.buf = bytearray()
        self.machine_ref = machine_ref
        self.at = None                      # (instructions, wall s, CPU s) when seen
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()

    def write(self, b):
        self.buf += b
        m = self.machine_ref()
        if self.at is None and FIRST_LINE in self.buf and m is not None:
            cpu = m.cpus[0]
            self.at = (sum(c.retired for c in m.cpus) + cpu.q_exec, time.perf_counter() - self.t0,
                       time.process_time() - self.c0)
            m.request_stop(0, "init's first line", "bench")
        return len(b)

    def flush(self):
        pass


def svmsim_bare(kernel, initrd, append):
    from svmsim.machine import Machine
    box = {}
    sink = _StopAtLine(lambda: box.get("m"))
    m = box["m"] = Machine(mem_size="128M", serial_out=sink)
    m.load_kernel(str(kernel), append, initrd=str(initrd))
    sink.t0, sink.c0 = time.perf_counter(), time.process_time()
    r = m.run(timeout=3600)
    return sink.at, r.reason


def svmsim_guest(kernel, initrd, append, sev=False):
    from svmsim.machine import Machine
    from svmsim.vmm import Vmm
    from svmsim.vmm.linux import load_linux, launch_linux_sev
    box = {}
    sink = _StopAtLine(lambda: box.get("m"))
    # as tests/test_linux.py: an SEV guest also gets room for its 64 MiB of swiotlb
    m = box["m"] = Machine(mem_size="320M", serial_out=sink)
    vmm = Vmm(m, guest_mem=(192 if sev else 128) << 20, asid=5 if sev else 1)
    load_linux(vmm, str(kernel), append, str(initrd))
    if sev:
        launch_linux_sev(vmm)
    sink.t0, sink.c0 = time.perf_counter(), time.process_time()
    r = vmm.run(max_insns=2_000_000_000)
    return sink.at, r.reason


def qemu(kernel, initrd, append, cpu):
    exe = shutil.which("qemu-system-x86_64")
    if exe is None:
        return None, "no qemu-system-x86_64"
    cmd = [exe, "-accel", "tcg", "-cpu", cpu, "-m", "128M", "-kernel", str(kernel), "-initrd",
           str(initrd), "-append", append, "-nodefaults", "-serial", "stdio", "-display", "none",
           "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    t0 = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    try:
        while FIRST_LINE not in buf:
            chunk = p.stdout.read1(4096)
            if not chunk:
                return None, "QEMU ended before init's first line"
            buf += chunk
        wall = time.perf_counter() - t0
    finally:
        p.kill()
        p.wait()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime    # until killed: a little more
    return (None, wall, cpu), "init's first line"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-guest", action="store_true")
    ap.add_argument("--skip-sev", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import linuxbuild
    import linuxrun
    from svmsim.machine import Machine
    kernel, initrd = linuxbuild.workload(build=None)
    append = linuxbuild.APPEND
    rows = [("svmsim bare", *svmsim_bare(kernel, initrd, append))]
    if not a.skip_guest:
        rows.append(("svmsim guest (reference VMM, NPT)", *svmsim_guest(kernel, initrd, append)))
    if not a.skip_sev:
        rows.append(("svmsim SEV guest", *svmsim_guest(kernel, initrd, append, sev=True)))
    rows.append(("qemu-system-x86_64 -accel tcg",
                 *qemu(kernel, initrd, append, linuxrun.qemu_cpu(Machine(mem_size="16M")))))
    out = []
    for name, at, why in rows:
        insns, secs, cpu = at if at else (None, None, None)
        out.append({"engine": name, "instructions": insns, "seconds": secs, "cpu_seconds": cpu,
                    "ended": why})
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'engine':40} {'instructions':>14} {'wall s':>9} {'CPU s':>9} {'M instr/CPU s':>14}")
    for r in out:
        i, s, c = r["instructions"], r["seconds"], r["cpu_seconds"]
        rate = f"{i / c / 1e6:14.2f}" if i and c else f"{'':>14}"
        print(f"{r['engine']:40} {i if i is not None else '-':>14} "
              f"{s if s is None else round(s, 2):>9} {c if c is None else round(c, 2):>9} {rate}"
              f"  ({r['ended']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
