"""What SeaBIOS leaves in the platform when QEMU 7.2 boots a kernel with -kernel.

A kernel written for QEMU finds the PC as its firmware left it, and some
kernels depend on it (a first STI with the 8259 untouched takes the PIT's
IRQ 0 at vector 08h).  Each value below was read back on QEMU 7.2 (TCG,
-nodefaults) by tests/guests/entry_state, and follows the SeaBIOS source:

* 8259 pair (src/hw/pic.c pic_setup, enable_hwirq): initialised for real
  mode, IRQ 0-7 at vectors 08h-0Fh and IRQ 8-15 at 70h-77h; masks B8h/8Eh
  (IRQ 0 PIT, 1 keyboard, 2 cascade, 6 floppy, 8 RTC, 12 mouse, 13 FPU, 14
  IDE unmasked); ELCR 0C00h (IRQ 10 and 11 level, the PCI links); IRQ 4
  latched in IRR by the serial-port probe (masked, so still pending).
* 8254 (src/hw/timer.c pit_setup): counter 0 in mode 2 with count 0
  (65536: 18.2 Hz), read/write LSB then MSB.
* MTRRs on every CPU (src/fw/mtrr.c mtrr_setup): fixed ranges WB below
  640 KiB, UC for A0000h-BFFFFh, WP for C0000h-FFFFFh; variable range 0 UC
  from the 32-bit PCI window (80000000h, or C0000000h with more than 2 GiB
  below 4 GiB) to 4 GiB; MTRRdefType enabled, WB.
* SMM (src/fw/smm.c smm_setup): the BSP's SMBASE relocated to A_0000h with
  SeaBIOS's SMI handler at A_8000h (svmsim's stand-in: an RSM), SMRAM
  enabled at A_0000h in the i440FX (72h = 0Ah: G_SMRAME, closed); the
  PIIX4 PM function's APMC_EN (5Bh bit 1) set, so port B2h raises an SMI.
* x87 on every CPU: the FNINIT state (FCW 037Fh, FTW FFFFh: all registers
  empty), which QEMU's CPU reset gives (target/i386/cpu.c x86_cpu_reset) in
  place of the power-on FCW 0040h / FTW 5555h of APM vol 2 table 14-1
  (svmsim's RESET and INIT keep that).  kvm-unit-tests never executes FNINIT:
  with the power-on tags its first FILD overflows the stack (svm_tsc_scale_test).
"""
MTRR_UC, MTRR_WP, MTRR_WB = 0, 5, 6
MTRR_DEF_TYPE, MTRR_FIX64K, MTRR_FIX16K_80000, MTRR_FIX16K_A0000 = 0x2FF, 0x250, 0x258, 0x259
MTRR_FIX4K_C0000, MTRR_PHYS_BASE0, MTRR_PHYS_MASK0 = 0x268, 0x200, 0x201
PIC_MASKS = (0xB8, 0x8E)
ELCR = (0x00, 0x0C)


def apply(machine) -> None:
    """Put the machine's devices and CPUs in SeaBIOS's hand-over state."""
    _pic(machine)
    _pit(machine)
    from ..cpu import fpu_state
    for cpu in machine.cpus:
        mtrrs(cpu, machine.bus.low_top)
        fpu_state.fninit(cpu)
    smm_setup(machine)


SMBASE_SEABIOS, SMRAM_SEABIOS = 0xA0000, 0x0A
RSM = b"\x0f\xaa"


def smm_setup(machine) -> None:
    """SeaBIOS's SMM state (also left for a Linux boot: SeaBIOS ran there too)."""
    from ..cpu.smm import SMM_BASE
    machine.cpus[0].msr[SMM_BASE] = SMBASE_SEABIOS
    off = machine.bus.dram_offset(SMBASE_SEABIOS + 0x8000)
    machine.bus.ram.buf[off:off + len(RSM)] = RSM
    machine.pci.host.config_write(0x72, 1, SMRAM_SEABIOS)

def _pic(machine) -> None:
    io = machine.io
    for cmd, data, base, cascade in ((0x20, 0x21, 0x08, 0x04), (0xA0, 0xA1, 0x70, 0x02)):
        io.write(cmd, 1, 0x11)                 # ICW1: edge, cascade, ICW4 follows
        io.write(data, 1, base)                # ICW2: vector base
        io.write(data, 1, cascade)             # ICW3
        io.write(data, 1, 0x01)                # ICW4: 8086 mode
    io.write(0x4D0, 1, ELCR[0])
    io.write(0x4D1, 1, ELCR[1])
    machine.raise_irq(4, True)                 # the serial probe's THRE interrupt
    machine.raise_irq(4, False)
    io.write(0x21, 1, PIC_MASKS[0])
    io.write(0xA1, 1, PIC_MASKS[1])


def _pit(machine) -> None:
    machine.io.write(0x43, 1, 0x34)            # counter 0, LSB/MSB, mode 2, binary
    machine.io.write(0x40, 1, 0)
    machine.io.write(0x40, 1, 0)


def mtrrs(cpu, ram_below_4g: int) -> None:
    """mtrr_setup()'s values for this CPU's physical-address width."""
    wb, wp = bytes([MTRR_WB] * 8), bytes([MTRR_WP] * 8)
    msr = cpu.msr
    msr[MTRR_FIX64K] = int.from_bytes(wb, "little")
    msr[MTRR_FIX16K_80000] = int.from_bytes(wb, "little")
    msr[MTRR_FIX16K_A0000] = 0
    for i in range(8):
        msr[MTRR_FIX4K_C0000 + i] = int.from_bytes(wp, "little")
    pci_start = 0x80000000 if ram_below_4g <= 0x80000000 else 0xC0000000
    phys_mask = (1 << cpu.machine.profile.phys_bits) - 1
    msr[MTRR_PHYS_BASE0] = pci_start | MTRR_UC
    msr[MTRR_PHYS_MASK0] = (-((1 << 32) - pci_start) & phys_mask) | 0x800
    msr[MTRR_DEF_TYPE] = 0xC00 | MTRR_WB
