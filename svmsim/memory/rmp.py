"""The Reverse Map Table of SEV-SNP (APM vol 2, 15.36.3-15.36.5, 15.36.10).

One 16-byte entry per 4 KiB page of system-physical memory, in RAM between
RMP_BASE and RMP_END (MSRs C001_0132h/C001_0133h): "a 16KB region used for
processor bookkeeping followed by the RMP entries".  A page whose entry lies
beyond RMP_END is not covered: "considered permanent hypervisor pages".

Entry format (the manual leaves the in-memory format to the implementation
and to the AMD-SP; svmsim uses the layout Linux reads on Milan and Genoa,
arch/x86/virt/svm/sev.c ``struct rmpentry_raw``, and keeps the VMPL
permission masks in the high quadword, one byte per VMPL):

    low  bit 0 Assigned, 1 Page_Size (2 MiB), 2 Immutable, 50:12 GPA,
         60:51 ASID, 61 VMSA, 62 Validated
    high byte n = VMPL n permission mask (15.36.7, table 15-36)

The entry of a 2 MiB page is the entry of its first 4 KiB page with
Page_Size = 1; it governs the 511 others, which keep entries of their own
(the Hypervisor-Owned check of a 2 MiB host mapping looks at all 512).

Only the RMP instructions (svm/snp.py) and the AMD-SP change entries, via
``write``; every change is announced to ``listeners`` so that CPUs drop the
derived fast caches (svmsim checks the RMP when a translation is used, so no
stale permission survives a change).
"""
from dataclasses import dataclass, field

PAGE = 0x1000
BOOKKEEPING = 0x4000
ENTRY = 16
PAGES_2M = 512

PERM_R, PERM_W, PERM_XU, PERM_XS, PERM_SSS = 1, 2, 4, 8, 16
PERM_ALL = PERM_R | PERM_W | PERM_XU | PERM_XS | PERM_SSS
NUM_VMPLS = 4


@dataclass
class RmpEntry:
    """One RMP entry (APM vol 2, table 15-34)."""
    assigned: bool = False
    page_size: int = 0                    # 0: 4 KiB, 1: 2 MiB
    immutable: bool = False
    gpa: int = 0                          # page-aligned guest-physical address
    asid: int = 0
    vmsa: bool = False
    validated: bool = False
    perms: list = field(default_factory=lambda: [0] * NUM_VMPLS)

    def encode(self) -> bytes:
        lo = (int(self.assigned) | (self.page_size & 1) << 1 | int(self.immutable) << 2
              | (self.gpa >> 12 & ((1 << 39) - 1)) << 12 | (self.asid & 0x3FF) << 51
              | int(self.vmsa) << 61 | int(self.validated) << 62)
        return lo.to_bytes(8, "little") + bytes(p & 0xFF for p in self.perms).ljust(8, b"\0")

    @classmethod
    def decode(cls, raw: bytes) -> "RmpEntry":
        lo = int.from_bytes(raw[:8], "little")
        return cls(bool(lo & 1), lo >> 1 & 1, bool(lo >> 2 & 1), (lo >> 12 & ((1 << 39) - 1)) << 12,
                   lo >> 51 & 0x3FF, bool(lo >> 61 & 1), bool(lo >> 62 & 1), list(raw[8:8 + NUM_VMPLS]))

    @property
    def owner(self) -> str:
        """Table 15-35: hypervisor, guest or AMD-SP."""
        if not self.assigned:
            return "hypervisor"
        return "AMD-SP" if self.asid == 0 else f"guest (ASID {self.asid})"


class Rmp:
    """The machine's RMP: where it is, and its entries (in RAM)."""

    def __init__(self, bus):
        self.bus = bus
        self.enabled = False              # SYSCFG.SecureNestedPagingEn on some CPU
        self.base = self.end = 0
        self.listeners: list = []         # callables(): an entry changed
        self._assigned_2m: dict = {}      # 2 MiB region -> number of assigned 4 KiB entries

    # -- configuration ------------------------------------------------------------
    def enable(self, base: int, end: int) -> None:
        """SNPEn set (15.36.2): the table at [base, end] becomes authoritative."""
        self.base, self.end, self.enabled = base, end, True
        self._reindex()

    def limit(self) -> int:
        """First system-physical address not covered (15.36.4)."""
        return (self.end + 1 - self.base - BOOKKEEPING) // ENTRY * PAGE if self.enabled else 0

    def covered(self, spa: int) -> bool:
        return self.enabled and spa < self.limit()

    def entry_addr(self, spa: int) -> int:
        return self.base + BOOKKEEPING + ENTRY * (spa >> 12)

    # -- entries --------------------------------------------------------------------
    def read(self, spa: int) -> RmpEntry:
        """The 4 KiB page's own entry (an uncovered page reads as hypervisor-owned)."""
        if not self.covered(spa):
            return RmpEntry()
        return RmpEntry.decode(self.bus.read_bytes(self.entry_addr(spa), ENTRY))

    def write(self, spa: int, entry: RmpEntry) -> None:
        old = self.read(spa)
        self.bus.write_bytes(self.entry_addr(spa), entry.encode())
        if old.assigned != entry.assigned:
            region = spa >> 21
            self._assigned_2m[region] = self._assigned_2m.get(region, 0) + (1 if entry.assigned else -1)
        for notify in self.listeners:
            notify()

    def governing(self, spa: int) -> tuple:
        """(entry, base SPA) that decides about the 4 KiB page at ``spa``: the
        2 MiB entry when its first page is assigned as a 2 MiB page."""
        big = spa & ~((PAGES_2M * PAGE) - 1)
        if big != spa & ~0xFFF:
            e = self.read(big)
            if e.assigned and e.page_size:
                return e, big
        e = self.read(spa)
        return e, spa & ~0xFFF

    def hypervisor_owned(self, spa: int, size: int = PAGE) -> bool:
        """The Hypervisor-Owned check (15.36.10) for a ``size`` mapping: every
        4 KiB entry of a 2 MiB (or 1 GiB, checked as 2 MiB) mapping unassigned."""
        if not self.covered(spa):
            return True
        if size > PAGE:
            return not self._assigned_2m.get(spa >> 21, 0)
        e, _ = self.governing(spa)
        return not e.assigned

    def _reindex(self) -> None:
        """Count assigned entries per 2 MiB region from the table in RAM."""
        self._assigned_2m = {}
        n = max(0, (self.end + 1 - self.base - BOOKKEEPING) // ENTRY)
        firsts = self.bus.read_bytes(self.base + BOOKKEEPING, n * ENTRY)[0::ENTRY] if n else b""
        flags = firsts.translate(_ASSIGNED_BIT)          # 1 where the entry's Assigned bit is set
        index = flags.find(1)
        while index >= 0:
            region = (index * PAGE) >> 21
            self._assigned_2m[region] = self._assigned_2m.get(region, 0) + 1
            index = flags.find(1, index + 1)


_ASSIGNED_BIT = bytes(i & 1 for i in range(256))
