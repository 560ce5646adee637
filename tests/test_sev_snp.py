"""SEV-SNP in the processor (APM vol 2, 15.36): the RMP and its instructions,
page validation, the RMP and VMPL checks of every access, VMRUN's page
checks (issue 10)."""
import pytest

from esharness import EsRig, VMSA, SHARED, RMP_AT
from svmharness import GUEST_CODE
from cpuharness import asm, CODE_ADDR
from svmsim.memory.rmp import RmpEntry, PERM_ALL, PERM_R
from svmsim.svm.exits import ExitCode
from svmsim.cpu.exceptions import Shutdown

NPF_RMP, NPF_SIZEM, NPF_VMPL = 1 << 31, 1 << 35, 1 << 36


def host_run(r, src):
    """Run host code on the rig's CPU (host mode), until HLT; returns the
    first exception as (vector, error code) or None."""
    code = asm(src + "\nhlt")
    at = CODE_ADDR + 0x800
    r.m.bus.write_bytes(at, code)
    seen = []
    r.m.listeners.append(lambda ev: ev["type"] == "exception" and seen.append((ev["vector"], ev["error_code"])))
    r.cpu.rip, r.cpu.halted = at, False
    try:
        r.m.engine.run(r.cpu, 10_000)
    except Shutdown:
        pass                                   # no host IDT: the fault ends in shutdown
    return seen[0] if seen else None


def test_cpuid_advertises_snp_and_vmpls():
    from cpuharness import run_code
    res = run_code(asm("mov eax, 0x8000001F\ncpuid"))
    assert res.regs[0] >> 4 & 3 == 3 and res.regs[3] >> 12 & 0xF == 4   # EAX[5:4], EBX[15:12]


def test_snp_guest_runs_and_reads_its_status():
    r = EsRig(f"mov ecx, 0xC0010131\nrdmsr\nmov [{GUEST_CODE + 0x800:#x}], eax\nhlt", snp=True).run()
    assert r.exitcode == ExitCode.HLT
    assert int.from_bytes(r.private(GUEST_CODE + 0x800, 4), "little") == 0b111   # SEV, ES, SNP


def test_host_write_to_a_guest_page_is_an_rmp_page_fault():
    """Table 15-37, host data write: Hypervisor-Owned, else #PF with the RMP
    error-code bit (31); a host read is allowed (it sees ciphertext)."""
    r = EsRig("hlt", snp=True)
    assert host_run(r, f"mov eax, [{GUEST_CODE:#x}]") is None
    vec, ec = host_run(r, f"mov dword ptr [{GUEST_CODE:#x}], 1")
    assert vec == 14 and ec & (1 << 31) and ec & 3 == 3


def test_host_2mb_mapping_needs_the_whole_region_unassigned():
    """15.36.10: a 2 MiB host mapping passes only if all 512 entries are
    unassigned: a write to an unassigned page next to a guest page faults."""
    r = EsRig("hlt", snp=True)
    vec, ec = host_run(r, f"mov dword ptr [{0x7FF000:#x}], 1")      # 0x600000-0x7FFFFF has guest pages
    assert vec == 14 and ec >> 31
    assert host_run(r, f"mov dword ptr [{0x900000:#x}], 1") is None


def test_rmp_table_is_ciphertext_free_and_readable():
    r = EsRig("hlt", snp=True)
    raw = r.m.bus.read_bytes(RMP_AT + 0x4000 + 16 * (GUEST_CODE >> 12), 16)
    e = RmpEntry.decode(raw)
    assert e.assigned and e.asid == 1 and e.gpa == GUEST_CODE and e.validated and e.perms[0] == PERM_ALL


# ---------------------------------------------------------------- RMPUPDATE, PSMASH (host)
STATE = 0x180000                   # host scratch for RMPUPDATE's 16-byte input


def rmpupdate(r, spa, gpa=0, assigned=0, size=0, immutable=0, asid=0):
    r.m.bus.write_bytes(STATE, gpa.to_bytes(8, "little") + bytes([assigned, size, immutable, 0])
                        + asid.to_bytes(4, "little"))
    exc = host_run(r, f"mov rax, {spa:#x}\nmov rcx, {STATE:#x}\nrmpupdate")
    assert exc is None, exc
    return r.cpu.regs[0]


