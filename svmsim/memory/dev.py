"""The Device Exclusion Vector (APM vol 2, 15.24): the host bridge's check of
device (DMA) accesses against per-page protection bits in memory.

"A DEV is a contiguous array of bits in physical memory; each bit in the DEV
(in little-endian order) corresponds to one 4-Kbyte page in physical memory"
(15.24.2).  A request's device ID selects a protection domain through the
DEV_MAP registers ("If no match is found in any of the registers, a domain
number of zero is returned"); the domain's DEV_BASE_HI/LO registers give the
table (V, P, SIZE: it covers 4 GB * 2**SIZE); "If the bit read from the DEV
is set to 1, the host bridge inhibits the access by returning all ones for
the data for a read request, or suppressing the store operation on a write
request" (15.24.3).  The CPU's own accesses never consult the DEV.

Software reaches the registers through the DEV capability block of the host
bridge's configuration space (devices/pci.py: DEV_HDR, DEV_OP, DEV_DATA;
15.24.4-15.24.5).  Functions (table 15-17): 0 DEV_BASE_LO, 1 DEV_BASE_HI,
2 DEV_MAP (multiple, by INDEX), 3 DEV_CAP, 4 DEV_CR, 5 DEV_ERR_STATUS,
6 DEV_ERR_ADDR_LO, 7 DEV_ERR_ADDR_HI.  DEV_CAP: four domains, three map
registers ("the initial implementation").

Caching (15.24.2): "the host bridge may cache portions of the DEV. Any such
cached information can be invalidated by setting the DEV_FLUSH flag in the
DEV control register".  svmsim caches every 64-byte line of a table it has
read and keeps it until software flushes (DEV_CR bit 4, which reads back 0:
the flush completes at once), so a DEV change without a flush is not seen,
as the manual allows hardware to behave.

SKINIT's protection (15.24.8): with DEV_CR.SL_DEV_EN the 64 KiB at the
hidden SL_DEV_BASE is protected from every device, whether or not the DEV
itself is enabled.

svmsim's readings where the manual is silent (also in docs/DESIGN.md):
device IDs are PCI bus and device numbers (HyperTransport bus and unit
IDs); a DEV_MAP domain number beyond N_DOMAINS selects no table;
DEV_ERR_STATUS is bit 0 valid, bit 1 write, bit 2 overflow (another block
since), bits 15:8 the device/function, bits 23:16 the bus, and writing it
with bit 0 set clears the log; DEV_ERR_ADDR_LO/HI hold address bits 31:0
and 39:32; the cache probes the CPU (svmsim has no caches, bit 6 has no
effect); I/O space protection (IOSPEN) and MCE reporting are stored (no
device issues upstream I/O, the capability reports no MCE reporting).
"""
PAGE_SHIFT = 12
LINE = 64
N_DOMAINS, N_MAPS, REVISION = 4, 3, 1
DEV_CAP = N_MAPS << 16 | N_DOMAINS << 8 | REVISION

# DEV_OP.FUNCTION (table 15-17)
F_BASE_LO, F_BASE_HI, F_MAP, F_CAP, F_CR, F_ERR_STATUS, F_ERR_ADDR_LO, F_ERR_ADDR_HI = range(8)
FUNCTION_NAMES = ("DEV_BASE_LO", "DEV_BASE_HI", "DEV_MAP", "DEV_CAP", "DEV_CR", "DEV_ERR_STATUS",
                  "DEV_ERR_ADDR_LO", "DEV_ERR_ADDR_HI")

# DEV_CR (table 15-18)
CR_EN, CR_MEM_CLR_DIS, CR_IOSPEN, CR_MCE, CR_FLUSH, CR_SL_DEV_EN, CR_PROBE_DIS = (1 << i for i in range(7))
BASE_V, BASE_P = 1, 2
ERR_VALID, ERR_WRITE, ERR_OVERFLOW = 1, 2, 4
SL_SIZE = 0x10000


