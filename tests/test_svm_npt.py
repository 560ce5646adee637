"""Nested paging (issue 4; APM vol 2, 15.25): the two-dimensional walk, #NPF
with its EXITINFOs, nested A/D bits, and the ASID-tagged TLB, with the guest
running real machine code over nested tables built from Python."""
import pytest

from svmharness import SvmRig, NestedTables, GUEST_CODE, GUEST_STACK, IDT, REC
from cpuharness import asm, PML4, PD
from svmsim.svm.exits import ExitCode, encode_event, EVENT_INTR

FINAL, TABLE = 1 << 32, 1 << 33


def npt_rig(guest, intercepts=(ExitCode.CPUID, ExitCode.HLT), identity_to=0x1000000, **kw):
    """A 64-bit guest sharing the host's page tables (as GPAs) over nested
    tables that identity-map [0, identity_to) with 2 MiB pages."""
    r = SvmRig(guest, intercepts=intercepts, NP_ENABLE=1, **kw)
    r.nt = NestedTables(r.m.bus)
    r.nt.identity(0, identity_to)
    r.vmcb["N_CR3"] = r.nt.root
    return r


def test_identity_nested_map_runs_the_guest():
    r = npt_rig("mov eax, 7\ncpuid\nhlt").run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] == 7


def test_guest_physical_remapped_by_nested_tables():
    """gPA 0x600000 -> SPA 0x1800000: the guest reads what is at the SPA."""
    r = npt_rig("mov eax, [0x600000]\ncpuid\nhlt", identity_to=0x600000)
    r.nt.map(0x600000, 0x1800000, 1 << 21)
    r.m.bus.write(0x1800000, 4, 0x5555)
    r.m.bus.write(0x600000, 4, 0x1111)
    r.run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] == 0x5555


def test_npf_on_the_final_address():
    """Not present in the nested tables: EXITINFO1 = US | bit 32, EXITINFO2 = gPA."""
    r = npt_rig("mov rax, 0x1234567\nmov eax, [rax]\nhlt").run()
    assert r.exitcode == ExitCode.NPF
    assert r.vmcb["EXITINFO1"] == FINAL | 4 and r.vmcb["EXITINFO2"] == 0x1234567
    assert r.vmcb["RIP"] == GUEST_CODE + len(asm("mov rax, 0x1234567"))
    insn = asm("mov eax, [rax]")
    assert r.vmcb["INSN_BYTES"].to_bytes(15, "little")[:len(insn)] == insn


def test_npf_write_to_read_only_nested_page():
    r = npt_rig("mov dword ptr [0x600010], 1\nhlt", identity_to=0x600000)
    r.nt.map(0x600000, 0x600000, 1 << 21, flags=5)          # P | US, read-only
    r.run()
    assert r.exitcode == ExitCode.NPF
    assert r.vmcb["EXITINFO1"] == FINAL | 4 | 2 | 1 and r.vmcb["EXITINFO2"] == 0x600010


def test_npf_fetch_from_no_execute_nested_page():
    r = npt_rig("hlt", identity_to=0x400000)
    r.nt.map(0x400000, 0x400000, 1 << 21, flags=7 | 1 << 63)
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] == FINAL | 0x10 | 4 | 1
    assert r.vmcb["EXITINFO2"] == GUEST_CODE
    assert r.vmcb["INSN_LEN"] == 0                       # nothing could be fetched


def test_npf_on_a_guest_page_table_access():
    """The guest's CR3 (a gPA) is not mapped: bit 33, EXITINFO2 = the gPA of the
    entry; the walk's access is a nested write (it may set A), so RW = 1."""
    r = npt_rig("hlt")
    r.vmcb["CR3"] = 0x3000000                            # beyond the 16 MiB nested map
    r.run()
    assert r.exitcode == ExitCode.NPF
    assert r.vmcb["EXITINFO1"] == TABLE | 4 | 2
    assert r.vmcb["EXITINFO2"] == 0x3000000 + ((GUEST_CODE >> 39) & 0x1FF) * 8