def test_rmpupdate_assigns_and_always_unvalidates():
    """15.36.5-15.36.6: RMPUPDATE sets GPA/Assigned/Page_Size/Immutable/ASID;
    the page becomes unvalidated and only VMPL0 keeps permissions."""
    r = EsRig("hlt", snp=True)
    assert r.m.rmp.read(GUEST_CODE).validated
    assert rmpupdate(r, GUEST_CODE, gpa=0x123000, assigned=1, asid=1) == 0
    e = r.m.rmp.read(GUEST_CODE)
    assert (e.assigned, e.gpa, e.asid, e.validated, e.perms) == (True, 0x123000, 1, False, [PERM_ALL, 0, 0, 0])
    assert rmpupdate(r, GUEST_CODE) == 0 and not r.m.rmp.read(GUEST_CODE).assigned


@pytest.mark.parametrize("kw,code", [
    ({"spa": 0x900010}, 1),                                   # not page aligned: FAIL_INPUT
    ({"spa": 0x900000, "assigned": 1, "asid": 0}, 1),         # ASID 0: only an immutable AMD-SP page
    ({"spa": 0x900000, "assigned": 0, "asid": 3}, 1),         # a hypervisor page has no ASID
    ({"spa": 0x901000, "assigned": 1, "asid": 1, "size": 1}, 1),   # 2 MiB page not 2 MiB aligned
    ({"spa": 0x600000, "assigned": 1, "asid": 1, "size": 1}, 4),   # over assigned 4 KiB pages: FAIL_OVERLAP
    ({"spa": 0x4000000, "assigned": 1, "asid": 1}, 1),        # beyond the RMP
])
def test_rmpupdate_failures(kw, code):
    r = EsRig("hlt", snp=True)
    assert rmpupdate(r, **kw) == code


def test_rmpupdate_immutable_page_is_refused():
    """A page handed to the AMD-SP (Assigned, ASID 0, Immutable: table 15-35)
    can no longer be changed by RMPUPDATE."""
    r = EsRig("hlt", snp=True)
    assert rmpupdate(r, 0x900000, assigned=1, asid=0, immutable=1) == 0
    assert r.m.rmp.read(0x900000).owner == "AMD-SP"
    assert rmpupdate(r, 0x900000) == 2                        # FAIL_PERMISSION


def test_rmpupdate_in_a_guest_is_fail_permission_and_outside_snp_ud():
    r = EsRig("mov rax, 0x900000\nmov rcx, 0x180000\nrmpupdate\nmov [0x400800], eax\nhlt", snp=True).run()
    assert int.from_bytes(r.private(GUEST_CODE + 0x800, 4), "little") == 2
    from cpuharness import run_code
    assert run_code(asm("rmpupdate")).exception[0] == 6      # SNP not enabled: #UD


def test_psmash_splits_a_2mb_page_keeping_validated():
    """15.36.11: consecutive GPAs, 4 KiB size, everything else copied."""
    r = EsRig("hlt", snp=True)
    r.m.rmp.write(0x800000, RmpEntry(True, 1, False, 0x40000000, 1, False, True, [PERM_ALL, 3, 0, 0]))
    assert host_run(r, "mov rax, 0x800000\npsmash") is None and r.cpu.regs[0] == 0
    e = r.m.rmp.read(0x800000 + 5 * 4096)
    assert (e.page_size, e.gpa, e.validated, e.perms[:2]) == (0, 0x40005000, True, [PERM_ALL, 3])
    assert host_run(r, "mov rax, 0x800000\npsmash") is None and r.cpu.regs[0] == 7   # no longer 2 MiB
    assert host_run(r, "mov rax, 0x801000\npsmash") is None and r.cpu.regs[0] == 1   # not 2 MiB aligned


# ---------------------------------------------------------------- validation (15.36.6)
OUT = GUEST_CODE + 0x800           # a private result slot in the guest's code page


def out(r, i=0, n=8):
    return int.from_bytes(r.private(OUT + 8 * i, n), "little")


