"""svmsim's pytest plugin, registered by the package (entry point ``pytest11``):
installing svmsim is enough for a project's tests to use it.

Fixtures:

* ``svmsim_machine``: a fresh 128 MiB ``Machine`` whose COM1 output is
  captured (``svmsim_machine.serial_output()`` returns it as text);
* ``run_kernel``: ``run_kernel(path, append="", smp=1, timeout=60, ...,
  devices=())`` boots a kernel as ``qemu-system-x86_64 -kernel`` would (with
  ``devices`` such as ``("edu",)``, as ``--device``) and returns a
  ``KernelRun`` (output, status, reason, exits by name...);
* ``qemu_transcript``: ``qemu_transcript(path, ...)`` is the same kernel's
  KernelRun under QEMU (``devices`` as ``-device``); the test is skipped
  when QEMU is not installed.

    def test_my_hypervisor(run_kernel, qemu_transcript):
        r = run_kernel("build/hv.elf", smp=2)
        assert r.passed, r.reason
        q = qemu_transcript("build/hv.elf", smp=2)
        assert r.output == q.output
"""
import io

import pytest


@pytest.fixture
def svmsim_machine():
    from .machine import Machine
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    m.serial_output = lambda: out.getvalue().decode("utf-8", "replace")
    return m


@pytest.fixture
def run_kernel():
    from .testing import run_kernel as run
    return run


@pytest.fixture
def qemu_transcript():
    from .testing import run_qemu

    def transcript(path, append="", smp=1, timeout=60, memory="128M", cpu="EPYC", devices=()):
        q = run_qemu(path, append, smp, timeout, memory, cpu, devices)
        if q is None:
            pytest.skip("qemu-system-x86_64 is not installed")
        return q
    return transcript
