"""REP STOS / REP MOVS on an SEV guest's private memory (issue 14, item 4).

tests/guests/sev_rep.S runs string instructions across private pages (page
boundaries, partial 16-byte lines, both directions, an overlapping copy) and
two #PFs in the middle of a REP (APM vol 1, 3.10.3; vol 3 "REP": a fault
leaves rCX/rSI/rDI reflecting the completed iterations).  The bulk path
(one engine call per page) must give the guest the same plaintext and leave
DRAM holding the same ciphertext, byte for byte, as element-by-element
writes through the engine do.
"""
import io

import pytest

import guestbuild
from svmsim.cpu.ops import string
from svmsim.machine import Machine
from svmsim.memory.encryption import EncryptionEngine
from svmsim.memory.enclines import PlaintextLines
from svmsim.sev.crypto import GuestOwner
from svmsim.sev.firmware import SevFirmware
from svmsim.vmm import Vmm, launch_sev
from svmsim.vmm.vmm import GUEST_BASE

ASID = 5
VEK = bytes(range(0x40, 0x50))


@pytest.fixture(scope="module")
def kernel():
    return guestbuild.build_guest("sev_rep", kind="asm")


def _run(kernel, monkeypatch, bulk):
    with monkeypatch.context() as mp:
        # One key for both runs, so their DRAM can be compared byte for byte.
        mp.setattr(SevFirmware, "_vek_for", lambda self, handle, policy: VEK)
        if not bulk:
            mp.setattr(string, "_bulk_stos", None)
            mp.setattr(string, "_bulk_movs", None)
        sizes = []
        write = PlaintextLines.write          # the CPU's stores through a key

        def spy(self, spa, data, asid):
            sizes.append(len(data))
            return write(self, spa, data, asid)
        mp.setattr(PlaintextLines, "write", spy)
        out = io.BytesIO()
        m = Machine(mem_size="64M", serial_out=out)
        vmm = Vmm(m, asid=ASID)
        info = vmm.load_kernel(str(kernel))
        launch_sev(vmm, GuestOwner(policy=1), regions=[(info.load_addr, info.load_end - info.load_addr)])
        r = vmm.run(max_insns=10 ** 6)
    assert r.reason.startswith("isa-debug-exit: guest wrote 0x0"), r.reason
    assert out.getvalue() == b"sev_rep: done\n"

    def view(gpa, n):
        return m.mem_engine.peek(m.bus.read_bytes, GUEST_BASE + gpa, n, ASID)
    return m, view, max(sizes)


def _dram(m):
    return m.bus.read_bytes(GUEST_BASE + 0x300000, 0x10000) + m.bus.read_bytes(GUEST_BASE + 0x500000, 0x4000)


def test_rep_stos_movs_on_private_pages(kernel, monkeypatch):
    m, view, biggest = _run(kernel, monkeypatch, bulk=True)
    assert biggest >= 0x1000 - 0x10                    # whole pages went through the engine at once
    assert view(0x300ff3, 0x2345) == b"\x5A" * 0x2345                      # A: stosb
    assert view(0x305006 - 0x802 * 2, 0x1004) == b"\x5A\xA5" * 0x802        # B: backward stosw
    assert view(0x305807, 0x1000) == view(0x303800, 0x1000)                 # C: movsb
    assert view(0x307000, 0x1808) == bytes.fromhex("1111111122222222") * 0x301   # D: overlap
    assert view(0x30CC02, 0x1400) == view(0x300C00, 0x1400)                 # E: backward movsd
    assert view(0x309F02, 0x400) == bytes.fromhex("44332211") * 0x100       # F: stosd, restarted
    assert view(0x30BF80, 0x200) == view(0x300ff3, 0x200)                   # F: movsb, restarted
    # The #PF handler's records: ECX, EDI, CR2, ESI at each fault.  The 64th
    # dword straddles 0x30A000 and faults before writing any of its bytes.
    recs = view(0x30F000, 0x30)
    assert int.from_bytes(recs[:4], "little") == 2
    ecx, edi, cr2 = (int.from_bytes(recs[16 + 4 * i:20 + 4 * i], "little") for i in range(3))
    assert (ecx, edi, cr2) == (0x100 - 63, 0x309FFE, 0x30A000)
    assert [int.from_bytes(recs[32 + 4 * i:36 + 4 * i], "little") for i in range(4)] == \
        [0x200 - 0x80, 0x30C000, 0x30C000, 0x300ff3 + 0x80]
    assert m.bus.read_bytes(GUEST_BASE + 0x300ff3, 16) != b"\x5A" * 16      # DRAM: ciphertext


def test_bulk_path_writes_the_ciphertext_of_element_writes(kernel, monkeypatch):
    """DRAM after the bulk run equals DRAM after a run forced element by element."""
    fast, fview, fbig = _run(kernel, monkeypatch, bulk=True)
    slow, sview, sbig = _run(kernel, monkeypatch, bulk=False)
    assert sbig <= 8 < fbig
    assert fview(0x300000, 0x10000) == sview(0x300000, 0x10000)
    assert _dram(fast) == _dram(slow)
