"""One boot of a kernel on svmsim and on QEMU TCG, timed: what every kernel benchmark
here measures (wall clock and CPU time; the project machine is shared, so ratios use CPU)."""
import io
import resource
import subprocess
import time
from collections import namedtuple

# ok: the run ended through isa-debug-exit with status 1; out: the console bytes.
SvmsimRun = namedtuple("SvmsimRun", "wall cpu insns ok out stats")
QemuRun = namedtuple("QemuRun", "wall cpu ok out")


def svmsim_run(kernel, append, mem="128M", profile=None, timeout=3600) -> SvmsimRun:
    """Boot ``kernel`` in this process; ``profile``: cProfile the run into that file."""
    from svmsim.machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size=mem, serial_out=out)
    m.load_kernel(str(kernel), append)
    t, c = time.perf_counter(), time.process_time()
    if profile:
        import cProfile
        prof = cProfile.Profile()
        r = prof.runcall(m.run, timeout=timeout)
        prof.dump_stats(profile)
    else:
        r = m.run(timeout=timeout)
    return SvmsimRun(time.perf_counter() - t, time.process_time() - c, r.instructions,
                     r.status == 1, out.getvalue(), dict(m.engine.stats))


def qemu_run(kernel, append, mem="128M", timeout=3600) -> QemuRun | None:
    """Boot ``kernel`` on QEMU TCG with the reference command line the tests use
    (None without QEMU); CPU time is the child's."""
    from svmsim.testing import qemu_available, qemu_command
    if not qemu_available():
        return None
    cmd = qemu_command(str(kernel), append, memory=mem)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return QemuRun(wall, cpu, p.returncode == 1, p.stdout)
