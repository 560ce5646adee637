"""The APM control ports of QEMU's pc (hw/isa/apm.c with hw/acpi/piix4.c):
B2h (APM_CNT) and B3h (APM_STS).

A byte written to B2h raises an SMI on the first CPU, as QEMU's
piix4 ``apm_ctrl_changed`` does, when the PIIX4 PM function's DEVACTB.APMC_EN
is set (SeaBIOS sets it), except the ACPI enable/disable commands F1h/F0h.
B3h is a scratch register firmware and its SMI handler use to pass data.
An SMI handler reads the command back from B2h.
"""
APM_CNT, APM_STS = 0xB2, 0xB3
ACPI_DISABLE, ACPI_ENABLE = 0xF0, 0xF1


class ApmControl:
    def __init__(self, machine):
        self.machine = machine
        self.cnt = self.sts = 0

    def register(self, machine=None):
        (machine or self.machine).io.register(APM_CNT, 2, self)

    def io_read(self, port, size):
        value = self.cnt if port == APM_CNT else self.sts
        return value | ((1 << (8 * size)) - 1) & ~0xFF

    def io_write(self, port, size, value):
        value &= 0xFF
        if port == APM_STS:
            self.sts = value
            return
        self.cnt = value
        m = self.machine
        if value not in (ACPI_DISABLE, ACPI_ENABLE) and m.pci.pm.apmc_enabled:
            m.cpus[0].signal_smi("APM port B2h")