class DeviceExclusionVector:
    """The DEV logic of one host bridge (svmsim has one northbridge)."""

    def __init__(self, bus):
        self.bus = bus
        self.base_lo = [0] * N_DOMAINS
        self.base_hi = [0] * N_DOMAINS
        self.maps = [0] * N_MAPS
        self.cr = 0                         # "cleared to zero by RESET"
        self.err_status = self.err_addr = 0
        self.sl_dev_base = 0                # hidden: set by SKINIT
        self.cache: dict = {}               # table line address -> 64 bytes
        self.blocks = 0                     # blocked accesses (the run report)

    # ------------------------------------------------------------ registers
    def read(self, function: int, index: int) -> int:
        regs = {F_BASE_LO: self.base_lo, F_BASE_HI: self.base_hi, F_MAP: self.maps}
        if function in regs:
            table = regs[function]
            return table[index] if index < len(table) else 0
        return {F_CAP: DEV_CAP, F_CR: self.cr, F_ERR_STATUS: self.err_status,
                F_ERR_ADDR_LO: self.err_addr & 0xFFFFFFFF,
                F_ERR_ADDR_HI: self.err_addr >> 32 & 0xFF}.get(function, 0)

    def write(self, function: int, index: int, value: int) -> None:
        """A DEV_DATA write to the register DEV_OP selects; reserved (MBZ)
        bits and read-only registers ignore writes."""
        if function == F_BASE_LO and index < N_DOMAINS:
            self.base_lo[index] = value & 0xFFFFF07F
        elif function == F_BASE_HI and index < N_DOMAINS:
            self.base_hi[index] = value & 0xFF
        elif function == F_MAP and index < N_MAPS:
            self.maps[index] = value & 0xFFFFFFFF
        elif function == F_CR:
            if value & CR_FLUSH:
                self.cache.clear()          # the flush completes at once: bit 4 reads 0
            # SL_DEV_EN is "Set to 1 by SKINIT, can be cleared by software"
            self.cr = value & 0x7F & ~(CR_FLUSH | CR_SL_DEV_EN) | value & self.cr & CR_SL_DEV_EN
        elif function == F_ERR_STATUS and value & ERR_VALID:
            self.err_status = self.err_addr = 0

    def set_sl_dev(self, base: int) -> None:
        """SKINIT (15.27.6 step 2): protect the 64 KiB SLB from devices."""
        self.sl_dev_base = base & ~(SL_SIZE - 1)
        self.cr |= CR_SL_DEV_EN

    # ------------------------------------------------------------ checking
    def domain(self, requester) -> int:
        """The protection domain of a (bus, devfn) requester (15.24.6, figure 15-11)."""
        bus, devfn = requester
        unit = devfn >> 3
        for m in self.maps:
            if m >> 12 & 0xFF != bus:
                continue
            if m & 0x20 and m & 0x1F == unit:
                return m >> 20 & 0x3F
            if m & 0x800 and m >> 6 & 0x1F == unit:
                return m >> 26 & 0x3F
        return 0

    def blocked(self, requester, spa: int, n: int):
        """The first page of [spa, spa + n) the device may not access, with
        the reason, or None."""
        if not self.cr & (CR_EN | CR_SL_DEV_EN) or n <= 0:
            return None
        first, last = spa >> PAGE_SHIFT, (spa + n - 1) >> PAGE_SHIFT
        if self.cr & CR_SL_DEV_EN:
            sl = self.sl_dev_base >> PAGE_SHIFT
            if first < sl + SL_SIZE // 4096 and last >= sl:
                return max(first, sl) << PAGE_SHIFT, "SL_DEV (SKINIT's secure loader block)"
        if not self.cr & CR_EN:
            return None
        dom = self.domain(requester)
        if dom >= N_DOMAINS or not self.base_lo[dom] & BASE_V:
            return None
        for pfn in range(first, last + 1):
            if self._protected(dom, pfn):
                return pfn << PAGE_SHIFT, f"DEV domain {dom}"
        return None

    def _protected(self, dom: int, pfn: int) -> bool:
        lo, hi = self.base_lo[dom], self.base_hi[dom]
        pages = 1 << (20 + (lo >> 2 & 0x1F))          # 4 GB * 2**SIZE in 4 KiB pages
        if pfn >= pages:
            return bool(lo & BASE_P)
        table = (hi << 32) | (lo & 0xFFFFF000)
        byte = table + (pfn >> 3)
        line = byte & ~(LINE - 1)
        data = self.cache.get(line)
        if data is None:
            data = self.cache[line] = self.bus.read_bytes(line, LINE)
        return bool(data[byte - line] >> (pfn & 7) & 1)

    def log(self, requester, spa: int, write: bool) -> None:
        """15.24.7: "Any attempted unauthorized access ... is logged by the host
        bridge in the DEV_Error_Status and DEV_Error_Address registers"."""
        self.blocks += 1
        if self.err_status & ERR_VALID:
            self.err_status |= ERR_OVERFLOW
            return
        bus, devfn = requester
        self.err_status = ERR_VALID | (ERR_WRITE if write else 0) | (devfn & 0xFF) << 8 | (bus & 0xFF) << 16
        self.err_addr = spa & ((1 << 40) - 1)
