"""SKINIT: secure startup of a secure loader (APM vol 2, 15.27).

"SKINIT takes the physical base address of the SLB as its only input
operand in EAX, and performs the following steps" (15.27.6):

1. reinitialize the processor as for INIT, then flat 32-bit protected mode
   with paging off: CS = 8h (base 0, limit 4G, read only), SS = 10h
   (read/write, expand-up), DS/ES/FS/GS left as 16-bit real-mode segments;
   GPRs cleared but EAX (the SLB), EDX (family, model, stepping) and ESP;
   caches, x87 and SSE control registers and most MSRs kept; EFER cleared;
   VM_CR.DPD, R_INIT and DIS_A20M set;
2. EAX = SLB base (bits 15:0 cleared); SL_DEV protects its 64 KiB from
   devices (15.24.8);
3. the multiprocessor handshake: the APs must be in the INIT state
   (15.27.8); a later Startup IPI starts each with GIF = 0 and those VM_CR
   bits (``startup``);
4-5. the SL image (its length is the SLB's second word) goes to the TPM
   by the locality-4 HASH_START / HASH_DATA / HASH_END cycles
   (devices/tpm.py);
6. GIF = 0;
7. ESP = SLB base + 64 KiB;
8. jump to SLB base + the entry offset (the SLB's first word).

Availability (APM vol 3 SKINIT, as STGI/CLGI): #UD with EFER.SVME = 0
unless SVM-Lock or SKINIT/DEV is supported (CPUID Fn8000_000A_EDX[2],
Fn8000_0001_ECX[12]); #UD outside protected mode; #GP(0) at CPL > 0.  The SKINIT intercept is checked in guest mode
(guards.py).  A guest's SKINIT without it: the manual does not describe it;
svmsim reads step 1 as it models a non-intercepted INIT in guest mode
(events.init_in_guest): the reinitialization leaves guest mode, so the
guest's EAX names a system-physical SLB and the secure loader owns the
machine -- why a hypervisor must intercept SKINIT (noted at run time).

svmsim's readings where the manual is silent (docs/DESIGN.md): an AP not in
the INIT state at SKINIT is put there by the handshake (and noted); the
local APIC is processor-external and keeps its state (pending device
interrupts stay pending, as 15.27.6 requires); NMI and SMI already pending
stay pending; once any CPU executed SKINIT, every later Startup IPI starts
its AP the secure way (until the machine is reset).
"""
from ..cpu.exceptions import CpuException
from ..cpu.segments import Segment, CS, SS

SLB_SIZE = 0x10000
VM_CR = 0xC0010114
VM_CR_SECURE = 0x7                    # DPD | R_INIT | DIS_A20M
CODE32 = Segment(0x08, 0, 0xFFFFFFFF, 0xC9B)
STACK32 = Segment(0x10, 0, 0xFFFFFFFF, 0xC93)


def check(cpu, ins=None) -> None:
    """SKINIT's #UD and #GP checks (before its intercept, as for the SVM
    instructions): #UD with EFER.SVME = 0 unless SVM-Lock or SKINIT/DEV is
    supported, or outside protected mode; #GP(0) at CPL > 0."""
    from .checks import check_vmrun_instruction
    bad = check_vmrun_instruction(cpu, None, "SKINIT", rax=False)
    if bad is not None:
        raise CpuException(bad[0], bad[1], detail=bad[2])


def skinit(cpu) -> None:
    m = cpu.machine
    if cpu.svm_guest:
        m.note(f"SKINIT in guest mode (ASID {cpu.svm.asid}) without the SKINIT intercept: the "
               "processor is reinitialized as by INIT, leaving guest mode; EAX is taken as a "
               "system-physical SLB address")
    base = cpu.regs[0] & 0xFFFF0000
    entry, length = m.bus.read(base, 2), m.bus.read(base + 2, 2)
    _handshake(cpu)
    _reinit(cpu)
    m.dev.set_sl_dev(base)
    image = m.bus.read_bytes(base, length)
    tpm = getattr(m, "tpm", None)
    if tpm is not None:
        tpm.hash_start()
        tpm.hash_data(image)
        tpm.hash_end()
    cpu.gif = False
    # "Because of the processor initialization performed, SKINIT does not
    # honor instruction or data breakpoint traps, or trace traps due to
    # EFLAGS.TF" (APM 15.27.6)
    cpu.no_traps = True
    cpu.regs[0] = base
    cpu.regs[4] = base + SLB_SIZE
    cpu.rip = base + entry
    m.skinit_done = True
    m.counters["SKINIT"] += 1
    if m.listeners:
        m.emit({"type": "skinit", "cpu": cpu.index, "slb": base, "length": length, "rip": cpu.rip})


def _handshake(cpu) -> None:
    m = cpu.machine
    for other in m.cpus:
        if other is not cpu and not other.wait_for_sipi:
            m.note(f"SKINIT on cpu{cpu.index}: cpu{other.index} was not in the INIT state (the driver must "
                   "INIT the APs first, APM 15.27.8); the handshake put it there")
            m.do_init(other)


def _reinit(cpu) -> None:
    """Step 1: INIT's reinitialization, keeping what SKINIT keeps."""
    keep = (cpu.lapic, cpu.msr, cpu.tsc_offset, cpu.fpu_fcw, cpu.mxcsr, cpu.nmi_pending, cpu.smi_pending)
    cpu.reset()
    (cpu.lapic, cpu.msr, cpu.tsc_offset, cpu.fpu_fcw, cpu.mxcsr, cpu.nmi_pending, cpu.smi_pending) = keep
    cpu.cr0 |= 1                                  # protected mode, paging off
    cpu.segs[CS], cpu.segs[SS] = CODE32.copy(), STACK32.copy()
    cpu.msr[VM_CR] = cpu.msr.get(VM_CR, 0) | VM_CR_SECURE
    cpu.update_mode()
    cpu.kick()


def startup(cpu) -> None:
    """15.27.8: after an SKINIT, "each AP responds to a startup IPI by
    additionally clearing its GIF and setting the DPD, R_INIT and DIS_A20M
    flags in the VM_CR register"."""
    if getattr(cpu.machine, "skinit_done", False):
        cpu.gif = False
        cpu.msr[VM_CR] = cpu.msr.get(VM_CR, 0) | VM_CR_SECURE
