"""Testing your own kernels with svmsim, the way svmsim's tests do (issue 15,
item 5); the pytest plugin (``svmsim.pytest_plugin``) wraps these.

    from svmsim.testing import run_kernel, run_qemu
    r = run_kernel("build/hv.elf", append="verbose", smp=2, timeout=60)
    assert r.status == 1, r.reason          # isa-debug-exit 0: (0 << 1) | 1
    assert "PASS" in r.output and r.exits.get("VMMCALL") == 2
    q = run_qemu("build/hv.elf", append="verbose", smp=2)   # None if QEMU is absent
    assert q is None or (q.output, q.status) == (r.output, r.status)
"""
import io
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass
class KernelRun:
    """How a kernel's run ended and what it printed on COM1."""
    output: str
    status: int
    reason: str = ""
    kind: str = ""
    instructions: int = 0
    exits: dict = field(default_factory=dict)       # #VMEXIT name -> count ({} without SVM)
    svm: dict = field(default_factory=dict)         # the whole exit summary (VMRUNs, invalid reasons)
    machine: object = None                          # the svmsim Machine (None for QEMU)

    @property
    def passed(self) -> bool:
        """The isa-debug-exit convention of svmsim's kernels: 0 = pass (status 1)."""
        return self.status == 1


def run_kernel(path, append: str = "", smp: int = 1, timeout: float = 60, memory="128M",
               max_insns: int = None, cpu: str = "epyc", devices=()) -> KernelRun:
    """Boot ``path`` as ``qemu-system-x86_64 -kernel`` would and run it to its end.
    ``devices``: optional devices by name, as ``--device`` (``("edu",)``)."""
    from .machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size=memory, smp=smp, cpu=cpu, serial_out=out, devices=tuple(devices))
    m.load_kernel(str(path), append)
    r = m.run(max_insns=max_insns, timeout=timeout)
    return KernelRun(out.getvalue().decode("utf-8", "replace"), r.status, r.reason, r.kind, r.instructions,
                     dict(r.svm.get("exits", {})), r.svm, m)


def qemu_available() -> bool:
    return shutil.which("qemu-system-x86_64") is not None


def qemu_command(kernel, append: str = "", smp: int = 1, memory="128M", cpu="EPYC", devices=()) -> list:
    """QEMU as svmsim's conventions assume it: TCG, COM1 on stdout, isa-debug-exit;
    ``devices`` as ``-device`` options (svmsim's --device names are QEMU's)."""
    return ["qemu-system-x86_64", "-accel", "tcg", "-cpu", cpu, "-m", str(memory), "-smp", str(smp),
            "-display", "none", "-serial", "stdio", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            *[a for d in devices for a in ("-device", d)], "-kernel", str(kernel), "-append", append]


def run_qemu(path, append: str = "", smp: int = 1, timeout: float = 60, memory="128M", cpu="EPYC",
             devices=()):
    """The same kernel under QEMU (a KernelRun), or None when QEMU is not
    installed; a QEMU that does not finish in ``timeout`` gives status None."""
    if not qemu_available():
        return None
    cmd = qemu_command(path, append, smp, memory, cpu, devices)
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        status, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        status, out = None, e.stdout or b""
    return KernelRun(out.decode("utf-8", "replace"), status, "qemu", "qemu")
