"""System management mode (APM vol 2, chapter 10; SVM's part: 15.22, 15.30.3).

An SMI (``Cpu.signal_smi``: an APIC SMI message, the chipset's APM port
B2h) is taken between instructions while GIF = 1 and the CPU is not already
in SMM.  Entering SMM saves the state into the state-save area at
SMBASE + FE00h in the AMD64 format (table 10-2, declared once in ``SAVE``)
and starts the handler at SMBASE + 8000h with the initial state of table
10-3: CS.sel = SMBASE >> 4, CS.base = SMBASE, every limit 4 GiB, other
selectors and bases 0, RIP = 8000h, RFLAGS = 2, CR0.PE/EM/TS/PG = 0,
CR4 = 0, EFER = 0, DR7 = 400h, GPRs and descriptor tables unchanged.  NMI
and further SMIs are blocked.  RSM restores the saved state (SMBASE from
its field: the revision's bit 17, SMBASE relocation, is set) and leaves SMM.

The state of an SMI taken in a guest (no SMI intercept, or HWCR.SMMLOCK:
"The SMI intercept is ignored when HWCR[SMMLOCK] is set", 15.13.3) is the
guest's: the virtualization extension (``cpu.hooks.smm_enter``) leaves
guest mode and fills the SVM fields (guest flag, VMCB address, host
CR0/CR4/EFER, nested CR3, guest PAT); RSM hands them back
(``hooks.smm_leave``), which re-enters the guest.

MSRs: SMM_BASE (C001_0111h, reset 3_0000h), SMM_ADDR and SMM_MASK (ASeg /
TSeg, memory/smram.py), SMM_CTL (C001_0116h, write-only: DISMISS, ENTER,
SMI_CYCLE, EXIT, RSM_CYCLE; 15.30.3).  HWCR.SMMLOCK locks them: "Writes to
the SMM_CTL MSR cause a #GP if platform firmware has locked the SMM control
registers by setting HWCR[SMMLOCK]" (15.30.3); SMM_BASE, SMM_ADDR and
SMM_MASK become read-only (writes ignored, noted: the PPRs call them
read-only, the APM names no fault).

svmsim's readings (docs/DESIGN.md): SMI ranks above INIT, NMI and INTR and
waits out an interrupt shadow; RSM of a state the manual calls invalid
(CR0.PG without PE, NW without CD, long mode without PAE, reserved CR4 or
EFER bits) is a shutdown; RSM flushes the TLB; the I/O restart fields are
written 0 (no I/O trapping), the SVM virtual-interrupt field 0.
"""
import struct

from .exceptions import CpuException, UD, Shutdown, gp
from .ops import handles
from .segments import Segment, ES, CS, SS, DS, FS, GS
from .state import CR0_PE, CR0_EM, CR0_TS, CR0_PG, CR0_NW, CR0_CD, EFER_LME, EFER_LMA
from ..memory import smram

SMM_BASE, SMM_ADDR, SMM_MASK, SMM_CTL = 0xC0010111, smram.SMM_ADDR, smram.SMM_MASK, 0xC0010116
HWCR, HWCR_SMMLOCK = 0xC0010015, 1
SMBASE_RESET = 0x30000
REVISION = 0x00020064                 # bit 17: SMBASE relocation; level 64h (AMD64 map)
CTL_DISMISS, CTL_ENTER, CTL_SMI_CYCLE, CTL_EXIT, CTL_RSM_CYCLE = 1, 2, 4, 8, 16

