"""SMRAM: memory only system management mode sees (APM vol 2, 10.2.5;
QEMU's i440FX SMRAM control register).

Two agents decide what an access to SMRAM reaches:

* the processor's SMM_ADDR / SMM_MASK (C001_0112h / C001_0113h): ASeg
  (A_0000h-B_FFFFh) with AValid, TSeg (the addresses whose bits under
  TSegMask equal TSegBase) with TValid.  Outside SMM "the processor directs
  accesses to MMIO" (there is no device there in svmsim: reads all ones,
  writes dropped); in SMM they reach DRAM.
* the chipset: the i440FX SMRAM register (72h: G_SMRAME enables SMRAM at
  A_0000h, D_OPEN shows it outside SMM, D_LCK locks D_OPEN off), which
  QEMU's pc machine implements and SeaBIOS programs.

Each SMRAM range is a window on the physical bus in front of its DRAM; the
window asks the executing CPU whether it is in SMM.  Devices never reach
SMRAM: the DMA port treats a window as a master abort (memory/dma.py).

svmsim's simplifications (docs/DESIGN.md): the ASeg/TSeg memory types and
the AClose/TClose bits (data accesses in SMM sent to MMIO) are stored, not
applied; TSegMask is taken as a contiguous mask; a CPU-side window applies
to every CPU with the same range (all CPUs program the same SMM_ADDR/MASK).
"""
ASEG_BASE, ASEG_SIZE = 0xA0000, 0x20000
SMM_ADDR, SMM_MASK = 0xC0010112, 0xC0010113
MASK_AVALID, MASK_TVALID = 0x1, 0x2
TSEG_FIELD = ((1 << 48) - 1) & ~0x1FFFF          # bits 47:17 of SMM_ADDR / SMM_MASK


def tseg_range(cpu):
    """(base, size) of this CPU's TSeg when TValid, else None."""
    mask = cpu.msr.get(SMM_MASK, 0)
    if not mask & MASK_TVALID:
        return None
    tmask = mask & TSEG_FIELD
    base = cpu.msr.get(SMM_ADDR, 0) & tmask
    return base, (~tmask & TSEG_FIELD) + 0x20000


class SmramWindow:
    """One SMRAM range: DRAM for a CPU that may see it, open bus otherwise."""

    def __init__(self, machine, base, size, name, visible):
        self.machine, self.base, self.size, self.name = machine, base, size, name
        self.visible = visible              # visible(cpu) -> bool

    def _dram(self, offset):
        m = self.machine
        cpu = m.current_cpu
        if cpu is None or not self.visible(cpu):
            return None
        return m.bus.dram_offset(self.base + offset)

    def mmio_read(self, offset, size):
        off = self._dram(offset)
        if off is None:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.machine.bus.ram.buf[off:off + size], "little")

    def mmio_write(self, offset, size, value):
        off = self._dram(offset)
        if off is None:
            return
        bus = self.machine.bus
        bus.ram.buf[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for watch in bus.write_watchers:
            watch(off, size)


def aseg_visible(cpu) -> bool:
    """ASeg: in SMM, or opened by the chipset's D_OPEN (unless the CPU's
    AValid claims it for SMM)."""
    if cpu.smm:
        return True
    chipset = cpu.machine.pci.host.smram if getattr(cpu.machine, "pci", None) else 0
    return bool(chipset & D_OPEN) and not cpu.msr.get(SMM_MASK, 0) & MASK_AVALID


G_SMRAME, D_LCK, D_CLS, D_OPEN = 0x08, 0x10, 0x20, 0x40


def update(machine) -> None:
    """(Re)build the SMRAM windows from the chipset register and every CPU's
    SMM_MASK/SMM_ADDR; drop fast paths that may have cached the DRAM."""
    bus = machine.bus
    for w in list(getattr(machine, "smram_windows", ())):
        bus.remove_mmio(w.base)
    windows = []
    chipset = machine.pci.host.smram if getattr(machine, "pci", None) else 0
    if chipset & G_SMRAME or any(c.msr.get(SMM_MASK, 0) & MASK_AVALID for c in machine.cpus):
        windows.append(SmramWindow(machine, ASEG_BASE, ASEG_SIZE, "smram aseg", aseg_visible))
    for rng in sorted({r for r in (tseg_range(c) for c in machine.cpus) if r is not None}):
        base, size = rng
        windows.append(SmramWindow(machine, base, size, "smram tseg",
                                   lambda cpu, r=rng: cpu.smm or tseg_range(cpu) != r))
    for w in windows:
        bus.add_mmio(w.base, w.size, w, w.name)
    machine.smram_windows = windows
    for cpu in machine.cpus:
        cpu.tlb.drop_fast()
