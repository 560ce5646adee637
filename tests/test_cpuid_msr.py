"""CPUID values (AMD APM vol 3 appendix E, profile data) and MSR rules
(APM vol 2 ch. 3, 15.30, appendix A), checked through real CPUID/RDMSR/WRMSR
instructions where the rule is about the instruction."""
import iced_x86
import pytest

from cpuharness import CODE_ADDR, run_code, asm, make_machine
from svmsim.cpu import cpuid as cpuid_mod, msr, profiles
from svmsim.cpu.cpuid import cpuid
from svmsim.cpu.exceptions import CpuException, GP
from svmsim.cpu.segments import FS
from svmsim.errors import ConfigError
from svmsim.machine import Machine

AMD = b"AuthenticAMD"


def regs_of(r):
    return [r.regs[i] & 0xFFFFFFFF for i in (0, 3, 1, 2)]   # eax, ebx, ecx, edx


def run_cpuid(leaf, sub=0, **kw):
    r = run_code(asm(f"mov eax, {leaf}\nmov ecx, {sub}\ncpuid"), **kw)
    assert r.exception is None
    return regs_of(r)


# ------------------------------------------------------------------ CPUID
def test_vendor_string_and_max_leaves():
    a, b, c, d = run_cpuid(0)
    assert b.to_bytes(4, "little") + d.to_bytes(4, "little") + c.to_bytes(4, "little") == AMD
    assert a == profiles.get("epyc").max_basic
    a, b, c, d = run_cpuid(0x80000000)
    assert a == 0x8000001F                         # 8000_000A and 8000_001F are present
    assert b.to_bytes(4, "little") + d.to_bytes(4, "little") + c.to_bytes(4, "little") == AMD


def test_family_model_stepping_decoding_is_19h_01h_1():
    eax = run_cpuid(1)[0]
    base_family, ext_family = (eax >> 8) & 0xF, (eax >> 20) & 0xFF
    family = base_family + ext_family if base_family == 0xF else base_family
    model = ((eax >> 16) & 0xF) << 4 | (eax >> 4) & 0xF
    assert (family, model, eax & 0xF) == (0x19, 0x01, 1)
    assert eax == 0x00A00F11 == run_cpuid(0x80000001)[0]
    assert Machine(mem_size="4M").cpus[0].regs[2] == eax   # EDX after RESET (APM 14.1.3)


def test_hypervisor_bit_clear_and_no_hypervisor_leaves():
    assert not run_cpuid(1)[2] >> 31                # S8: 0 on the physical CPU
    assert run_cpuid(0x40000000) == [0, 0, 0, 0]    # S7: above the max basic leaf -> zeros
    assert run_cpuid(0x40000001) == [0, 0, 0, 0]
    assert run_cpuid(0x0E) == [0, 0, 0, 0]          # above max basic (0Dh)
    assert run_cpuid(0x80000020) == [0, 0, 0, 0]    # above max extended


def test_address_sizes_and_core_count_follow_smp():
    m = Machine(mem_size="8M", smp=4)
    a, b, c, d = cpuid(m.cpus[0], 0x80000008, 0)
    assert a & 0xFF == 48 and (a >> 8) & 0xFF == 48
    assert c & 0xFF == 3                            # NC = cores - 1
    assert (c >> 12) & 0xF == 2                     # ApicIdSize = log2(4)


def test_initial_apic_id_per_cpu_and_topology_leaf():
    m = Machine(mem_size="8M", smp=3)
    for cpu in m.cpus:
        assert cpuid(cpu, 1, 0)[1] >> 24 == cpu.index
        assert (cpuid(cpu, 1, 0)[1] >> 16) & 0xFF == 3
        assert cpuid(cpu, 0xB, 0)[3] == cpu.index
        assert cpuid(cpu, 0xB, 1)[1] & 0xFFFF == 3
        assert (cpuid(cpu, 0xB, 5)[2] >> 8) & 0xFF == 0   # invalid level
    assert cpuid(m.cpus[0], 1, 0)[3] >> 28 & 1            # HTT with several CPUs


