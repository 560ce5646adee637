"""Build and run the bare-metal guest kernels under tests/guests/.

How a kernel is made (the kvm-unit-tests way):

1. Every source (the 32-bit boot stub ``lib/boot64.S`` included, which uses
   ``.code32``/``.code16`` sections) is compiled by the machine's gcc as
   x86-64 ELF64 code, freestanding, no libc.
2. ``ld`` links them with ``lib/kernel.ld`` at physical 1 MiB (identity
   mapped, so ``-mcmodel=small`` absolute addresses are fine).
3. ``objcopy -O elf32-i386`` rewrites the container as ELF32, because
   QEMU's Multiboot loader refuses ELF64 images; the bytes and load
   addresses do not change, and the entry point is the 32-bit ``_start``.

The result boots under ``qemu-system-x86_64 -kernel``, on real hardware
through GRUB's ``multiboot`` command, and on svmsim.

Built kernels are cached in ``$SVMSIM_GUEST_CACHE`` (default
``~/.cache/svmsim-guests``), keyed by a SHA-256 of the source files, the
flags and the tool versions; objects are cached too (``obj/``, keyed the
same way per source plus all headers), so the shared runtime is compiled
once for all kernels.  Every build step happens in a private temporary
directory and is published with ``os.replace`` (atomic on POSIX), so
parallel pytest workers may build the same kernel at the same time.

isa-debug-exit convention: the guest writes V to port 0xF4 and QEMU exits
with status ``(V << 1) | 1``.  Our kernels write 0 for pass (status 1) and
1 for fail (status 3).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Iterable, Sequence

GUEST_DIR = pathlib.Path(__file__).resolve().parent / "guests"
LIB_DIR = GUEST_DIR / "lib"
SUITES_DIR = GUEST_DIR / "suites"
EXPECTED_DIR = GUEST_DIR / "expected"
LINKER_SCRIPT = LIB_DIR / "kernel.ld"

#: QEMU exit status for exit_qemu(0) / exit_qemu(1).
STATUS_PASS = 1
STATUS_FAIL = 3

#: Bumped whenever the build recipe below changes, to invalidate caches.
_RECIPE_VERSION = "1"

BASE_CFLAGS = (
    "-m64", "-ffreestanding", "-fno-pic", "-fno-pie", "-mno-red-zone",
    "-mno-sse", "-mno-mmx", "-mno-80387", "-mgeneral-regs-only",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
    "-fno-builtin", "-nostdlib", "-nostdinc", "-O2", "-g0",
    "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11",
)
#: Kernels whose own source is ordinary gcc -O2 code with the x87 and SSE2
#: enabled (user programs are built so); the runtime keeps -mno-sse, and the
#: kernel turns the units on itself before using them.
FP_CFLAGS = ("-msse2", "-mfpmath=sse", "-m80387", "-fno-math-errno")
SOURCE_CFLAGS = {"fpu_sse.c": FP_CFLAGS}
_NO_FP = frozenset({"-mno-sse", "-mno-mmx", "-mno-80387", "-mgeneral-regs-only"})
BASE_ASFLAGS = ("-m64", "-fno-pic", "-fno-pie", "-nostdlib", "-g0")
BASE_LDFLAGS = ("-m", "elf_x86_64", "-nostdlib", "-z", "max-page-size=0x1000",
                "-z", "noexecstack", "--no-warn-rwx-segments", "--build-id=none")

#: The kernels under tests/guests/<name>.c.  Their test bodies live in
#: tests/guests/suites/*.c (linked into every kernel) so `smoke` reuses them.
KERNELS = ("hello", "exceptions", "apic_timer", "smp", "smp_burst", "loop", "smoke", "fpu_sse",
           "svm_basic", "svm_invalid", "svm_intercepts", "svm_loop", "svm_world",
           "svm_events", "svm_npt", "svm_state", "svm_ioio", "workload", "edu", "smm", "sev_es_nae", "smc")

#: How each kernel is booted to produce tests/guests/expected/<name>.txt;
#: svmsim's own tests should boot the same way and compare the same text.
#: Every one of them exits with STATUS_PASS.  ``devices``: optional devices
#: (QEMU's -device, svmsim's --device), none if absent.
KERNEL_RUNS = {
    "hello": {"append": "greeting=1 svmsim", "smp": 1},
    "exceptions": {"append": "", "smp": 1},
    "apic_timer": {"append": "", "smp": 1},
    "smp": {"append": "", "smp": 2},
    "smp_burst": {"append": "", "smp": 4},
    "loop": {"append": "", "smp": 1},          # default 10,000,000 iterations
    "fpu_sse": {"append": "", "smp": 1},
    "smoke": {"append": "smoke", "smp": 2},
    "svm_basic": {"append": "", "smp": 1},
    "svm_invalid": {"append": "", "smp": 1},
    "svm_intercepts": {"append": "", "smp": 1},
    "svm_loop": {"append": "exits=1000 iters=100000", "smp": 1},   # bench/svm_bench.py uses more
    "svm_world": {"append": "", "smp": 1},
    "svm_events": {"append": "", "smp": 1},
    "svm_npt": {"append": "", "smp": 1},
    "svm_state": {"append": "", "smp": 1},
    "svm_ioio": {"append": "", "smp": 1},
    "workload": {"append": "", "smp": 1},      # every phase, small; bench/workload_bench.py uses more
    "edu": {"append": "", "smp": 1, "devices": ("edu",)},   # QEMU: -device edu; svmsim: --device edu
    "smm": {"append": "", "smp": 1},
    "sev_es_nae": {"append": "", "smp": 2, "devices": ("edu",)},   # also an SEV-ES guest: test_vmm_sev_es
    "smc": {"append": "", "smp": 1},           # every phase, 1000 each; bench/smc_bench.py uses more
}


def cache_dir() -> pathlib.Path:
    """The kernel cache directory ($SVMSIM_GUEST_CACHE or ~/.cache/...)."""
    env = os.environ.get("SVMSIM_GUEST_CACHE")
    base = pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "svmsim-guests"
    base.mkdir(parents=True, exist_ok=True)
    return base


@functools.lru_cache(maxsize=None)
def _tool_versions() -> str:
    """First line of each tool's --version: part of the cache key."""
    lines = []
    for tool in ("gcc", "ld", "objcopy"):
        out = subprocess.run([tool, "--version"], capture_output=True, text=True,
                             check=True).stdout
        lines.append(out.splitlines()[0])
    return "\n".join(lines)


