"""The Device Exclusion Vector (APM vol 2, 15.24): the DEV capability block in
the host bridge, DEV_BASE/DEV_MAP/DEV_CR and the other functions, one bit per
4 KiB page, the host bridge's cache and DEV_FLUSH, blocked DMA reported and
changing nothing; an SEV guest's private pages read by DMA give ciphertext."""
import io
import subprocess
import sys

import pytest

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.memory import dev as D
from svmsim.memory.dma import DmaPort

EDU = (0, 2 << 3)
TABLE = 0x100000


def cfg(m, reg, value=None, size=4):
    m.io.write(0xCF8, 4, 0x80000000 | (reg & 0xFC))
    if value is None:
        return m.io.read(0xCFC + (reg & 3), size)
    m.io.write(0xCFC + (reg & 3), size, value)


def dev_write(m, function, index, value):
    cfg(m, 0xF4, function << 8 | index)
    cfg(m, 0xF8, value)


def dev_read(m, function, index):
    cfg(m, 0xF4, function << 8 | index)
    return cfg(m, 0xF8)


def protect(m, pa, table=TABLE):
    pfn = pa >> 12
    m.bus.write(table + (pfn >> 3), 1, m.bus.read(table + (pfn >> 3), 1) | 1 << (pfn & 7))


@pytest.fixture
def m():
    m = Machine(mem_size="16M")
    dev_write(m, D.F_BASE_LO, 0, TABLE | D.BASE_V)
    dev_write(m, D.F_CR, 0, D.CR_EN)
    return m


# ---------------------------------------------------------------- the kernel
def test_kernel_drives_the_dev_through_config_space_and_two_devices():
    out = io.BytesIO()
    machine = Machine(mem_size="128M", serial_out=out, devices=("edu",))
    machine.load_kernel(str(gb.build_guest("dev")), "")
    r = machine.run(max_insns=20_000_000, timeout=120)
    text = out.getvalue().decode()
    assert r.status == gb.STATUS_PASS, text + r.reason
    for line in ("DEV capability at f0, DEV_HDR 0000000f, DEV_CAP 00030401: 4 domains, 3 maps, revision 1",
                 "edu writes the protected page: 11 (blocked, unchanged)",
                 "DEV_ERR_STATUS 001003 (valid 1, write 1, overflow 0, device 02.0), address the protected page",
                 "edu reads the protected page: ff ff (all ones)",
                 "the CPU is never checked: it reads 11 44",
                 "[cpu] dev: bit cleared without DEV_FLUSH: 11",
                 "fw_cfg (domain 0) DMA into it: control 00000000, page 77",
                 "DEV_ERR_STATUS 000803 (valid 1, write 1, overflow 0, device 01.0)"):
        assert line in text
    assert machine.counters["DMA accesses blocked"] == 4


def test_kernel_says_so_on_a_machine_without_edu():
    out = io.BytesIO()
    machine = Machine(mem_size="128M", serial_out=out)
    machine.load_kernel(str(gb.build_guest("dev")), "")
    assert machine.run(max_insns=5_000_000).status == gb.STATUS_FAIL
    assert b"no edu device" in out.getvalue()


# ---------------------------------------------------------------- the capability block
def test_capability_block_in_the_host_bridge():
    """15.24.4: DEV_HDR (ID 0Fh, type 000b), DEV_OP, DEV_DATA; the host bridge
    reports a capability list."""
    m = Machine(mem_size="16M")
    assert cfg(m, 0x04) >> 16 & 0x10 and cfg(m, 0x34, size=1) == 0xF0
    assert cfg(m, 0xF0) == 0x0F
    cfg(m, 0xF4, 0xFFFFFFFF)
    assert cfg(m, 0xF4) == 0xFFFF                       # bits 31:16 reserved, MBZ
    assert dev_read(m, D.F_CAP, 0) == 0x00030401
    dev_write(m, D.F_CAP, 0, 0)
    assert dev_read(m, D.F_CAP, 0) == 0x00030401        # read-only