def test_osxsave_mirrors_cr4_and_apic_bit_follows_apic_base():
    m = Machine(mem_size="4M")
    cpu = m.cpus[0]
    assert not cpuid(cpu, 1, 0)[2] >> 27 & 1
    cpu.cr4 |= 1 << 18
    assert cpuid(cpu, 1, 0)[2] >> 27 & 1
    assert cpuid(cpu, 1, 0)[3] >> 9 & 1
    msr.wrmsr(cpu, msr.APIC_BASE, msr.rdmsr(cpu, msr.APIC_BASE) & ~(1 << 11))
    assert not cpuid(cpu, 1, 0)[3] >> 9 & 1
    assert not cpuid(cpu, 0x80000001, 0)[3] >> 9 & 1


def test_extended_features_svm_lm_nx_and_brand():
    a, b, c, d = run_cpuid(0x80000001)
    assert c >> 2 & 1                               # SVM
    for bit in (29, 20, 26, 27, 11):                # LM, NX, 1 GiB pages, RDTSCP, SYSCALL
        assert d >> bit & 1, bit
    assert c & 1                                    # LAHF/SAHF in 64-bit mode
    brand = b"".join(x.to_bytes(4, "little") for lf in (0x80000002, 0x80000003, 0x80000004)
                     for x in run_cpuid(lf)).rstrip(b"\0").decode()
    assert "EPYC" in brand and "simulated" in brand
    assert run_cpuid(0x80000007)[3] >> 8 & 1        # invariant TSC
    # SVM revision 1, 32768 ASIDs, nested paging | LBR virtualization | NRIPS | TSC ratio | VMCB
    # clean | flush by ASID | decode assists | pause filter | threshold | virtual
    # VMSAVE/VMLOAD | vGIF | GMET | vNMI (APM vol 3, E.4.9): what svmsim implements.
    a, b, c, d = run_cpuid(0x8000000A)
    assert (a, b, c) == (1, 32768, 0)
    assert d == sum(1 << b for b in (0, 1, 3, 4, 5, 6, 7, 10, 12, 13, 15, 16, 17, 18, 25))
    # SME, SEV, 64-bit host required; C-bit 47, 5 bits cut (48 -> 43); 15 SEV
    # guests from ASID 1 (seed S14, S18); PreventHostIbs (15) and
    # VmgexitParameter (17), the SEV_FEATURES with a CPUID bit svmsim
    # implements, and the Allowed SEV Features mask (27) (cpu/sev_features.py).
    assert run_cpuid(0x8000001F) == [0x83B | 1 << 15 | 1 << 17 | 1 << 27, 47 | 5 << 6 | 4 << 12, 15, 5]


def test_cache_leaves_decode_to_the_profile():
    a, b, c, d = run_cpuid(0x80000005)
    assert c >> 24 == 32 and (c >> 16) & 0xFF == 8 and c & 0xFF == 64   # L1D 32 KiB 8-way
    a, b, c, d = run_cpuid(0x80000006)
    assert c >> 16 == 512 and (c >> 12) & 0xF == 6                      # L2 512 KiB, 8-way code
    assert (d >> 18) * 512 == 32 * 1024                                 # L3 32 MiB


def test_only_implemented_features_are_advertised():
    a, b, c, d = run_cpuid(1)
    assert c >> 28 & 1 and c >> 12 & 1 and c >> 29 & 1   # AVX, FMA, F16C (implemented)
    a7, b7, c7, d7 = run_cpuid(7)
    assert b7 >> 5 & 1 and not b7 >> 16 & 1         # AVX2; AVX-512F is outside the model
    assert not c7 >> 3 & 1                          # PKU
    # XSAVE: x87 | SSE | AVX; sizes for XCR0 = x87 (reset) and for all
    # components; the AVX component is 256 bytes at 576 (Fn0000_000D_x2)
    assert run_cpuid(0xD)[0] == 0b111
    assert run_cpuid(0xD)[1:3] == [576, 832]
    assert run_cpuid(0xD, 2)[:2] == [256, 576]
    m = make_machine()
    ops = __import__("svmsim.cpu.ops", fromlist=["BY_MNEMONIC"])
    have = set(ops.BY_MNEMONIC) | {iced_x86.OpCodeInfo(c).mnemonic for c in ops.BY_CODE}
    for f in cpuid_mod.features(m):
        for mn in cpuid_mod.NEEDS.get(f, ()):
            assert getattr(iced_x86.Mnemonic, mn) in have, (f, mn)
        # every instruction form iced-x86 ties to an advertised extension has a handler
        assert f not in cpuid_mod.missing_forms(), (f, cpuid_mod.missing_forms().get(f, [])[:5])


