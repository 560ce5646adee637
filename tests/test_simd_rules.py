"""The architectural rules around the x87, MMX, SSE and AVX units: which
control bits make an instruction #UD or #NM, unmasked exceptions (#XM, #MF),
alignment, and how each encoding treats the rest of the register (AMD APM
vol 4 and vol 5 "exceptions" of each instruction, vol 2 8.2 for the vectors;
the behaviours themselves are also checked against the host in
test_simd_native.py / test_x87_native.py where they do not fault)."""
from cpuharness import run_code, asm, DATA_ADDR
from svmsim.cpu.exceptions import UD, NM, XF, MF, GP

CR0_EM, CR0_TS, CR0_MP = 4, 8, 2
OSFXSR, OSXMMEXCPT, OSXSAVE = 1 << 9, 1 << 10, 1 << 18


def run(text, cr0_set=0, cr0_clear=0, cr4=OSFXSR | OSXMMEXCPT | OSXSAVE, xcr0=7, mxcsr=None, prep=None):
    def setup(m, cpu):
        cpu.cr0 = (cpu.cr0 | cr0_set) & ~cr0_clear
        cpu.cr4 |= cr4
        cpu.xcr0 = xcr0
        if mxcsr is not None:
            cpu.mxcsr = mxcsr
        if prep:
            prep(cpu)
        cpu.update_mode()
    return run_code(asm(text), setup=setup, regs={"rsi": DATA_ADDR})


def vec(r):
    return r.exception[0] if r.exception else None


def test_sse_needs_osfxsr_and_no_em_and_takes_nm_with_ts():
    assert vec(run("addps xmm0, xmm1", cr4=0)) == UD
    assert vec(run("addps xmm0, xmm1", cr0_set=CR0_EM)) == UD
    assert vec(run("addps xmm0, xmm1", cr0_set=CR0_TS)) == NM
    assert vec(run("addps xmm0, xmm1")) is None


def test_x87_and_mmx_take_nm_with_em_or_ts():
    assert vec(run("fld1", cr0_set=CR0_EM)) == NM
    assert vec(run("fld1", cr0_set=CR0_TS)) == NM
    assert vec(run("paddb mm0, mm1", cr0_set=CR0_EM)) == UD        # MMX: EM is #UD
    assert vec(run("paddb mm0, mm1", cr0_set=CR0_TS)) == NM
    assert vec(run("fwait", cr0_set=CR0_TS)) is None                # WAIT: TS alone is fine
    assert vec(run("fwait", cr0_set=CR0_TS | CR0_MP)) == NM


def test_vex_needs_osxsave_and_ymm_in_xcr0():
    assert vec(run("vaddps ymm0, ymm1, ymm2", cr4=OSFXSR)) == UD
    assert vec(run("vaddps xmm0, xmm1, xmm2", xcr0=3)) == UD
    assert vec(run("vaddps ymm0, ymm1, ymm2", cr0_set=CR0_TS)) == NM
    assert vec(run("vaddps ymm0, ymm1, ymm2", cr0_set=CR0_EM)) is None   # EM does not apply to VEX


def test_unmasked_simd_exception_is_xm_or_ud_and_leaves_the_destination():
    def prep(cpu):
        cpu.xmm[0] = 0x3F800000          # 1.0f
        cpu.xmm[1] = 0
    r = run("divss xmm0, xmm1", mxcsr=0x1F80 & ~0x200, prep=prep)       # ZM clear
    assert vec(r) == XF
    assert r.cpu.xmm[0] == 0x3F800000 and r.cpu.mxcsr & 4                # ZE set, no result
    r = run("divss xmm0, xmm1", mxcsr=0x1F80 & ~0x200, prep=prep, cr4=OSFXSR)
    assert vec(r) == UD                                                  # CR4.OSXMMEXCPT = 0
    r = run("divss xmm0, xmm1", prep=prep)
    assert vec(r) is None and r.cpu.xmm[0] == 0x7F800000                 # masked: infinity


def test_pre_computation_exception_wins_over_post():
    """0/0 in one lane (IE) and 1/3 in another (PE), both unmasked: only IE
    is reported (APM vol 4, 4.x SIMD floating-point exception priority)."""
    def prep(cpu):
        cpu.xmm[0] = 0x3F800000 << 32
        cpu.xmm[1] = 0x40400000 << 32
    r = run("divps xmm0, xmm1", mxcsr=0x1F80 & ~(0x80 | 0x1000), prep=prep)
    assert vec(r) == XF and r.cpu.mxcsr & 0x3F == 1