def _runtime_sources() -> list[pathlib.Path]:
    """The runtime: every .c/.S under lib/ and suites/ (the reusable test
    bodies that several kernels call); headers are hashed separately."""
    return sorted(p for d in (LIB_DIR, SUITES_DIR) if d.is_dir()
                  for p in d.iterdir() if p.suffix in (".c", ".S"))


def _resolve_sources(name_or_sources, kind: str) -> tuple[str, list[pathlib.Path]]:
    """Map a kernel name or an explicit source list to (name, paths)."""
    if isinstance(name_or_sources, (str, os.PathLike)) and \
            not str(name_or_sources).endswith((".c", ".S", ".s")):
        name = str(name_or_sources)
        ext = ".c" if kind == "c" else ".S"
        return name, [GUEST_DIR / f"{name}{ext}"]
    if isinstance(name_or_sources, (str, os.PathLike)):
        name_or_sources = [name_or_sources]
    paths = [pathlib.Path(s) if pathlib.Path(s).is_absolute() else GUEST_DIR / s
             for s in name_or_sources]
    return paths[0].stem, paths


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:20]


def _header_bytes() -> list[bytes]:
    """Headers and the linker script: any change rebuilds everything."""
    files = sorted(LIB_DIR.glob("*.h")) + sorted(SUITES_DIR.glob("*.h")) + [LINKER_SCRIPT]
    return [b for f in files for b in (f.name.encode(), f.read_bytes())]


def _run(cmd: list[str], cwd: pathlib.Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"guest build failed: {' '.join(cmd)}\n{proc.stderr}")


def _publish(build, target: pathlib.Path) -> pathlib.Path:
    """Run build(tmp_path) in a private directory next to target, then
    rename the result into place (atomic, so parallel builders are safe)."""
    if target.exists():
        return target
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.stem}-", dir=target.parent))
    try:
        tmp = work / target.name
        build(tmp, work)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _object(src: pathlib.Path, extra: tuple[str, ...], base: pathlib.Path) -> pathlib.Path:
    """Compile one source (cached per content, headers, flags and tools)."""
    flags = (BASE_CFLAGS if src.suffix == ".c" else BASE_ASFLAGS) + extra
    if src.name in SOURCE_CFLAGS:
        flags = tuple(f for f in flags if f not in _NO_FP) + SOURCE_CFLAGS[src.name]
    key = _digest([_RECIPE_VERSION.encode(), _tool_versions().encode(),
                   "\0".join(flags).encode(), src.name.encode(), src.read_bytes(),
                   *_header_bytes()])
    objdir = base / "obj"
    objdir.mkdir(exist_ok=True)

    def build(tmp, work):
        _run(["gcc", *flags, "-I", str(LIB_DIR), "-I", str(SUITES_DIR), "-c", str(src),
              "-o", str(tmp)], work)
    return _publish(build, objdir / f"{src.stem}-{key}.o")


