"""#VMEXIT's G_PAT write and VMRUN's nested-paging fields from the delta.

#VMEXIT writes the guest PAT back to G_PAT (APM 15.25.4: "#VMEXIT writes
the guest paging state ... back into the VMCB"); svmsim stores its bytes
only when they differ from the VMCB's, as it does for the guest state
(unchanged bytes need no write notice: self-modifying-code and SEV line
watchers see nothing).  VMRUN's nested-paging setup (15.25.3: N_CR3, G_PAT,
GMET_ENABLE) on the delta path takes the fields from the bytes the delta
compared, read once, not by name at each VMRUN.
"""
from svmharness import SvmRig, NestedTables, VMCB, GUEST_CODE
from svmsim.svm import switch
from svmsim.svm.exits import ExitCode
from svmsim.svm.vmcb import field

PAT_MSR = 0x277
GUEST_PAT, GUEST_PAT_2 = 0x0606060606060606, 0x0606060606060604
G_PAT_AT = VMCB + field("G_PAT").offset
WRITE_PAT = (f"mov ecx, {PAT_MSR}\ntest r9, r9\njz 1f\n"
             f"mov eax, {GUEST_PAT_2 & 0xFFFFFFFF}\nmov edx, {GUEST_PAT_2 >> 32}\nwrmsr\n"
             "1: rdmsr\nvmmcall")


def _rig():
    r = SvmRig(WRITE_PAT, intercepts=[ExitCode.VMMCALL], G_PAT=GUEST_PAT, NP_ENABLE=1)
    nt = NestedTables(r.m.bus)
    nt.identity(0, 0x1000000)
    r.vmcb["N_CR3"] = nt.root
    notices = []
    r.m.bus.write_watchers.append(lambda off, n: notices.append((off, n)))
    return r, notices


def _trip(r, write_pat):
    r.cpu.regs[9] = int(write_pat)
    r.vmcb["RIP"] = GUEST_CODE
    r.run()
    assert r.exitcode == ExitCode.VMMCALL


def _guest_pat(r) -> int:
    """The PAT the guest read last (RDMSR before its VMMCALL: EDX:EAX)."""
    return (r.cpu.regs[2] & 0xFFFFFFFF) << 32 | r.vmcb["RAX"] & 0xFFFFFFFF


def _touches_g_pat(notices) -> bool:
    return any(off < G_PAT_AT + 8 and G_PAT_AT < off + n for off, n in notices)


def test_unchanged_g_pat_is_not_written_again():
    r, notices = _rig()
    for _ in range(3):
        _trip(r, False)
        assert r.vmcb["G_PAT"] == GUEST_PAT and r.cpu.msr[PAT_MSR] != GUEST_PAT
    notices.clear()
    _trip(r, False)
    assert not _touches_g_pat(notices)


def test_a_guest_pat_write_reaches_g_pat_and_the_clean_copy():
    """The guest's WRMSR PAT goes to G_PAT with its write notice; with every
    clean bit set the next VMRUN gives the guest the value it wrote (the
    cached G_PAT followed the write, 15.15.3), and a later exit with it
    unchanged writes nothing."""
    r, notices = _rig()
    _trip(r, False)
    notices.clear()
    _trip(r, True)
    assert r.vmcb["G_PAT"] == GUEST_PAT_2 and _touches_g_pat(notices)
    r.vmcb["VMCB_CLEAN"] = 0xFFFFFFFF
    notices.clear()
    _trip(r, False)
    assert _guest_pat(r) == GUEST_PAT_2
    assert r.vmcb["G_PAT"] == GUEST_PAT_2 and not _touches_g_pat(notices)


def test_delta_vmrun_reads_no_nested_field_by_name(monkeypatch):
    """Once the delta holds the VMCB, VMRUNs of a nested-paging guest set up
    nested paging without reading a field by name; a changed G_PAT (a byte
    the delta compares) is loaded at the next VMRUN."""
    r, _ = _rig()
    for _ in range(2):
        _trip(r, False)
    reads = []
    real = switch.Fields.__getitem__

    def counted(self, name):
        reads.append(name)
        return real(self, name)
    monkeypatch.setattr(switch.Fields, "__getitem__", counted)
    _trip(r, False)
    assert reads == [] and r.cpu.svm.delta is not None
    assert _guest_pat(r) == GUEST_PAT
    r.vmcb["G_PAT"] = GUEST_PAT_2
    _trip(r, False)
    assert _guest_pat(r) == GUEST_PAT_2 and r.vmcb["G_PAT"] == GUEST_PAT_2