def test_guest_page_fault_stays_a_guest_fault():
    r = npt_rig("mov rax, 0x100000000\nmov eax, [rax]\nhlt",
                intercepts=(ExitCode.EXCP_PF, ExitCode.HLT)).run()
    assert r.exitcode == ExitCode.EXCP_PF and r.vmcb["EXITINFO2"] == 0x100000000


def test_nested_accessed_and_dirty_bits():
    r = npt_rig("mov eax, [0x600000]\nmov dword ptr [0x601000], 2\ncpuid\nhlt", identity_to=0x600000)
    r.nt.map(0x600000, 0x600000)
    r.nt.map(0x601000, 0x601000)
    r.run()
    pte0 = r.m.bus.read(r.nt.entry_addr(0x600000, 1), 8)
    pte1 = r.m.bus.read(r.nt.entry_addr(0x601000, 1), 8)
    assert pte0 & 0x20 and not pte0 & 0x40                 # read: A
    assert pte1 & 0x60 == 0x60                             # written: A and D


def test_two_guest_pages_on_one_host_page():
    r = npt_rig("mov dword ptr [0x600000], 0x77\nmov eax, [0x601000]\ncpuid\nhlt",
                identity_to=0x600000)
    r.nt.map(0x600000, 0x1900000)
    r.nt.map(0x601000, 0x1900000)
    r.run()
    assert r.vmcb["RAX"] == 0x77


def test_mmio_through_nested_tables():
    """gPA 0x600000 -> the local APIC's SPA: the guest reads the APIC version."""
    r = npt_rig("mov eax, [0x600030]\ncpuid\nhlt", identity_to=0x600000)
    r.nt.map(0x600000, 0xFEE00000)
    r.run()
    assert r.vmcb["RAX"] & 0xFF == r.cpu.lapic.mmio_read(0x30, 4) & 0xFF != 0


def test_guest_paging_off_over_nested_tables():
    """A 32-bit guest with paging off: linear = gPA, translated by the nested tables."""
    code = asm("mov eax, [0x600000]\ncpuid\nhlt", bits=32)
    r = SvmRig(code, intercepts=[ExitCode.CPUID], NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    nt.identity(0, 0x600000)
    nt.map(0x600000, 0x1A00000)
    r.m.bus.write(0x1A00000, 4, 0x4242)
    v = r.vmcb
    v["N_CR3"], v["EFER"], v["CR0"], v["CR4"] = nt.root, 1 << 12, 0x11, 0
    v.set_segment("CS", 0x18, 0xC9B, 0xFFFFFFFF, 0)
    r.run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] & 0xFFFFFFFF == 0x4242


@pytest.mark.parametrize("tlb_control,stale", [(0, True), (1, False), (3, False)])
def test_stale_nested_translation_without_a_flush(tlb_control, stale):
    """The TLB caches the combined translation under the guest's ASID: changing
    the nested tables without TLB_CONTROL leaves the old one (APM 15.16)."""
    r = npt_rig("mov eax, [0x600000]\ncpuid\nhlt", identity_to=0x600000)
    r.nt.map(0x600000, 0x1800000)
    r.m.bus.write(0x1800000, 4, 1)
    r.m.bus.write(0x1801000, 4, 2)
    r.run()
    assert r.vmcb["RAX"] == 1
    r.nt.map(0x600000, 0x1801000)
    r.vmcb["RIP"], r.vmcb["TLB_CONTROL"] = GUEST_CODE, tlb_control
    r.run()
    assert r.vmcb["RAX"] == (1 if stale else 2)