def test_implemented_extensions_are_advertised():
    """Nothing implemented but hidden: an extension of the EPYC profile whose
    every instruction form has a handler is reported by CPUID."""
    m = make_machine()
    missing = cpuid_mod.missing_forms()
    for f in m.profile.features:
        if f in cpuid_mod.ISA_FEATURES.values() and f not in missing:
            assert f in cpuid_mod.features(m), f
    for f in ("fpu", "mmx", "sse", "sse2", "sse3", "ssse3", "sse41", "sse42", "popcnt", "movbe"):
        assert f in cpuid_mod.features(m), f


def test_instruction_of_an_unreported_extension_is_ud():
    """An instruction whose CPUID feature the profile does not report raises
    #UD: SSE3's ADDSUBPS on the amd64-base model (no SSE3)."""
    from cpuharness import run_code
    code = asm("addsubps xmm0, xmm1")

    def setup(m, cpu):
        cpu.cr4 |= 1 << 9
    r = run_code(code, setup=setup)
    assert r.exception is None
    base = Machine(mem_size="4M", cpu="amd64-base")
    assert "sse3" not in cpuid_mod.features(base)
    from svmsim.cpu import ops
    import iced_x86 as ix
    ins = __import__("svmsim.cpu.decoder", fromlist=["build_insn"]).build_insn(
        ix.Decoder(64, code).decode(), 64)
    assert ops.lookup(ins, base)[0] is ops.not_reported
    assert ops.lookup(ins, r.machine)[0] is not ops.not_reported


def test_profiles_aliases_and_base_model():
    assert profiles.get("epyc-milan").name == "epyc"
    assert profiles.get("epyc-genoa").reset_edx == 0x00A10F11
    base = Machine(mem_size="4M", cpu="amd64-base")
    assert not cpuid(base.cpus[0], 0x80000001, 0)[2] >> 2 & 1           # no SVM
    assert cpuid(base.cpus[0], 0x80000008, 0)[0] & 0xFF == 40
    with pytest.raises(ConfigError):
        profiles.get("pentium")


# ------------------------------------------------------------------ MSRs
def gp_of(fn, *a):
    with pytest.raises(CpuException) as e:
        fn(*a)
    assert e.value.vector == GP and e.value.error_code == 0


def test_wrmsr_rdmsr_round_trip_through_instructions():
    code = asm("mov ecx, 0xC0000081\nmov eax, 0x11112222\nmov edx, 0x00230010\nwrmsr\n"
               "xor eax, eax\nxor edx, edx\nrdmsr")
    r = run_code(code)
    assert r.exception is None
    assert (r.regs[2] << 32 | r.regs[0]) == 0x0023001011112222
    assert r.cpu.msr[msr.STAR] == 0x0023001011112222    # other modules read it here


def test_unknown_and_intel_only_msrs_raise_gp():
    for idx in (0x3B, 0x1A0, 0x3A, 0x12345678):
        r = run_code(asm(f"mov ecx, {idx}\nrdmsr"))
        assert r.exception[:2] == (GP, 0), hex(idx)
    r = run_code(asm("mov ecx, 0x1A0\nxor eax, eax\nxor edx, edx\nwrmsr"))
    assert r.exception[:2] == (GP, 0)


def test_rdmsr_at_cpl3_raises_gp():
    from svmsim.cpu.ops import system
    m = make_machine()
    cpu = m.cpus[0]
    cpu.cpl = 3
    cpu.regs[1] = msr.EFER
    gp_of(system.rdmsr, cpu, None)


