"""The bare-metal test kernels (tests/guests/) built and booted under QEMU.

These pin down the reference behaviour svmsim must reproduce: each kernel's
serial transcript is recorded in tests/guests/expected/<name>.txt and booted
the way guestbuild.KERNEL_RUNS says.  All QEMU boots of the module run in
parallel in one fixture so the file stays fast.
"""
from __future__ import annotations

import concurrent.futures
import struct
import threading

import pytest

import guestbuild as gb

pytestmark = pytest.mark.qemu

# Extra boots beyond the recorded transcripts: (kernel, append, smp, devices).
EXTRA_RUNS = {
    "loop_1000": ("loop", "iters=1000", 1, ()),
    "loop_hex": ("loop", "iters=0x3039", 1, ()),
    "loop_zero": ("loop", "iters=0", 1, ()),
    "smp_without_ap": ("smp", "", 1, ()),
    "bare32": ("bare32", "", 1, ()),
    "edu_absent": ("edu", "", 1, ()),
}


@pytest.fixture(scope="module")
def runs():
    """Build every kernel, boot all of them concurrently, map name -> result."""
    if not gb.qemu_available():
        pytest.skip("qemu-system-x86_64 not installed")
    jobs = {name: (name, cfg["append"], cfg["smp"], cfg.get("devices", ()))
            for name, cfg in gb.KERNEL_RUNS.items()}
    jobs.update(EXTRA_RUNS)

    def boot(job):
        kernel, append, smp, devices = job
        kind = "asm" if kernel == "bare32" else "c"
        return gb.qemu_run(gb.build_guest(kernel, kind=kind), append=append, smp=smp, devices=devices)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(jobs, pool.map(boot, jobs.values())))
    return results


@pytest.mark.parametrize("name", gb.KERNELS)
def test_transcript_and_exit_status(runs, name):
    status, out = runs[name]
    assert out.decode() == gb.expected_transcript(name).decode()
    assert status == gb.STATUS_PASS


def test_smoke_covers_every_part(runs):
    out = runs["smoke"][1].decode()
    for needle in ("hello from svmsim test kernel", "exceptions: PASS", "apic_timer: PASS",
                   "AP 1 online", "smp: PASS", "error=0x3 cr2=0x40001008", "smoke: PASS"):
        assert needle in out


def loop_checksum(n: int) -> int:
    """Python model of loop.c's 10-instruction body, mod 2**64."""
    mask = (1 << 64) - 1
    m0 = m1 = rdx = 0
    for i in range(n, 0, -1):
        rax = ((m0 + i) & mask) ^ rdx
        m0 = rax
        m1 = (m1 + rax) & mask
        rdx = ((m1 ^ i) + 0x5BD1E995) & mask
    return m0 ^ m1


@pytest.mark.parametrize("run, iters", [("loop_1000", 1000), ("loop_hex", 0x3039),
                                        ("loop_zero", 0)])
def test_loop_checksum_matches_model(runs, run, iters):
    status, out = runs[run]
    assert status == gb.STATUS_PASS
    assert out.decode() == f"loop: iters={iters}\nloop: checksum=0x{loop_checksum(iters):016x}\n"


def test_smp_kernel_fails_cleanly_without_an_ap(runs):
    status, out = runs["smp_without_ap"]
    assert "smp: AP 1 started by INIT-SIPI-SIPI: no" in out.decode()
    assert out.decode().endswith("smp: FAIL\n")
    assert status == gb.STATUS_FAIL


def test_edu_kernel_without_the_device_fails_cleanly(runs):
    assert runs["edu_absent"] == (gb.STATUS_FAIL, b"edu: no edu device (boot with -device edu)\n")


def test_runtime_less_asm_kernel(runs):
    assert runs["bare32"] == ((0x10 << 1) | 1, b"bare32: multiboot magic ok\n")


def test_hello_without_append_prints_empty_args(runs):
    # QEMU passes "<path> <append>"; the kernel strips the path.
    status, out = gb.qemu_run(gb.build_guest("hello"))
    assert status == gb.STATUS_PASS
    assert out.endswith(b"cmdline args: ''\n")


# ------------------------------------------------------------ build cache

def elf32_header(path):
    data = path.read_bytes()
    ident, (e_type, e_machine, _v, e_entry) = data[:16], struct.unpack_from("<HHII", data, 16)
    return data, ident, e_machine, e_entry


def test_kernel_is_multiboot_elf32():
    data, ident, machine, entry = elf32_header(gb.build_guest("hello"))
    assert ident[:4] == b"\x7fELF" and ident[4] == 1     # ELFCLASS32
    assert machine == 3                                   # EM_386
    assert 0x100000 <= entry < 0x200000
    header = data.find(struct.pack("<I", 0x1BADB002))
    assert 0 <= header < 8192 and header % 4 == 0
    magic, flags, checksum = struct.unpack_from("<III", data, header)
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0


def test_cache_hits_and_keys_on_flags(tmp_path):
    first = gb.build_guest("bare32", kind="asm", cache=tmp_path)
    mtime = first.stat().st_mtime_ns
    assert gb.build_guest("bare32", kind="asm", cache=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    other = gb.build_guest("bare32", kind="asm", cache=tmp_path, asflags=["-DVARIANT=1"])
    assert other != first and other.exists()


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SVMSIM_GUEST_CACHE", str(tmp_path / "c"))
    assert gb.build_guest("bare32", kind="asm").parent == tmp_path / "c"


def test_parallel_builds_agree(tmp_path):
    barrier = threading.Barrier(3)

    def build(_):
        barrier.wait()
        return gb.build_guest("hello", cache=tmp_path)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        paths = set(pool.map(build, range(3)))
    assert len(paths) == 1
    (path,) = paths
    assert path.read_bytes()[:4] == b"\x7fELF"
    assert not [p for p in tmp_path.rglob(".*") if p.is_dir()]   # no leftovers


def test_build_error_is_reported(tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text("int kmain(void) { return undefined_symbol; }\n")
    with pytest.raises(RuntimeError, match="guest build failed"):
        gb.build_guest([bad], cache=tmp_path, runtime=False)