def test_registers_keep_only_defined_bits(m):
    dev_write(m, D.F_BASE_LO, 2, 0xFFFFFFFF)
    dev_write(m, D.F_BASE_HI, 2, 0xFFFFFFFF)
    dev_write(m, D.F_CR, 0, 0xFFFFFFFF)
    assert dev_read(m, D.F_BASE_LO, 2) == 0xFFFFF07F and dev_read(m, D.F_BASE_HI, 2) == 0xFF
    assert dev_read(m, D.F_CR, 0) == 0x4F               # flush reads 0 once done; SL_DEV_EN: SKINIT only
    assert dev_read(m, D.F_BASE_LO, 7) == 0             # beyond N_DOMAINS
    cfg(m, 0xF4, D.F_CR << 8)
    cfg(m, 0xF8, 0x1, size=1)                            # a byte write of DEV_DATA
    assert dev_read(m, D.F_CR, 0) == 0x1


# ---------------------------------------------------------------- access checking
def test_one_bit_per_page_little_endian(m):
    port = DmaPort(m, "test", EDU)
    protect(m, 0x3000)
    m.dev.cache.clear()
    m.bus.write_bytes(0x2FF0, b"\x11" * 0x30)
    port.write_bytes(0x2FF0, b"\x22" * 0x30)            # spans pages 2 and 3
    assert m.bus.read_bytes(0x2FF0, 0x30) == b"\x22" * 0x10 + b"\x11" * 0x20
    assert port.read_bytes(0x2FF8, 16) == b"\x22" * 8 + b"\xFF" * 8


def test_beyond_the_covered_range_the_p_bit_decides(m):
    """15.24.6: SIZE covers 4 GB * 2**SIZE; P: accesses beyond it are illegal (1) or legal (0)."""
    assert m.dev.blocked(EDU, 1 << 32, 4) is None
    dev_write(m, D.F_BASE_LO, 0, TABLE | D.BASE_V | D.BASE_P)
    assert m.dev.blocked(EDU, 1 << 32, 4)[0] == 1 << 32
    dev_write(m, D.F_BASE_LO, 0, TABLE | D.BASE_V | D.BASE_P | 1 << 2)    # SIZE 1: 8 GB
    assert m.dev.blocked(EDU, 1 << 32, 4) is None
    assert m.dev.blocked(EDU, 2 << 32, 4)[0] == 2 << 32


def test_base_hi_holds_address_bits_39_32(m):
    m2 = Machine(mem_size="6G")
    dev_write(m2, D.F_BASE_LO, 0, 0x1000 | D.BASE_V)
    dev_write(m2, D.F_BASE_HI, 0, 1)                     # the table at 1_0000_1000h
    dev_write(m2, D.F_CR, 0, D.CR_EN)
    m2.bus.write(0x100001000, 1, 1)                      # page 0 protected
    assert m2.dev.blocked(EDU, 0, 1) is not None and m.dev.blocked(EDU, 0, 1) is None


def test_dev_map_assigns_domains_by_bus_and_unit(m):
    """Figure 15-11: UNIT0/V0/DOM0 and UNIT1/V1/DOM1 on BUSNO; no match: domain 0."""
    dev_write(m, D.F_BASE_LO, 1, 0x120000 | D.BASE_V)
    dev_write(m, D.F_BASE_LO, 3, 0x140000 | D.BASE_V)
    dev_write(m, D.F_MAP, 1, 3 << 26 | 1 << 20 | 0 << 12 | 1 << 11 | 5 << 6 | 1 << 5 | 2)
    assert m.dev.domain((0, 2 << 3)) == 1 and m.dev.domain((0, 5 << 3 | 1)) == 3
    assert m.dev.domain((0, 4 << 3)) == 0 and m.dev.domain((1, 2 << 3)) == 0
    dev_write(m, D.F_MAP, 1, 1 << 20 | 2)                # V0 clear: no match
    assert m.dev.domain((0, 2 << 3)) == 0


def test_invalid_domain_table_performs_no_checks(m):
    protect(m, 0x5000)
    dev_write(m, D.F_BASE_LO, 0, TABLE)                  # V = 0
    assert m.dev.blocked(EDU, 0x5000, 1) is None


def test_disabled_dev_checks_nothing(m):
    protect(m, 0x5000)
    dev_write(m, D.F_CR, 0, 0)
    assert m.dev.blocked(EDU, 0x5000, 1) is None