def test_x87_unmasked_exception_is_delivered_at_the_next_waiting_instruction():
    r = run("fninit\nfldcw [rsi]\nfld1\nfldz\nfdivp st(1), st\nfnstsw ax\nfadd st, st",
            prep=lambda cpu: cpu.write(0, DATA_ADDR, 2, 0x37F & ~4))       # ZM clear
    assert vec(r) == MF
    assert r.regs[0] & 0x84 == 0x84                                      # ZE and ES seen by FNSTSW
    assert r.exception[2] == r.cpu.rip                                   # #MF at the FADD


def test_legacy_alignment_and_vex_freedom():
    assert vec(run("addps xmm0, [rsi+4]")) == GP
    assert vec(run("movups xmm0, [rsi+4]")) is None
    assert vec(run("vaddps xmm0, xmm1, [rsi+4]")) is None
    assert vec(run("vmovaps ymm0, [rsi+16]")) == GP                      # 32-byte aligned form
    assert vec(run("lddqu xmm0, [rsi+3]")) is None


def test_encodings_and_the_upper_half():
    def prep(cpu):
        for i in range(4):
            cpu.ymmh[i] = 0x1234
    r = run("addps xmm0, xmm1\nvaddps xmm2, xmm2, xmm3", prep=prep)
    assert r.cpu.ymmh[0] == 0x1234                                        # legacy SSE keeps it
    assert r.cpu.ymmh[2] == 0                                             # VEX.128 clears it
    r = run("vzeroupper", prep=prep)
    assert r.cpu.ymmh[:4] == [0, 0, 0, 0]


def test_mmx_state_transition():
    def prep(cpu):
        cpu.fpu_fsw = 3 << 11
        cpu.fpu_ftw = 0xFFFF
    r = run("movq mm1, [rsi]", prep=prep)
    assert (r.cpu.fpu_fsw >> 11) & 7 == 0 and r.cpu.fpu_ftw == 0          # TOP=0, all valid
    assert r.cpu.fpu_st[1] >> 64 == 0xFFFF                                # exponent all ones
    r = run("movq mm1, [rsi]\nemms", prep=prep)
    assert r.cpu.fpu_ftw == 0xFFFF


def test_cpuid_xsave_leaf_follows_xcr0():
    r = run("xor ecx, ecx\nmov eax, 0xd\ncpuid", xcr0=3)
    assert r.regs[3] == 576 and r.regs[0] == 7 and r.regs[1] == 832
    r = run("xor ecx, ecx\nmov eax, 0xd\ncpuid", xcr0=7)
    assert r.regs[3] == 832


def test_xsave_and_xrstor_round_trip_the_ymm_component():
    def prep(cpu):
        cpu.xmm[5], cpu.ymmh[5] = 0x55, 0xAA
    r = run("mov eax, 7\nxor edx, edx\nxsave [rsi]\nvzeroall\nxrstor [rsi]", prep=prep)
    assert vec(r) is None and r.cpu.xmm[5] == 0x55 and r.cpu.ymmh[5] == 0xAA
    assert r.cpu.read(0, DATA_ADDR + 576 + 16 * 5, 8) == 0xAA
    assert r.cpu.read(0, DATA_ADDR + 512, 8) & 7 == 7                    # XSTATE_BV
    r = run("mov eax, 7\nxor edx, edx\nxsaves [rsi]\nvzeroall\nxrstors [rsi]", prep=prep)
    assert vec(r) is None and r.cpu.ymmh[5] == 0xAA
    assert r.cpu.read(0, DATA_ADDR + 520, 8) == (1 << 63) | 7            # XCOMP_BV


def test_mmx_with_pending_x87_exception_and_cr0_ne_clear():
    """With CR0.NE = 0 a pending unmasked x87 exception is reported through
    FERR# (IRQ 13, APM vol 2, 8.2.17) and the MMX instruction still runs;
    found by the random-code campaign (it raised nothing and crashed)."""
    def setup(m, cpu):
        cpu.cr0 &= ~0x20
    code = asm(f"fninit\nmov word ptr [{DATA_ADDR:#x}], 0x37B\nfldcw [{DATA_ADDR:#x}]\n"
               "fld1\nfldz\nfdivp st(1), st\nmov eax, 7\nmovd mm0, eax\nmovd ebx, mm0")
    r = run_code(code, setup=setup)
    assert r.exception is None and r.regs[3] == 7
