"""Device (DMA) access to system-physical memory.

Devices never use the CPU's memory path: their accesses reach DRAM directly
(so an SEV guest's private pages read as ciphertext) through this port,
which applies the platform's protections:

* SEV-SNP: a DMA write to a page the RMP does not give to the hypervisor
  is blocked (AMD's IOMMU enforces the RMP for device writes; APM vol 2,
  15.36.10 describes the CPU side).  A blocked write changes nothing, is
  noted in the run report and traced as a ``dma_blocked`` event.

(The Device Exclusion Vector of APM 15.24 plugs in here too.)
"""
PAGE = 0x1000


class DmaPort:
    """What one device sees of memory: ``read_bytes`` / ``write_bytes``."""

    def __init__(self, machine, device: str, requester=(0, 0)):
        self.machine = machine
        self.bus = machine.bus
        self.device = device
        self.requester = requester          # (bus, devfn): who the host bridge sees

    def read_bytes(self, spa: int, n: int) -> bytes:
        return self.bus.read_bytes(spa, n)

    def write_bytes(self, spa: int, data: bytes) -> None:
        bad = self._blocked_page(spa, len(data))
        if bad is not None:
            m = self.machine
            m.note(f"DMA write by {self.device} to {spa:#x} (+{len(data)}) blocked: page {bad:#x} "
                   f"is not hypervisor-owned in the RMP")
            if m.listeners:
                m.emit({"type": "dma_blocked", "device": self.device, "spa": spa, "len": len(data),
                        "page": bad})
            return
        self.bus.write_bytes(spa, data)

    def _blocked_page(self, spa, n):
        rmp = getattr(self.machine, "rmp", None)          # device tests use bare machines
        if rmp is None or not rmp.enabled or n <= 0:
            return None
        for page in range(spa & ~(PAGE - 1), spa + n, PAGE):
            if not rmp.hypervisor_owned(page):
                return page
        return None