def test_cached_lines_live_until_dev_flush(m):
    """15.24.2: the host bridge may cache the DEV; DEV_FLUSH invalidates it."""
    assert m.dev.blocked(EDU, 0x5000, 1) is None
    protect(m, 0x5000)
    assert m.dev.blocked(EDU, 0x5000, 1) is None         # the cached line
    dev_write(m, D.F_CR, 0, D.CR_EN | D.CR_FLUSH)
    assert m.dev.blocked(EDU, 0x5000, 1) is not None


def test_error_log_and_overflow(m):
    """15.24.7: blocked accesses are logged in DEV_ERR_STATUS and DEV_ERR_ADDR."""
    protect(m, 0x5000)
    port = DmaPort(m, "test", EDU)
    port.write_bytes(0x5010, b"x")
    assert dev_read(m, D.F_ERR_STATUS, 0) == 0x001003 and dev_read(m, D.F_ERR_ADDR_LO, 0) == 0x5010
    port.read_bytes(0x5020, 1)
    assert dev_read(m, D.F_ERR_STATUS, 0) == 0x001007    # overflow; the first access stays logged
    dev_write(m, D.F_ERR_STATUS, 0, 1)
    assert dev_read(m, D.F_ERR_STATUS, 0) == 0 and dev_read(m, D.F_ERR_ADDR_HI, 0) == 0


def test_sl_dev_protects_the_slb_even_with_the_dev_off():
    """15.24.8: with SL_DEV_EN the 64 KiB at SL_DEV_BASE is protected from
    every device, DEV enabled or not."""
    m = Machine(mem_size="16M")
    m.dev.set_sl_dev(0x230000)
    assert m.dev.blocked(EDU, 0x23FFFF, 1)[1].startswith("SL_DEV")
    assert m.dev.blocked(EDU, 0x22FFFF, 1) is None and m.dev.blocked(EDU, 0x240000, 1) is None
    dev_write(m, D.F_CR, 0, 0)                           # software clears SL_DEV_EN
    assert m.dev.blocked(EDU, 0x230000, 1) is None


# ---------------------------------------------------------------- reports
def test_blocked_dma_in_the_trace_and_the_run_report(tmp_path):
    kernel = gb.build_guest("dev")
    p = subprocess.run([sys.executable, "-m", "svmsim", "run", str(kernel), "--device", "edu",
                        "--trace", "dma"], capture_output=True, text=True, timeout=120)
    assert p.returncode == gb.STATUS_PASS
    assert "[dma] edu (pci 02.0) write of 64 bytes at" in p.stderr and "blocked: DEV domain 0" in p.stderr
    assert "[dma] fw_cfg write of 4 bytes" in p.stderr
    assert "svmsim: platform: 4 DMA accesses blocked" in p.stderr


def test_dma_of_an_sev_guests_private_page_gives_ciphertext():
    """Seed S2/S13: a device reads DRAM, where an SEV guest's private data is
    ciphertext under its key; the guest itself reads its plaintext."""
    from test_sev_hw import sev_rig, KEY
    from svmsim.svm.exits import ExitCode
    from svmsim.memory.encryption import EncryptionEngine
    from svmsim.devices.edu import Edu, DMA_NS
    r = sev_rig("mov dword ptr [0x600000], 0x5EC2E7\nmov eax, [0x600000]\nhlt")
    edu = Edu(r.m)
    edu.register(r.m)
    r.run()
    assert r.exitcode == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x5EC2E7
    edu.config_write(0x04, 2, 0x6)                        # bus master
    edu.bar_write(0, 0x80, 8, 0x600000)
    edu.bar_write(0, 0x88, 8, 0x40000)
    edu.bar_write(0, 0x90, 8, 16)
    edu.bar_write(0, 0x98, 8, 1)
    r.m.clock.now_ns += DMA_NS
    r.m.clock.run_due()
    seen = bytes(edu.buffer[:16])
    assert seen == r.m.bus.read_bytes(0x600000, 16)
    assert seen[:4] != (0x5EC2E7).to_bytes(4, "little")
    assert EncryptionEngine.decrypt(KEY, 0x600000, seen)[:4] == (0x5EC2E7).to_bytes(4, "little")