def test_unvalidated_page_is_vc_404_with_cr2():
    """15.36.10: "A failure of the page validation check results in a #VC
    with error code PAGE_NOT_VALIDATED (0x404). The faulting guest virtual
    address is saved to CR2"."""
    r = EsRig("mov eax, [0x900010]\nhlt", snp=True)
    r.assign(0x900000, 0x901000, validated=False)
    r.run()
    assert r.recorded() == (29, 0x404, GUEST_CODE) and r.vmsa()["CR2"] == 0x900010


def test_pvalidate_sets_validated_and_reports_no_change_in_cf():
    src = (f"mov rax, 0x900000\nxor ecx, ecx\nmov edx, 1\npvalidate\nsetc bl\nmov [{OUT:#x}], eax\n"
           f"mov [{OUT + 8:#x}], bl\nmov rax, 0x900000\npvalidate\nsetc bl\nmov [{OUT + 16:#x}], bl\n"
           f"mov eax, [0x900000]\nhlt")
    r = EsRig(src, snp=True)
    r.assign(0x900000, 0x901000, validated=False)
    r.run()
    assert r.exitcode == ExitCode.HLT and r.recorded() is None
    assert (out(r, 0, 4), out(r, 1, 1), out(r, 2, 1)) == (0, 0, 1)
    assert r.m.rmp.read(0x900000).validated


def test_pvalidate_size_mismatches():
    """Table 15-38: 2 MiB requested on 4 KiB RMP pages -> FAIL_SIZEMISMATCH;
    4 KiB requested on a 2 MiB RMP page -> #VMEXIT(NPF) with SIZEM."""
    r = EsRig(f"mov rax, 0x800000\nmov ecx, 1\nmov edx, 1\npvalidate\nmov [{OUT:#x}], eax\nhlt", snp=True)
    r.assign(0x800000, 0xA00000, validated=False)
    r.run()
    assert out(r, 0, 4) == 6
    r = EsRig("mov rax, 0xC01000\nxor ecx, ecx\nmov edx, 1\npvalidate\nhlt", snp=True)
    r.m.rmp.write(0xC00000, RmpEntry(True, 1, False, 0xC00000, 1, False, False, [PERM_ALL, 0, 0, 0]))
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] & NPF_SIZEM


# ---------------------------------------------------------------- the hypervisor's attacks
def test_remapping_private_pages_is_a_reverse_map_npf():
    """A hypervisor swapping two private pages in the nested tables: the RMP
    entry's GPA no longer matches (Reverse-Map check, table 15-37)."""
    r = EsRig("mov eax, [0x900000]\nhlt", snp=True)
    r.assign(0x900000, 0x902000)
    r.nested.map(0x900000, 0x901000, size=4096)
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] & NPF_RMP and r.vmcb["EXITINFO2"] == 0x900000


def test_rmpupdate_behind_the_guests_back_unvalidates():
    """15.36.6: after the hypervisor reassigns a validated page, the guest's
    next access is #VC(404h): it detects the tampering."""
    r = EsRig("mov eax, [0x900000]\nhlt\nmov eax, [0x900000]\nhlt", snp=True)
    r.assign(0x900000, 0x901000)
    r.run()
    assert r.exitcode == ExitCode.HLT and r.recorded() is None
    assert rmpupdate(r, 0x900000, gpa=0x900000, assigned=1, asid=1) == 0
    r.run(at_vmrun=True)
    assert r.recorded()[:2] == (29, 0x404)


def test_private_access_to_a_hypervisor_page_and_shared_write_to_a_guest_page():
    """Table 15-37: a private access needs a guest-owned page (#NPF); a shared
    (C = 0) write needs a hypervisor-owned page (#NPF)."""
    r = EsRig("mov eax, [0x900000]\nhlt", snp=True).run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] & NPF_RMP
    r = EsRig(f"mov dword ptr [{SHARED:#x}], 1\nhlt", snp=True)
    r.assign(SHARED, SHARED + 4096)
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] & NPF_RMP