def test_npf_while_delivering_an_injected_event_reports_exitintinfo():
    """The guest IDT's page is not in the nested tables: #NPF on the final
    gPA of the IDT read, with EXITINTINFO = the injected INTR (15.7.2)."""
    r = SvmRig("hlt", idt=True, intercepts=[ExitCode.HLT], NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    nt.identity(0, 0x400000)
    nt.identity(0x400000, 0x600000, size=4096)
    nt.identity(0x600000, 0x1000000)
    r.m.bus.write(nt.entry_addr(IDT, 1), 8, 0)             # the IDT's page is not mapped
    r.vmcb["N_CR3"] = nt.root
    inj = encode_event(0x41, EVENT_INTR)
    r.vmcb["EVENTINJ"] = inj
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINTINFO"] == inj
    assert r.vmcb["EXITINFO2"] == IDT + 16 * 0x41 and r.vmcb["EXITINFO1"] & FINAL


def _legacy_guest(code32, cr4, cr3, setup_tables, nested=None):
    r = SvmRig(asm(code32, bits=32), intercepts=[ExitCode.CPUID], NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    if nested is None:
        nt.identity(0, 0x1000000)
    else:
        nested(nt)
    setup_tables(r.m.bus)
    v = r.vmcb
    v["N_CR3"], v["EFER"], v["CR0"], v["CR4"], v["CR3"] = nt.root, 1 << 12, 0x80000011, cr4, cr3
    v.set_segment("CS", 0x18, 0xC9B, 0xFFFFFFFF, 0)
    return r


def test_guest_32bit_paging_over_nested_tables():
    """Guest 32-bit paging with 4 KiB pages: its PDE/PTE reads are nested reads."""
    def tables(bus):
        bus.write(0x700000 + 4 * 1, 4, 0x701000 | 3)       # PDE for 4-8 MiB -> PT
        for i in range(1024):
            bus.write(0x701000 + 4 * i, 4, (0x400000 + i * 4096) | 3)
        bus.write(0x701000 + 4 * 0x200, 4, 0x650000 | 3)   # linear 0x600000 -> gPA 0x650000
        bus.write(0x650000, 4, 0xABCD)
    r = _legacy_guest("mov eax, [0x600000]\ncpuid\nhlt", 0, 0x700000, tables).run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] & 0xFFFFFFFF == 0xABCD


def test_guest_pae_paging_with_large_pages_over_nested_tables():
    def tables(bus):
        bus.write(0x702000, 8, 0x703000 | 1)               # PDPTE 0
        bus.write(0x703000 + 8 * 2, 8, 0x400000 | 0x83)    # 2 MiB: 4-6 MiB identity
        bus.write(0x703000 + 8 * 3, 8, 0x800000 | 0x83)    # 2 MiB: 6 MiB -> gPA 8 MiB
        bus.write(0x800010, 4, 0x3344)
    r = _legacy_guest("mov eax, [0x600010]\ncpuid\nhlt", 1 << 5, 0x702000, tables).run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] & 0xFFFFFFFF == 0x3344


def test_guest_page_table_access_npf_on_read_only_table_when_setting_accessed():
    """The guest walk sets A in its PDE: a nested write to a read-only page
    holding the guest's table is an #NPF with bit 33 and RW (APM 15.25.6)."""
    def tables(bus):
        bus.write(0x700000 + 4 * 1, 4, 0x701000 | 3)
        for i in range(1024):
            bus.write(0x701000 + 4 * i, 4, (0x400000 + i * 4096) | 3)

    def nested(nt):
        nt.identity(0, 0x600000)
        nt.identity(0x600000, 0x800000, size=4096)
        nt.map(0x700000, 0x700000, flags=5)              # the guest PD: read-only
        nt.identity(0x800000, 0x1000000)
    r = _legacy_guest("nop\nhlt", 0, 0x700000, tables, nested).run()
    assert r.exitcode == ExitCode.NPF
    assert r.vmcb["EXITINFO1"] == TABLE | 4 | 2 | 1 and r.vmcb["EXITINFO2"] == 0x700004   # the PDE


