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

import iced_x86

import linuxbuild

TIMING = [
    r"^tsc: ",                                # PIT calibration: QEMU TCG often fails it
    r"^Calibrating delay loop",               # BogoMIPS
    r"^clocksource: ",                        # which clocksource, its max_idle_ns
    r"^\.\.TIMER: |^\.\.MP-BIOS bug: 8254 timer|^\.\.\.trying to set up timer|"
    r"^\.\.\.\.\. \(found apic|^\.\.\.\.\.\.\. works\.",   # check_timer(): timer_irq_works() timing
    r"^sched_clock: ",
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
# Features QEMU's EPYC-Milan model has that svmsim's profile leaves out entirely.
QEMU_EXTRA = ("avx", "avx2", "fma", "f16c", "xsaves", "xgetbv1", "topoext", "pku", "umip", "vme",
              "misalignsse")


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


def init_mnemonics(init_path) -> set[str]:
    """Every mnemonic in /init's code (iced-x86 decoding its .text)."""
    from elftools.elf.elffile import ELFFile
    with open(init_path, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        code, addr = text.data(), text["sh_addr"]
    decoder = iced_x86.Decoder(64, code, ip=addr)
    names = {v: k for k, v in vars(iced_x86.Mnemonic).items() if not k.startswith("_")}
    return {names[i.mnemonic] for i in decoder if i.code != iced_x86.Code.INVALID}


@functools.lru_cache(maxsize=None)
def missing_for_fpcheck() -> tuple[str, ...]:
    """Mnemonics of /init that svmsim does not implement yet (empty: the
    floating-point and SSE check can run)."""
    from svmsim.cpu import ops
    ops.load_all()
    init = linuxbuild.build_init_binary()
    have = {iced_x86.Mnemonic.__dict__.get(n) for n in init_mnemonics(init)}
    names = {v: k for k, v in vars(iced_x86.Mnemonic).items() if not k.startswith("_")}
    return tuple(sorted(names[m] for m in have if m not in ops.BY_MNEMONIC))


def append(fpcheck: bool) -> str:
    return linuxbuild.APPEND + (" fpcheck" if fpcheck else "")


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