def _link(objs: Sequence[pathlib.Path], ldflags: tuple[str, ...], target: pathlib.Path):
    def build(tmp, work):
        elf64 = work / "kernel64.elf"
        _run(["ld", *BASE_LDFLAGS, *ldflags, "-T", str(LINKER_SCRIPT),
              "-o", str(elf64), *map(str, objs)], work)
        # QEMU's Multiboot loader rejects ELF64, so repackage as ELF32.
        _run(["objcopy", "-O", "elf32-i386", str(elf64), str(tmp)], work)
    return _publish(build, target)


def build_guest(name_or_sources, *, kind: str = "c", cflags: Iterable[str] = (),
                asflags: Iterable[str] = (), ldflags: Iterable[str] = (),
                runtime: bool | None = None, extra_sources: Iterable = (),
                cache: pathlib.Path | None = None) -> pathlib.Path:
    """Build a Multiboot ELF32 kernel and return its cached path.

    ``name_or_sources`` is a kernel name (``"hello"`` -> guests/hello.c, or
    guests/hello.S with ``kind="asm"``) or a list of source paths (relative
    to tests/guests/ or absolute).  ``runtime`` links the lib/ runtime
    (boot stub, serial, IDT, APIC...) and defaults to True for ``kind="c"``
    and False for ``kind="asm"``; a runtime-less asm kernel must provide
    its own Multiboot header and a 32-bit ``_start`` (``.code32``).
    """
    if kind not in ("c", "asm"):
        raise ValueError(f"kind must be 'c' or 'asm', not {kind!r}")
    name, sources = _resolve_sources(name_or_sources, kind)
    sources += [pathlib.Path(s) if pathlib.Path(s).is_absolute() else GUEST_DIR / s
                for s in extra_sources]
    if runtime is None:
        runtime = kind == "c"
    if runtime:
        sources = _runtime_sources() + sources
    cflags, asflags, ldflags = tuple(cflags), tuple(asflags), tuple(ldflags)
    base = pathlib.Path(cache) if cache else cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objs = list(pool.map(
            lambda src: _object(src, cflags if src.suffix == ".c" else asflags, base),
            sources))
    key = _digest([_RECIPE_VERSION.encode(), _tool_versions().encode(),
                   "\0".join(ldflags).encode(), LINKER_SCRIPT.read_bytes(),
                   *(o.name.encode() for o in objs)])
    return _link(objs, ldflags, base / f"{name}-{key}.elf")


def qemu_available() -> bool:
    return shutil.which("qemu-system-x86_64") is not None


def qemu_command(kernel, append: str = "", smp: int = 1, mem: str = "128M",
                 devices: Sequence[str] = ()) -> list[str]:
    """The reference QEMU command line (TCG, EPYC CPU, COM1 on stdout): the
    one svmsim.testing gives users for their own kernels, with optional
    ``-device``s (the same names as svmsim's --device)."""
    from svmsim.testing import qemu_command as command
    return command(kernel, append, smp, mem, devices=devices)


def qemu_run(kernel, append: str = "", smp: int = 1, mem: str = "128M",
             timeout: float = 20, devices: Sequence[str] = ()) -> tuple[int | None, bytes]:
    """Boot ``kernel`` in QEMU; return (exit_status, serial_output_bytes).

    exit_status is QEMU's process status ((V << 1) | 1 after isa-debug-exit,
    0 after a triple fault thanks to -no-reboot) or None on timeout.
    Calls pytest.skip when qemu-system-x86_64 is not installed.
    """
    if not qemu_available():
        import pytest
        pytest.skip("qemu-system-x86_64 not installed")
    cmd = qemu_command(kernel, append, smp, mem, devices)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return None, exc.stdout or b""
    return proc.returncode, proc.stdout


@functools.lru_cache(maxsize=None)
def qemu_transcript(name: str) -> tuple[int, str]:
    """(status, output) of kernel ``name`` booted on QEMU as KERNEL_RUNS says,
    once per test session (several test files read the same run)."""
    status, out = qemu_run(build_guest(name), **KERNEL_RUNS[name])   # devices included
    return status, out.decode()


def expected_transcript(name: str) -> bytes:
    """The recorded serial transcript tests/guests/expected/<name>.txt."""
    return (EXPECTED_DIR / f"{name}.txt").read_bytes()