def test_npf_reserved_bit_in_a_nested_entry():
    """A reserved bit (here 51, above MAXPHYADDR 48) in a nested entry: #NPF with
    P and RSV set (APM 15.25.6)."""
    r = npt_rig("mov eax, [0x600000]\nhlt", identity_to=0x600000)
    r.nt.map(0x600000, 0x600000 | 1 << 51)
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] == FINAL | 8 | 4 | 1


def test_nested_1gib_page_and_guest_memory_beyond_host_ram():
    """A 1 GiB nested page maps gPAs 64 GiB.. onto host RAM at 0: the guest's
    physical space is larger than the host's 32 MiB."""
    r = npt_rig("mov rax, 0x1000600000\nmov eax, [rax]\ncpuid\nhlt")
    pdpte = r.nt.entry_addr(0x1000000000, 3)
    r.m.bus.write(pdpte, 8, 0 | 0x87)                       # 1 GiB page at SPA 0
    r.m.bus.write(0x600000, 4, 0x6060)
    # The guest's own tables must map linear 0x1000600000 -> gPA 0x1000600000.
    pdpt = r.m.bus.read(PML4, 8) & ~0xFFF
    r.m.bus.write(pdpt + 8 * 64, 8, 0x1000000000 | 0x83)   # guest 1 GiB page, identity
    r.run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] == 0x6060


def test_invlpga_from_the_host_flushes_one_guest_page():
    """INVLPGA rAX=address, ECX=ASID drops that guest translation only (APM vol 3).
    The two pages lie in different 2 MiB guest pages (INVLPGA drops a whole
    large page, like INVLPG)."""
    r = npt_rig("mov eax, [0x600000]\nmov ebx, [0x800000]\ncpuid\nhlt", identity_to=0x600000)
    r.nt.identity(0xA00000, 0x1000000)
    for gpa, spa, val in ((0x600000, 0x1800000, 1), (0x800000, 0x1801000, 2)):
        r.nt.map(gpa, spa)
        r.m.bus.write(spa, 4, val)
        r.m.bus.write(spa + 0x10000, 4, val + 10)
    r.run()
    assert (r.vmcb["RAX"], r.cpu.regs[3]) == (1, 2)
    r.nt.map(0x600000, 0x1810000)
    r.nt.map(0x800000, 0x1811000)
    r.cpu.regs[0], r.cpu.regs[1] = 0x600000, 1
    from svmsim.svm.insns import invlpga
    invlpga(r.cpu, type("I", (), {"asize": 8})())              # INVLPGA rAX=0x600000, ECX=1
    r.vmcb["RIP"] = GUEST_CODE
    r.run()
    assert r.vmcb["RAX"] == 11 and r.cpu.regs[3] == 2          # 0x800000 still stale


def test_guest_invlpg_flushes_only_the_guest_asid():
    """The host's translation of the same linear page (ASID 0) survives a
    guest INVLPG (ASID 1)."""
    r = npt_rig("invlpg [0x600000]\ncpuid\nhlt", identity_to=0x1000000)
    r.cpu.translate(0x600000, 0)                               # host entry, ASID 0
    host_entry = r.cpu.tlb._tagged[(0, 0)].get(0x600)
    r.run()
    assert host_entry is not None and r.cpu.tlb._tagged[(0, 0)].get(0x600) is host_entry


def _gmet_rig(code_us):
    r = SvmRig("mov eax, [0x600000]\nmov dword ptr [0x600004], 1\ncpuid\nhlt",
               intercepts=[ExitCode.CPUID], NP_ENABLE=1, GMET_ENABLE=1)
    nt = NestedTables(r.m.bus)
    flags = 3 | (4 if code_us else 0)
    for a in range(0, 0x1000000, 1 << 21):
        nt.map(a, a, 1 << 21, flags=flags if a == GUEST_CODE else 3)   # U/S = 0 elsewhere
    r.vmcb["N_CR3"] = nt.root
    return r.run()