def test_efer_rules():
    m = make_machine()              # long mode: paging on
    cpu = m.cpus[0]
    efer = cpu.efer
    gp_of(msr.wrmsr, cpu, msr.EFER, efer | (1 << 2))            # MBZ bit
    gp_of(msr.wrmsr, cpu, msr.EFER, efer & ~(1 << 8))           # LME change with PG=1
    msr.wrmsr(cpu, msr.EFER, efer & ~(1 << 10))                 # LMA is read-only: ignored
    assert cpu.efer & (1 << 10)
    msr.wrmsr(cpu, msr.EFER, efer | (1 << 12))                  # SVME: profile has SVM
    assert cpu.efer & (1 << 12)
    gp_of(msr.wrmsr, cpu, msr.VM_CR, msr.VM_CR_SVMDIS)          # SVMDIS while SVME=1
    msr.wrmsr(cpu, msr.EFER, efer)
    msr.wrmsr(cpu, msr.VM_CR, msr.VM_CR_SVMDIS)
    gp_of(msr.wrmsr, cpu, msr.EFER, efer | (1 << 12))           # SVMDIS makes SVME MBZ
    m2 = Machine(mem_size="4M", cpu="amd64-base")
    gp_of(msr.wrmsr, m2.cpus[0], msr.EFER, 1 << 12)             # no SVM in the profile
    gp_of(msr.wrmsr, m2.cpus[0], msr.EFER, 1 << 15)             # nor TCE


def test_vm_cr_lock_makes_svmdis_read_only_until_svm_key():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    msr.wrmsr(cpu, msr.SVM_KEY, 0x1234)                          # set the key while unlocked
    msr.wrmsr(cpu, msr.VM_CR, msr.VM_CR_LOCK | msr.VM_CR_SVMDIS)
    msr.wrmsr(cpu, msr.VM_CR, 0)                                 # LOCK, SVMDIS ignore writes
    assert msr.rdmsr(cpu, msr.VM_CR) == msr.VM_CR_LOCK | msr.VM_CR_SVMDIS
    assert msr.rdmsr(cpu, msr.SVM_KEY) == 0                      # the key reads as zero
    msr.wrmsr(cpu, msr.SVM_KEY, 0x9999)                          # wrong key: still locked
    assert msr.rdmsr(cpu, msr.VM_CR) & msr.VM_CR_LOCK
    msr.wrmsr(cpu, msr.SVM_KEY, 0x1234)
    assert not msr.rdmsr(cpu, msr.VM_CR) & msr.VM_CR_LOCK
    gp_of(msr.wrmsr, cpu, msr.VM_CR, 1 << 5)


def test_vm_hsave_pa_alignment_and_width():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    msr.wrmsr(cpu, msr.VM_HSAVE_PA, 0x7000)
    assert cpu.msr[msr.VM_HSAVE_PA] == 0x7000
    gp_of(msr.wrmsr, cpu, msr.VM_HSAVE_PA, 0x7008)
    gp_of(msr.wrmsr, cpu, msr.VM_HSAVE_PA, 1 << 48)


def test_pat_and_mtrr_validity():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    assert msr.rdmsr(cpu, msr.PAT) == msr.PAT_RESET
    msr.wrmsr(cpu, msr.PAT, 0x0007010600070106)
    gp_of(msr.wrmsr, cpu, msr.PAT, 0x0007040600070402)           # type 2 is reserved
    gp_of(msr.wrmsr, cpu, msr.PAT, 0x0807040600070406)
    assert msr.rdmsr(cpu, msr.MTRRCAP) & 0xFF == 8
    gp_of(msr.wrmsr, cpu, msr.MTRRCAP, 0)
    msr.wrmsr(cpu, msr.MTRR_DEF_TYPE, 0xC06)
    gp_of(msr.wrmsr, cpu, msr.MTRR_DEF_TYPE, 0xC03)
    msr.wrmsr(cpu, 0x200, 0x80000006)
    gp_of(msr.wrmsr, cpu, 0x201, 0x80000100)                     # mask bits 10:0 reserved
    gp_of(msr.wrmsr, cpu, 0x250, 0x0202020202020202)


