"""Device (DMA) access to system-physical memory.

Devices never use the CPU's memory path: their accesses reach DRAM directly
(so an SEV guest's private pages read as ciphertext) through this port,
which applies the platform's protections, page by page (a device request
never crosses a 4 KiB boundary):

* the Device Exclusion Vector (APM vol 2, 15.24; memory/dev.py) and
  SKINIT's SL_DEV protection: a blocked read returns all ones, a blocked
  write is suppressed, and the host bridge logs it (15.24.3, 15.24.7);
* SMRAM (memory/smram.py) is never reached by a device: reads all ones,
  writes dropped;
* SEV-SNP: a DMA write to a page the RMP does not give to the hypervisor
  is blocked (AMD's IOMMU enforces the RMP for device writes; APM vol 2,
  15.36.10 describes the CPU side).

A blocked access changes nothing, is counted in the run report (``svmsim:
platform: ...``), noted with its reason and traced as a ``dma_blocked``
event (``--trace dma``).
"""
PAGE = 0x1000


class DmaPort:
    """What one device sees of memory: ``read_bytes`` / ``write_bytes``.
    ``requester`` is the (bus, devfn) the host bridge sees (the DEV's device ID)."""

    def __init__(self, machine, device: str, requester=(0, 0)):
        self.machine = machine
        self.bus = machine.bus
        self.device = device
        self.requester = requester

    def read_bytes(self, spa: int, n: int) -> bytes:
        out = bytearray()
        for page_spa, length in _pages(spa, n):
            why = self._dev_blocked(page_spa, length)
            if why is not None or self._smram(page_spa):
                if why is not None:
                    self._report(page_spa, length, False, why)
                out += b"\xFF" * length
            else:
                out += self.bus.read_bytes(page_spa, length)
        return bytes(out)

    def write_bytes(self, spa: int, data: bytes) -> None:
        done = 0
        for page_spa, length in _pages(spa, len(data)):
            why = self._dev_blocked(page_spa, length) or self._rmp_blocked(page_spa)
            if why is not None:
                self._report(page_spa, length, True, why)
            elif not self._smram(page_spa):
                self.bus.write_bytes(page_spa, data[done:done + length])
            done += length

    # ------------------------------------------------------------ checks
    def _smram(self, spa) -> bool:
        """SMRAM is never a device's (memory/smram.py): a master abort."""
        from .smram import SmramWindow
        return isinstance(self.bus.mmio_device(spa), SmramWindow)

    def _dev_blocked(self, spa, n):
        dev = getattr(self.machine, "dev", None)           # device tests use bare machines
        hit = dev.blocked(self.requester, spa, n) if dev is not None else None
        return None if hit is None else hit[1]

    def _rmp_blocked(self, spa):
        rmp = getattr(self.machine, "rmp", None)
        if rmp is not None and rmp.enabled and not rmp.hypervisor_owned(spa & ~(PAGE - 1)):
            return "the page is not hypervisor-owned in the RMP"
        return None

    def _report(self, spa, n, write, why):
        m = self.machine
        if why.startswith(("DEV", "SL_DEV")):
            m.dev.log(self.requester, spa, write)
        m.counters["DMA accesses blocked"] += 1
        kind = "write" if write else "read"
        m.note(f"DMA {kind} by {self.device} at {spa & ~(PAGE - 1):#x} blocked: {why}")
        if m.listeners:
            m.emit({"type": "dma_blocked", "device": self.device, "spa": spa, "len": n,
                    "page": spa & ~(PAGE - 1), "write": write, "reason": why})


def _pages(spa, n):
    """(address, length) of each page-bounded piece of [spa, spa + n)."""
    while n > 0:
        length = min(n, PAGE - (spa & (PAGE - 1)))
        yield spa, length
        spa, n = spa + length, n - length
