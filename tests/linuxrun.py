"""Boot the Linux test workload (tests/linuxbuild.py) on svmsim and on QEMU
TCG, and compare the consoles (issue 16).

``normalize`` keeps what must be the same on both and drops, line by line,
what legitimately differs: ``TIMING`` (calibration results and clock
choices that depend on speed, which QEMU TCG measures against the host
clock and svmsim against virtual time) and ``MODEL`` (facts of the two
machines svmsim deliberately does not copy: the CPU's brand string and
cache/TLB descriptors, QEMU's IDE and ACPI PCI functions, which svmsim does
not model).  Each pattern says why it is there.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess

import linuxbuild

TIMING = [
    r"^tsc: ",                                # PIT calibration: QEMU TCG often fails it
    r"^Calibrating delay loop",               # BogoMIPS
    r"^clocksource: ",                        # which clocksource, its max_idle_ns
    r"^\.\.TIMER: |^\.\.MP-BIOS bug: 8254 timer|^\.\.\.trying to set up timer|"
    r"^\.\.\.\.\. \(found apic|^\.\.\.\.\.\.\. works\.",   # check_timer(): timer_irq_works() timing
    r"^sched_clock: ",
    r"^APIC timer disabled due to verification failure",   # the APIC timer against jiffies
]
MODEL = [
    r"^CPU: AMD ",                            # brand string: svmsim names itself
    r"^Last level [id]TLB entries",           # CPUID 8000_0005/6: svmsim's profile values
    r"0000:00:01\.[13]",                      # QEMU's PIIX3 IDE and PIIX4 ACPI functions
    r"^Performance Events: ",                 # QEMU sets CPUID.1:ECX[31] (hypervisor)
    r"^x86/fpu: ",                            # XSAVE components follow each CPUID
    r"^Spectre V2 : ",                        # QEMU TCG drops IBRS/IBPB/STIBP; svmsim reports them
    r"^\.\.\. |^Failed to access perfctr msr",   # AMD PMU: QEMU TCG has no performance counters
]

# svmsim feature name -> QEMU -cpu property name, where they differ.
QEMU_NAMES = {
    "sse3": "pni", "sse41": "sse4.1", "sse42": "sse4.2", "sha": "sha-ni", "lahf_lm": "lahf-lm",
    "cr8_legacy": "cr8legacy", "page1gb": "pdpe1gb", "ffxsr": "fxsr-opt", "amd_ssbd": "amd-ssbd",
    "stibp": "amd-stibp", "invariant_tsc": "invtsc", "perfctr_core": "perfctr-core",
    "tsc_deadline": "tsc-deadline", "prefetchw": "3dnowprefetch",
}
# Features of QEMU's EPYC-Milan model that svmsim's profile leaves out entirely.
QEMU_EXTRA = ("xgetbv1", "topoext", "pku", "umip", "vme", "misalignsse")


def normalize(text: str) -> list[str]:
    drop = re.compile("|".join(f"(?:{p})" for p in TIMING + MODEL))
    lines = []
    for raw in text.replace("\r", "").split("\n"):
        line = re.sub(r"^\[\s*\d+\.\d+\] ", "", raw).rstrip()
        if line and not drop.search(line):
            lines.append(line)
    return lines


def qemu_cpu(machine) -> str:
    """``-cpu`` for QEMU that reports what svmsim's CPUID reports: EPYC-Milan
    minus every feature svmsim does not advertise."""
    from svmsim.cpu.cpuid import features
    have = features(machine)
    off = sorted(machine.profile.features - have) + list(QEMU_EXTRA)
    return ("EPYC-Milan," + ",".join(f"-{QEMU_NAMES.get(f, f)}" for f in off)
            + f",-hypervisor,phys-bits={machine.profile.phys_bits}")


def run_qemu(kernel, initrd, cmdline, cpu: str, timeout=120, mem="128M") -> tuple[int, str]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None, ""
    r = subprocess.run([qemu, "-accel", "tcg", "-cpu", cpu, "-m", mem, "-kernel", str(kernel),
                        "-initrd", str(initrd), "-append", cmdline, "-nodefaults", "-serial", "stdio",
                        "-display", "none", "-no-reboot",
                        "-device", "isa-debug-exit,iobase=0xf4,iosize=4"],
                       capture_output=True, timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace")