def test_fs_base_msr_moves_the_fs_segment():
    code = asm("mov ecx, 0xC0000100\nmov eax, 0x200000\nxor edx, edx\nwrmsr\n"
               "mov qword ptr fs:[8], 0x55\nmov rbx, [0x200008]")
    r = run_code(code)
    assert r.exception is None
    assert r.cpu.segs[FS].base == 0x200000 and r.regs[3] == 0x55
    r = run_code(asm("mov ecx, 0xC0000100\nmov eax, 0\nmov edx, 0x80000000\nwrmsr"))
    assert r.exception[:2] == (GP, 0)                               # non-canonical
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    gp_of(msr.wrmsr, cpu, msr.LSTAR, 1 << 60)
    gp_of(msr.wrmsr, cpu, msr.KERNEL_GS_BASE, 0x0000800000000000)


def test_tsc_write_sets_a_per_cpu_offset_seen_by_rdtsc():
    code = asm("mov ecx, 0x10\nmov eax, 0\nmov edx, 0x100\nwrmsr\nrdtsc\nshl rdx, 32\nor rax, rdx")
    r = run_code(code)
    assert r.exception is None
    assert 0x10000000000 <= r.regs[0] < 0x10000000000 + 10**7
    cpu = r.cpu
    assert cpu.tsc_from_ns(cpu.machine.clock.now_ns) == msr.tsc_value(cpu)


def test_tsc_aux_rdtscp_and_rdpid():
    code = asm("mov ecx, 0xC0000103\nmov eax, 7\nxor edx, edx\nwrmsr\nxor ecx, ecx\nrdtscp\n"
               "mov rbx, rcx\nrdpid rsi")
    r = run_code(code)
    assert r.exception is None and r.regs[3] == 7 and r.regs[6] == 7
    gp_of(msr.wrmsr, r.cpu, msr.TSC_AUX, 1 << 32)


def test_hwcr_smmlock_is_sticky_and_syscfg_stored():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    msr.wrmsr(cpu, msr.HWCR, 1)
    msr.wrmsr(cpu, msr.HWCR, 0)
    assert msr.rdmsr(cpu, msr.HWCR) & 1
    msr.wrmsr(cpu, msr.SYSCFG, msr.SYSCFG_MEM_ENCRYPTION_MOD_EN)
    assert cpu.msr[msr.SYSCFG] >> 23 & 1


def test_apic_msrs_delegate_to_the_local_apic():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    assert cpu.lapic is not None
    base = msr.rdmsr(cpu, msr.APIC_BASE)
    assert base & ~0xFFF == 0xFEE00000 and base & (1 << 8)       # BSP
    gp_of(msr.rdmsr, cpu, 0x802)                                  # xAPIC mode: x2APIC MSRs #GP
    msr.wrmsr(cpu, msr.APIC_BASE, base | (1 << 10))               # enter x2APIC mode
    assert msr.rdmsr(cpu, 0x802) == 0                             # x2APIC ID of CPU 0
    gp_of(msr.wrmsr, cpu, msr.APIC_BASE, base | 1)                # reserved bit
    gp_of(msr.rdmsr, cpu, msr.TSC_DEADLINE)                       # AMD: no TSC-deadline MSR


def test_perf_counters_alias_and_rdpmc():
    code = asm("mov ecx, 0xC0010005\nmov eax, 1234\nxor edx, edx\nwrmsr\n"
               "mov ecx, 1\nrdpmc\nmov rbx, rax\nmov ecx, 0xC0010203\nrdmsr")
    r = run_code(code)
    assert r.exception is None and r.regs[3] == 1234 and r.regs[0] == 1234
    r = run_code(asm("mov ecx, 9\nrdpmc"))
    assert r.exception[:2] == (GP, 0)


def test_debugctl_reserved_bits_fault_and_lbr_msrs_are_read_only():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    msr.wrmsr(cpu, msr.DEBUGCTL, 1)
    assert msr.rdmsr(cpu, msr.DEBUGCTL) == 1
    gp_of(msr.wrmsr, cpu, msr.DEBUGCTL, 1 << 8)
    gp_of(msr.wrmsr, cpu, msr.LBR_FROM, 0)
    assert msr.rdmsr(cpu, msr.LBR_FROM) == 0