# ---------------------------------------------------------------- VMPLs (15.36.7)
def _vmpl1(r, code_at, src):
    """A second VMSA for the same vCPU, at VMPL1, running ``src``."""
    g = r.initial_vmsa()
    g["VMPL"], g["RIP"] = 1, code_at
    r.put(code_at, asm(src))
    plain = bytes(g.mem.buf)
    from svmsim.memory.encryption import EncryptionEngine
    from esharness import KEY
    r.m.bus.write_bytes(0x701000, EncryptionEngine.encrypt(KEY, 0x701000, plain))
    r.assign(0x701000, 0x702000, validated=False, vmsa=True)
    for spa in range(0x400000, 0x700000, 4096):              # VMPL1 may use the guest's pages
        e = r.m.rmp.read(spa)
        e.perms[1] = PERM_ALL
        r.m.rmp.write(spa, e)


def test_rmpadjust_restricts_a_higher_vmpl():
    """VMPL0 makes 0x900000 read-only for VMPL1 (RMPADJUST); the VMPL1 VMSA
    may read it, and its write is #NPF with the VMPL bit (table 15-36)."""
    r = EsRig(f"mov rax, 0x900000\nxor ecx, ecx\nmov edx, {1 | PERM_R << 8}\nrmpadjust\n"
              f"mov [{OUT:#x}], eax\nhlt", snp=True)
    r.assign(0x900000, 0x901000)
    _vmpl1(r, GUEST_CODE + 0x400, "mov eax, [0x900000]\nmov dword ptr [0x900000], 1\nhlt")
    r.run()
    assert out(r, 0, 4) == 0 and r.m.rmp.read(0x900000).perms[1] == PERM_R
    r.vmcb["VMSA_PA"] = 0x701000
    r.run(at_vmrun=True)
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] & NPF_VMPL
    assert r.vmcb["EXITINFO1"] & 2 and r.vmcb["EXITINFO2"] == 0x900000


def test_rmpadjust_cannot_raise_its_own_or_a_lower_vmpl():
    r = EsRig("hlt", snp=True)
    r.assign(0x900000, 0x901000)
    _vmpl1(r, GUEST_CODE + 0x400, f"mov rax, 0x900000\nxor ecx, ecx\nmov edx, {0x1F << 8}\n"
                                  f"rmpadjust\nmov [{OUT:#x}], eax\nhlt")
    r.vmcb["VMSA_PA"] = 0x701000
    r.run()
    assert r.exitcode == ExitCode.HLT and out(r, 0, 4) == 2      # FAIL_PERMISSION


def test_pvalidate_above_vmpl0_is_a_vmpl_npf():
    r = EsRig("hlt", snp=True)
    r.assign(0x900000, 0x901000, validated=False)
    _vmpl1(r, GUEST_CODE + 0x400, "mov rax, 0x900000\nxor ecx, ecx\nmov edx, 1\npvalidate\nhlt")
    r.vmcb["VMSA_PA"] = 0x701000
    r.run()
    assert r.exitcode == ExitCode.NPF and r.vmcb["EXITINFO1"] & NPF_VMPL


# ---------------------------------------------------------------- VMRUN (15.36.12)
def test_vmsa_must_be_marked_in_the_rmp():
    r = EsRig("hlt", snp=True)
    r.assign(VMSA, VMSA + 4096, vmsa=False)
    r.run()
    assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == "SNP_VMSA_RMP"


@pytest.mark.parametrize("field,value,rule", [("SEV_FEATURES", 1 | 1 << 3, "SNP_SEV_FEATURES"),
                                              ("VMPL", 5, "SNP_VMPL")])
def test_snp_vmsa_rules(field, value, rule):
    r = EsRig("hlt", snp=True)
    g = r.initial_vmsa()
    g[field] = value
    r.write_vmsa(g)
    r.run()
    assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == rule


def test_snp_active_needs_snp_enabled():
    r = EsRig("hlt")
    g = r.initial_vmsa()
    g["SEV_FEATURES"] = 1
    r.write_vmsa(g)
    r.run()
    assert r.cpu.svm.invalid[-1].rule == "SNP_NOT_ENABLED"