def test_gmet_supervisor_fetch_from_user_nested_page_faults():
    """GMET: guest CPL 0 code on a nested page with U/S = 1 -> #NPF (P, ID),
    and US clear: "the guest user/supervisor indication is normally provided
    in ExitInfo1" (APM vol 2, 15.25.13, footnote 1)."""
    r = _gmet_rig(code_us=True)
    assert r.exitcode == ExitCode.NPF
    assert r.vmcb["EXITINFO1"] == FINAL | 0x10 | 1 and r.vmcb["EXITINFO2"] == GUEST_CODE


def test_gmet_supervisor_pages_stay_usable():
    """With GMET the nested U/S = 0 pages are executable and readable/writable
    by the guest kernel (without GMET they would fault: nested accesses are user)."""
    r = _gmet_rig(code_us=False)
    assert r.exitcode == ExitCode.CPUID


def test_without_gmet_supervisor_nested_pages_fault():
    r = SvmRig("hlt", intercepts=[ExitCode.HLT], NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    for a in range(0, 0x1000000, 1 << 21):
        nt.map(a, a, 1 << 21, flags=3)
    r.vmcb["N_CR3"] = nt.root
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] & 1     # present, U/S violation


@pytest.mark.parametrize("virtual,where", [(1, 0x1800000), (0, 0x600000)])
def test_virtual_vmsave_uses_a_guest_physical_address(virtual, where):
    """V_VMSAVE_VMLOAD_ENABLE with nested paging: the guest's VMSAVE (not
    intercepted) takes rAX as a gPA and writes through the nested tables
    (APM 15.33.1); without it rAX is a system-physical address."""
    r = npt_rig("mov ecx, 0xC0000081\nmov eax, 0x5151\nxor edx, edx\nwrmsr\n"
                "mov rax, 0x600000\nvmsave\ncpuid\nhlt", identity_to=0x600000,
                V_VMSAVE_VMLOAD_ENABLE=virtual)
    r.nt.identity(0x800000, 0x1000000)
    r.nt.map(0x600000, 0x1800000)
    r.run()
    from svmsim.svm.vmcb import VmcbView
    assert r.exitcode == ExitCode.CPUID
    assert VmcbView(r.m.bus, where)["STAR"] == 0x5151


@pytest.mark.parametrize("tlb_control,stale", [(0, True), (1, False), (3, False)])
def test_nested_translation_of_a_guest_table_is_walked_again_after_a_flush(tlb_control, stale):
    """The nested translations of guest page-table pages are cached like the
    combined ones (npt.NestedMmu.nested_walk) and dropped by the same flushes:
    the hypervisor moves the guest's page directory (gPA PD) to another SPA
    whose entry maps 0x600000 elsewhere; after TLB_CONTROL 1 or 3 the guest
    walks through the new copy (APM 15.16, 15.25.5)."""
    r = SvmRig("mov eax, [0x600000]\ncpuid\nhlt", intercepts=(ExitCode.CPUID, ExitCode.HLT),
               NP_ENABLE=1)
    r.nt = NestedTables(r.m.bus)
    r.nt.identity(0, 0x200000, size=4096)              # 4 KiB nested pages: PD can move alone
    r.nt.identity(0x200000, 0x1000000)
    r.vmcb["N_CR3"] = r.nt.root
    r.m.bus.write(0x600000, 4, 1)
    r.m.bus.write(0xA00000, 4, 2)
    r.run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] == 1
    copy = 0x1C00000
    r.m.bus.write_bytes(copy, r.m.bus.read_bytes(PD, 4096))
    r.m.bus.write(copy + 3 * 8, 8, 0xA00000 | 0x83)     # gVA 0x600000 -> gPA 0xA00000 (2 MiB)
    r.nt.map(PD, copy)
    r.vmcb["RIP"], r.vmcb["TLB_CONTROL"] = GUEST_CODE, tlb_control
    r.run()
    assert r.exitcode == ExitCode.CPUID and r.vmcb["RAX"] == (1 if stale else 2)