# The AMD64 state-save area (APM vol 2, table 10-2), offsets from SMBASE:
# name -> (offset, size).  Segments are selector (2), attributes (2, the
# VMCB's 12-bit format), limit (4), base (8).
SAVE_BASE, SAVE_SIZE = 0xFE00, 0x200
SEG_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS")
SAVE = {**{name: (0xFE00 + 16 * i, 16) for i, name in enumerate(SEG_NAMES)},
        "GDTR.LIMIT": (0xFE64, 2), "GDTR.BASE": (0xFE68, 8), "LDTR": (0xFE70, 16),
        "IDTR.LIMIT": (0xFE84, 2), "IDTR.BASE": (0xFE88, 8), "TR": (0xFE90, 16),
        "IO_RESTART_RIP": (0xFEA0, 8), "IO_RESTART_RCX": (0xFEA8, 8), "IO_RESTART_RSI": (0xFEB0, 8),
        "IO_RESTART_RDI": (0xFEB8, 8), "IO_RESTART_DWORD": (0xFEC0, 4), "IO_RESTART": (0xFEC8, 1),
        "AUTO_HALT_RESTART": (0xFEC9, 1), "EFER": (0xFED0, 8), "SVM_GUEST": (0xFED8, 8),
        "SVM_GUEST_VMCB": (0xFEE0, 8), "SVM_GUEST_VINTR": (0xFEE8, 8), "REVISION": (0xFEFC, 4),
        "SMBASE": (0xFF00, 4), "GUEST_PAT": (0xFF20, 8), "HOST_EFER": (0xFF28, 8),
        "HOST_CR4": (0xFF30, 8), "NESTED_CR3": (0xFF38, 8), "HOST_CR0": (0xFF40, 8),
        "CR4": (0xFF48, 8), "CR3": (0xFF50, 8), "CR0": (0xFF58, 8), "DR7": (0xFF60, 8),
        "DR6": (0xFF68, 8), "RFLAGS": (0xFF70, 8), "RIP": (0xFF78, 8),
        **{f"GPR{i}": (0xFFF8 - 8 * i, 8) for i in range(16)}}   # RAX FFF8h ... R15 FF80h
SVM_FIELDS = ("SVM_GUEST", "SVM_GUEST_VMCB", "SVM_GUEST_VINTR", "GUEST_PAT", "HOST_EFER",
              "HOST_CR4", "NESTED_CR3", "HOST_CR0")
CR4_DEFINED = 0x3F7FFF                 # the CR4 bits svmsim's CPUs know (reserved: the rest)
EFER_DEFINED = 0xFD01