def test_vmcb_and_hsave_must_be_hypervisor_owned():
    """Table 15-39 (VMCB: #GP(0)) and the VM_HSAVE_PA WRMSR rule (#GP(0))."""
    r = EsRig("hlt", snp=True)
    r.assign(0x300000, 0x301000, asid=2)                       # the VMCB page
    exc = host_run(r, "mov rax, 0x300000\nvmrun")
    assert exc == (13, 0)
    exc = host_run(r, f"mov ecx, 0xC0010117\nmov eax, {GUEST_CODE:#x}\nxor edx, edx\nwrmsr")
    assert exc == (13, 0)


def test_running_vmsa_is_in_use():
    """15.36.12: the VMCB and VMSA of a running guest are in use: RMPUPDATE
    on them is FAIL_INUSE until the #VMEXIT."""
    from svmsim.svm import snp
    r = EsRig("hlt", snp=True, intercepts=()).run()              # the guest halts, still in guest mode
    assert r.cpu.svm_guest
    assert snp.rmp_update(r.cpu, r.m.rmp, VMSA, 0, 0, 0, 0, 0) == 3


def test_non_snp_guest_write_to_an_assigned_page_is_npf():
    """Table 15-37, a guest that is not SNP-active: data writes need a
    hypervisor-owned page, else #VMEXIT(NPF) (with or without nested paging)."""
    from svmharness import SvmRig
    from svmsim.cpu import msr
    r = EsRig("hlt", snp=True)                      # only for an SNP-enabled machine with a guest page
    plain = SvmRig("mov dword ptr [0x900000], 1\nhlt", intercepts=[ExitCode.HLT])
    for idx in (0xC0010132, 0xC0010133):
        msr.wrmsr(plain.cpu, idx, r.cpu.msr[idx])
    msr.wrmsr(plain.cpu, 0xC0010010, 1 << 23 | 1 << 24)
    from svmsim.memory.rmp import RmpEntry
    plain.m.rmp.write(0x900000, RmpEntry(True, 0, False, 0x900000, 3))
    plain.run()
    assert plain.exitcode == ExitCode.NPF and plain.vmcb["EXITINFO1"] & NPF_RMP
    assert plain.vmcb["EXITINFO2"] == 0x900000


def test_dma_write_to_a_guest_page_is_blocked():
    """A device's DMA write into a page assigned to a guest changes nothing
    and is reported; into a hypervisor page it lands (fw_cfg's DMA: the
    signature item "QEMU" read to memory)."""
    import struct
    r = EsRig("hlt", snp=True)
    r.assign(0x900000, 0x901000)
    before = r.m.bus.read_bytes(0x900000, 4)
    events = []
    r.m.listeners.append(lambda e: e["type"] == "dma_blocked" and events.append(e))
    for target in (0x900000, 0x910000):
        r.m.bus.write_bytes(0x180000, struct.pack(">IIQ", 1 << 3 | 1 << 1, 4, target))   # SELECT 0, READ
        assert host_run(r, "mov dx, 0x514\nxor eax, eax\nout dx, eax\nmov dx, 0x518\n"
                           "mov eax, 0x00001800\nout dx, eax") is None
    assert r.m.bus.read_bytes(0x900000, 4) == before and events and events[0]["page"] == 0x900000
    assert r.m.bus.read_bytes(0x910000, 4) == b"QEMU"


def test_avic_backing_page_must_be_hypervisor_owned():
    """Table 15-39: the AVIC backing page of any guest, SNP-enabled system."""
    from test_svm_avic import AvicRig, BACKING
    from svmsim.cpu import msr
    r = AvicRig("hlt")
    msr.wrmsr(r.cpu, 0xC0010132, RMP_AT)
    msr.wrmsr(r.cpu, 0xC0010133, RMP_AT + 0x4000 + 16 * (32 << 20 >> 12) - 1)
    msr.wrmsr(r.cpu, 0xC0010010, 1 << 23 | 1 << 24)
    r.m.rmp.write(BACKING, RmpEntry(True, 0, False, 0, 3))
    r.run()
    assert r.exitcode == ExitCode.INVALID and r.cpu.svm.invalid[-1].rule == "AVIC_BACKING_OWNER"