def test_lbr_records_the_last_taken_branch():
    """DEBUGCTL.LBR=1: LastBranchFromIP/ToIP hold the last taken branch (APM 13.1.1.4)."""
    code = asm("""
        mov ecx, 0x1d9
        mov eax, 1
        xor edx, edx
        wrmsr
        jmp 1f
        nop
    1:  mov eax, 2
        cmp eax, 3
        je 2f                      # not taken: must not be recorded
    2:  mov ecx, 0x1db
        rdmsr
        mov ebx, eax
        mov ecx, 0x1dc
        rdmsr
    """)
    r = run_code(code)
    jmp_at = CODE_ADDR + 5 + 5 + 2 + 2
    assert r.regs[3] == jmp_at and r.regs[0] == jmp_at + 3


def test_lbr_records_the_last_exception_source_and_target():
    """LastExceptionFromIP/ToIP: the interrupted RIP and the handler (APM 13.1.1.4)."""
    from svmsim.cpu.interrupts import deliver_with_escalation, SWINT
    r = run_code(asm("mov ecx, 0x1d9; mov eax, 1; xor edx, edx; wrmsr"))
    cpu = r.cpu
    cpu.idtr_base, cpu.idtr_limit = 0x3000, 0xFFF      # gate 0x40 -> 0x100800
    lo = 0x0800 | (0x08 << 16)
    hi = 0x8E00 | (0x0010 << 16)
    r.machine.bus.write(0x3000 + 0x40 * 16, 8, lo | (hi << 32))
    r.machine.bus.write(0x3000 + 0x40 * 16 + 8, 8, 0)
    cpu.rip = 0x100123
    deliver_with_escalation(cpu, 0x40, SWINT, None)
    assert msr.rdmsr(cpu, msr.LER_FROM) == 0x100123 and msr.rdmsr(cpu, msr.LER_TO) == 0x100800


def test_spec_ctrl_pred_cmd_mcg_and_patch_level():
    m = make_machine()          # kept: a CPU refers to its machine weakly
    cpu = m.cpus[0]
    msr.wrmsr(cpu, msr.SPEC_CTRL, 4)
    assert msr.rdmsr(cpu, msr.SPEC_CTRL) == 4
    gp_of(msr.wrmsr, cpu, msr.SPEC_CTRL, 8)
    msr.wrmsr(cpu, msr.PRED_CMD, 1)
    gp_of(msr.rdmsr, cpu, msr.PRED_CMD)
    assert msr.rdmsr(cpu, msr.MCG_CAP) & 0xFF == 4
    gp_of(msr.wrmsr, cpu, 0x401, 5)                               # MC0_STATUS non-zero
    msr.wrmsr(cpu, 0x401, 0)
    gp_of(msr.rdmsr, cpu, 0x400 + 4 * 4)                           # beyond the banks
    assert msr.rdmsr(cpu, msr.PATCH_LEVEL) == profiles.get("epyc").patch_level


def test_xsave_compacted_size_is_reported_with_xsavec():
    """CPUID Fn0000_000D_EBX_x1 gives the XSAVEC/XSAVES area size for
    XCR0 | XSS (AMD APM vol 3, E.3.8); Linux sizes its FPU buffers from it
    and disables XSAVE when it is 0."""
    m = Machine(mem_size="4M")
    cpu = m.cpus[0]
    eax, ebx, _, _ = cpuid(cpu, 0xD, 1)
    if eax & 0b1010:
        assert ebx == cpuid(cpu, 0xD, 0)[1] == 576


def test_fsrm_is_reported_only_with_erms():
    """FSRM (fast short REP MOVSB) refines ERMS; Linux's memmove takes FSRM
    to mean ERMS and, with FSRM alone, runs its 32-byte loop on short copies
    past their end.  REP MOVSB/STOSB are implemented (by iced Code), so both
    are reported on the epyc profile."""
    fs = cpuid_mod.features(Machine(mem_size="4M"))
    assert "fsrm" not in fs or "erms" in fs
    assert "erms" in fs