class SaveArea:
    """The 512 bytes at SMBASE + FE00h, read and written in one go (they are
    SMRAM: DRAM behind the SMRAM window, so the CPU in SMM writes them)."""

    def __init__(self, cpu, smbase):
        self.cpu, self.addr = cpu, smbase + SAVE_BASE
        self.data = bytearray(SAVE_SIZE)

    def load(self):
        self.data[:] = _dram(self.cpu).read_bytes(self.addr, SAVE_SIZE)
        return self

    def store(self):
        _dram(self.cpu).write_bytes(self.addr, bytes(self.data))

    def __getitem__(self, name):
        off, size = SAVE[name]
        return int.from_bytes(self.data[off - SAVE_BASE:off - SAVE_BASE + size], "little")

    def __setitem__(self, name, value):
        off, size = SAVE[name]
        self.data[off - SAVE_BASE:off - SAVE_BASE + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def segment(self, name) -> Segment:
        off = SAVE[name][0] - SAVE_BASE
        sel, attr, limit, base = struct.unpack_from("<HHIQ", self.data, off)
        return Segment(sel, base, limit, attr & 0xFFF)

    def set_segment(self, name, s: Segment):
        struct.pack_into("<HHIQ", self.data, SAVE[name][0] - SAVE_BASE, s.sel, s.attr & 0xFFF,
                         s.limit & 0xFFFFFFFF, s.base & ((1 << 64) - 1))


class _Dram:
    """The CPU's path to SMRAM while it is in SMM: the bus, as that CPU."""

    def __init__(self, cpu):
        self.cpu = cpu

    def read_bytes(self, spa, n):
        m = self.cpu.machine
        current, m.current_cpu = m.current_cpu, self.cpu
        try:
            return m.bus.read_bytes(spa, n)
        finally:
            m.current_cpu = current

    def write_bytes(self, spa, data):
        m = self.cpu.machine
        current, m.current_cpu = m.current_cpu, self.cpu
        try:
            m.bus.write_bytes(spa, data)
        finally:
            m.current_cpu = current


def _dram(cpu):
    return _Dram(cpu)


def smbase(cpu) -> int:
    return cpu.msr.get(SMM_BASE, SMBASE_RESET)


# ---------------------------------------------------------------- entry
def enter(cpu, source: str) -> None:
    """Take the pending SMI: save the state, start the handler (table 10-3)."""
    cpu.smi_pending = False
    base = smbase(cpu)
    was_halted = cpu.halted
    svm = cpu.hooks.smm_enter(cpu) if cpu.svm_guest else {}
    cpu.smm = True                              # SMRAM is visible from here on
    save = SaveArea(cpu, base)
    _save_state(cpu, save, was_halted, base, svm)
    save.store()
    cpu.smm_nmi_blocked = cpu.nmi_blocked
    cpu.nmi_blocked = True
    rip = cpu.rip
    _initial_state(cpu, base)
    m = cpu.machine
    m.counters["SMIs"] += 1
    if m.listeners:
        m.emit({"type": "smi", "cpu": cpu.index, "source": source, "smbase": base, "rip": rip,
                "guest": bool(svm.get("SVM_GUEST"))})


def _save_state(cpu, save, halted, base, svm):
    for i, name in enumerate(SEG_NAMES):
        save.set_segment(name, cpu.segs[i])
    save.set_segment("LDTR", cpu.ldtr)
    save.set_segment("TR", cpu.tr)
    save["GDTR.LIMIT"], save["GDTR.BASE"] = cpu.gdtr_limit, cpu.gdtr_base
    save["IDTR.LIMIT"], save["IDTR.BASE"] = cpu.idtr_limit, cpu.idtr_base
    save["AUTO_HALT_RESTART"] = 1 if halted else 0
    for name, value in (("EFER", cpu.efer), ("REVISION", REVISION), ("SMBASE", base), ("CR4", cpu.cr4),
                        ("CR3", cpu.cr3), ("CR0", cpu.cr0), ("DR7", cpu.dr[7]), ("DR6", cpu.dr[6]),
                        ("RFLAGS", cpu.get_rflags()), ("RIP", cpu.rip), *svm.items()):
        save[name] = value
    for i in range(16):
        save[f"GPR{i}"] = cpu.regs[i]


def _initial_state(cpu, base) -> None:
    cpu.halted = False
    cpu.shadow = False
    cpu.efer = 0
    cpu.cr0 &= ~(CR0_PE | CR0_EM | CR0_TS | CR0_PG)
    cpu.cr4 = 0
    cpu.dr[7] = 0x400
    cpu.set_rflags(0x2)
    cpu.rip = 0x8000
    flat = 0xFFFFFFFF
    for i in (ES, SS, DS, FS, GS):
        cpu.segs[i] = Segment(0, 0, flat, 0x893)
    cpu.segs[CS] = Segment((base >> 4) & 0xFFFF, base, flat, 0x89B)
    cpu.cpl = 0
    cpu.tlb.drop_fast()
    cpu.update_mode()


# ---------------------------------------------------------------- RSM
@handles("RSM", ends_block=True)
def rsm(cpu, ins):
    """RSM (APM vol 3): #UD outside SMM; otherwise the saved state returns."""
    if not cpu.smm:
        raise CpuException(UD, detail="RSM outside system management mode")
    save = SaveArea(cpu, smbase(cpu)).load()
    bad = _invalid(save)
    if bad:
        raise Shutdown(f"RSM: invalid state in the state-save area: {bad}")
    _restore_state(cpu, save)
    cpu.msr[SMM_BASE] = save["SMBASE"]           # REVISION bit 17: SMBASE relocation
    cpu.nmi_blocked = cpu.smm_nmi_blocked
    cpu.smm = False
    if save["SVM_GUEST"] & 1:
        cpu.hooks.smm_leave(cpu, {name: save[name] for name in SVM_FIELDS})
    cpu.tlb.flush_all("rsm")
    cpu.update_mode()
    cpu.kick()                                   # a held SMI or NMI may be taken now
    m = cpu.machine
    if m.listeners:
        m.emit({"type": "rsm", "cpu": cpu.index, "rip": cpu.rip, "guest": cpu.svm_guest})


def _invalid(save) -> str:
    cr0, cr4, efer = save["CR0"], save["CR4"], save["EFER"]
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        return "CR0.PG = 1 with CR0.PE = 0"
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        return "CR0.NW = 1 with CR0.CD = 0"
    if cr0 >> 32 or cr4 & ~CR4_DEFINED:
        return "reserved CR0 or CR4 bits set"
    if efer & ~EFER_DEFINED:
        return "reserved EFER bits set"
    if efer & EFER_LME and cr0 & CR0_PG and not cr4 & (1 << 5):
        return "long mode with CR4.PAE = 0"
    return ""


def _restore_state(cpu, save) -> None:
    cpu.efer = save["EFER"] & ~EFER_LMA
    cpu.cr0, cpu.cr3, cpu.cr4 = save["CR0"], save["CR3"], save["CR4"]
    if cpu.efer & EFER_LME and cpu.cr0 & CR0_PG:
        cpu.efer |= EFER_LMA
    for i, name in enumerate(SEG_NAMES):
        cpu.segs[i] = save.segment(name)
    cpu.ldtr, cpu.tr = save.segment("LDTR"), save.segment("TR")
    cpu.gdtr_limit, cpu.gdtr_base = save["GDTR.LIMIT"], save["GDTR.BASE"]
    cpu.idtr_limit, cpu.idtr_base = save["IDTR.LIMIT"], save["IDTR.BASE"]
    for i in range(16):
        cpu.regs[i] = save[f"GPR{i}"]
    cpu.dr[6], cpu.dr[7] = save["DR6"] & 0xFFFFFFFF, save["DR7"] & 0xFFFFFFFF
    cpu.set_rflags(save["RFLAGS"])
    cpu.rip = save["RIP"]
    cpu.cpl = (cpu.segs[SS].attr >> 5) & 3 if cpu.cr0 & CR0_PE else 0
    cpu.halted = bool(save["AUTO_HALT_RESTART"] & 1)


# ---------------------------------------------------------------- MSRs
def _locked(cpu) -> bool:
    return bool(cpu.msr.get(HWCR, 0) & HWCR_SMMLOCK)


def _locked_write(cpu, idx, name) -> bool:
    if _locked(cpu):
        cpu.machine.note(f"WRMSR {name} ignored: HWCR.SMMLOCK makes it read-only")
        return True
    return False


def smm_base_read(cpu, idx):
    return smbase(cpu)


def smm_base_write(cpu, idx, value):
    if value >> 32:
        raise gp(0, f"WRMSR SMM_BASE {value:#x}: bits 63:32 are reserved")
    if not _locked_write(cpu, idx, "SMM_BASE"):
        cpu.msr[idx] = value


def smm_range_write(cpu, idx, value):
    """SMM_ADDR (TSegBase 47:17) and SMM_MASK (TSegMask 47:17, the memory
    types, TClose/AClose, TValid/AValid: 10.2.5)."""
    keep = smram.TSEG_FIELD | (0x773F if idx == SMM_MASK else 0)
    limit = (1 << cpu.maxphyaddr) - 1
    if value & ~keep or value & smram.TSEG_FIELD & ~limit:
        raise gp(0, f"WRMSR {idx:#x} {value:#x}: reserved bits")
    if not _locked_write(cpu, idx, "SMM_ADDR" if idx == SMM_ADDR else "SMM_MASK"):
        cpu.msr[idx] = value
        smram.update(cpu.machine)


def smm_ctl_read(cpu, idx):
    raise gp(0, "RDMSR SMM_CTL: the register is write-only (15.30.3)")


def smm_ctl_write(cpu, idx, value):
    """SMM_CTL (15.30.3): the bits act in the order ENTER, SMI_CYCLE,
    DISMISS, RSM_CYCLE, EXIT.  The special bus cycles have no listener in
    svmsim; ENTER in SMM and EXIT outside it are undefined (ignored, noted)."""
    if _locked(cpu):
        raise gp(0, "WRMSR SMM_CTL with HWCR.SMMLOCK set")
    if value & ~0x1F:
        raise gp(0, f"WRMSR SMM_CTL {value:#x}: reserved bits")
    m = cpu.machine
    if value & CTL_ENTER:
        if cpu.smm:
            m.note("SMM_CTL.ENTER while in SMM (undefined): ignored")
        else:
            cpu.smm, cpu.smm_nmi_blocked, cpu.nmi_blocked = True, cpu.nmi_blocked, True
    if value & CTL_DISMISS:
        cpu.smi_pending = False
    if value & CTL_EXIT:
        if not cpu.smm:
            m.note("SMM_CTL.EXIT outside SMM (undefined): ignored")
        else:
            cpu.smm, cpu.nmi_blocked = False, cpu.smm_nmi_blocked
            cpu.kick()


MSRS = {SMM_BASE: ("SMM_BASE", smm_base_read, smm_base_write),
        SMM_ADDR: ("SMM_ADDR", lambda cpu, idx: cpu.msr.get(idx, 0), smm_range_write),
        SMM_MASK: ("SMM_MASK", lambda cpu, idx: cpu.msr.get(idx, 0), smm_range_write),
        SMM_CTL: ("SMM_CTL", smm_ctl_read, smm_ctl_write)}
