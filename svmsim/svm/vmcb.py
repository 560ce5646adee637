"""The VMCB, declared once as a table of fields, and a view that reads and
writes them by name in guest-physical memory or in a bytearray.

Sources (facts only, no code copied): APM vol 2, Appendix B, table B-1
"VMCB Layout, Control Area" and table B-2 "VMCB Layout, State Save Area"
(the non-SEV-ES layout); VMCB clean bits from APM vol 2, 15.15.3 (bit list
cross-checked with Xen's vmcbcleanbits_t); offsets cross-checked against
Linux arch/x86/include/asm/svm.h (struct vmcb_control_area /
vmcb_save_area), Bochs cpu/svm.h and shared/docs/reference/
svm-emulators-and-layouts.md section 3.

Every field has: name (the APM's or Linux's name), area ("control" or
"save"), offset (bytes from the start of the VMCB page), bit and width (bits;
bit is relative to offset), the manual section, its clean-bit number (None
if the field is never cached), the containing field for sub-fields (e.g.
V_IRQ lives in INT_CTL) and a display group.  Reserved bytes are not listed.
Save-area offsets are from the start of the VMCB page (save area = +0x400).

Fields not in the table: the 32 bytes at 0x3E0 reserved for software, and
AMD's newer save-area additions that no public header defines yet.
"""
from dataclasses import dataclass

from . import exits

VMCB_SIZE = 4096
CONTROL_SIZE = 0x400
SAVE_BASE = CONTROL_SIZE
SAVE_SIZE = 0x2E8                 # non-SEV-ES save area (Linux EXPECTED_VMCB_SAVE_AREA_SIZE)

B1 = "APM vol 2, table B-1"
B2 = "APM vol 2, table B-2"


@dataclass(frozen=True)
class Field:
    name: str
    area: str                     # "control" | "save"
    offset: int                   # byte offset in the VMCB page
    width: int                    # bits
    bit: int = 0                  # lowest bit, relative to offset
    section: str = ""
    clean: int | None = None      # VMCB clean bit covering the field
    parent: str | None = None     # containing field of a sub-field
    group: str = ""

    def __post_init__(self):
        # Precomputed: a world switch reads and writes ~100 fields.
        object.__setattr__(self, "nbytes", (self.bit + self.width + 7) // 8)   # bytes from offset
        object.__setattr__(self, "mask", (1 << self.width) - 1)
        object.__setattr__(self, "end", self.offset + self.nbytes)

    @property
    def first_bit(self) -> int:
        """Absolute bit number of the lowest bit in the VMCB page."""
        return self.offset * 8 + self.bit


# ---------------------------------------------------------------- the table
_rows: list = []
_group = ""


def _g(name):
    global _group
    _group = name


def _c(offset, width, name, section="", clean=None):
    _rows.append(Field(name, "control", offset, width, 0, f"{B1}{section}", clean, None, _group))


def _sub(parent, bit, width, name, section="", clean=None):
    p = next(f for f in reversed(_rows) if f.name == parent)
    _rows.append(Field(name, p.area, p.offset, width, bit, f"{p.section.split(';')[0]}{section}",
                       clean, parent, p.group))


def _s(offset, width, name, section="", clean=None):
    _rows.append(Field(name, "save", SAVE_BASE + offset, width, 0, f"{B2}{section}",
                       clean, None, _group))


# Control area, APM vol 2 table B-1.
_g("intercepts")
_c(0x000, 32, "INTERCEPT_CR", "; 15.7-15.14", clean=0)
_sub("INTERCEPT_CR", 0, 16, "INTERCEPT_CR_READ", clean=0)
_sub("INTERCEPT_CR", 16, 16, "INTERCEPT_CR_WRITE", clean=0)
_c(0x004, 32, "INTERCEPT_DR", "; 15.7-15.14", clean=0)
_sub("INTERCEPT_DR", 0, 16, "INTERCEPT_DR_READ", clean=0)
_sub("INTERCEPT_DR", 16, 16, "INTERCEPT_DR_WRITE", clean=0)
_c(0x008, 32, "INTERCEPT_EXCEPTION", "; 15.12", clean=0)
_c(0x00C, 32, "INTERCEPT_MISC1", "; 15.7-15.14", clean=0)     # Linux INTERCEPT_WORD3
_c(0x010, 32, "INTERCEPT_MISC2", "; 15.7-15.14", clean=0)     # word 4: VMRUN..RDPRU, traps
_c(0x014, 32, "INTERCEPT_MISC3", "; 15.7-15.14", clean=0)     # word 5: INVLPGB..IDLE_HLT
_c(0x03C, 16, "PAUSE_FILTER_THRESHOLD", "; 15.14.4")          # not in figure 15-4's bit 0
_c(0x03E, 16, "PAUSE_FILTER_COUNT", "; 15.14.4", clean=0)
_c(0x040, 64, "IOPM_BASE_PA", "; 15.10.1", clean=1)
_c(0x048, 64, "MSRPM_BASE_PA", "; 15.11", clean=1)
_g("guest control")
_c(0x050, 64, "TSC_OFFSET", "", clean=0)
_c(0x058, 32, "GUEST_ASID", "; 15.16", clean=2)
_c(0x05C, 8, "TLB_CONTROL", "; 15.16.1")                     # 0, 1, 3, 7; never cached
_c(0x05D, 8, "ERAP_CONTROL", "")
_g("virtual interrupts")
_c(0x060, 32, "INT_CTL", "; 15.21", clean=3)
_sub("INT_CTL", 0, 8, "V_TPR", clean=3)
_sub("INT_CTL", 8, 1, "V_IRQ", clean=3)
_sub("INT_CTL", 9, 1, "V_GIF", "; 15.33.2", clean=3)
_sub("INT_CTL", 11, 1, "V_NMI_PENDING", "; 15.21.10", clean=3)
_sub("INT_CTL", 12, 1, "V_NMI_BLOCKING", "; 15.21.10", clean=3)
_sub("INT_CTL", 16, 4, "V_INTR_PRIO", clean=3)
_sub("INT_CTL", 20, 1, "V_IGN_TPR", clean=3)
_sub("INT_CTL", 24, 1, "V_INTR_MASKING", clean=3)
_sub("INT_CTL", 25, 1, "V_GIF_ENABLE", "; 15.33.2", clean=3)
_sub("INT_CTL", 26, 1, "V_NMI_ENABLE", "; 15.21.10", clean=3)
_sub("INT_CTL", 30, 1, "X2AVIC_ENABLE", "; 15.29", clean=3)
_sub("INT_CTL", 31, 1, "AVIC_ENABLE", "; 15.29", clean=3)
_c(0x064, 8, "V_INTR_VECTOR", "; 15.21", clean=3)            # bits 39:32 of the 060h qword
_c(0x068, 64, "INT_STATE", "")
_sub("INT_STATE", 0, 1, "INTERRUPT_SHADOW")
_sub("INT_STATE", 1, 1, "GUEST_INTERRUPT_MASK", "; 15.35")
_g("exit information")
_c(0x070, 64, "EXITCODE", "; appendix C")
_c(0x078, 64, "EXITINFO1", "")
_c(0x080, 64, "EXITINFO2", "")
_c(0x088, 64, "EXITINTINFO", "; 15.7.2")
_g("features")
_c(0x090, 64, "MISC_CTL", "")                                # Linux misc_ctl (was nested_ctl)
_sub("MISC_CTL", 0, 1, "NP_ENABLE", "; 15.25.3")            # bit 4 covers NCR3 and G_PAT only
_sub("MISC_CTL", 1, 1, "SEV_ENABLE", "; 15.34")
_sub("MISC_CTL", 2, 1, "SEV_ES_ENABLE", "; 15.35")
# Bits 3-7: names from newer APM revisions of table B-1 (the reference doc
# lists bits 0-5); svmsim implements none of them.
_sub("MISC_CTL", 3, 1, "GMET_ENABLE", "")
_sub("MISC_CTL", 4, 1, "SSS_CHECK_ENABLE", "")
_sub("MISC_CTL", 5, 1, "VTE_ENABLE", "")
_sub("MISC_CTL", 6, 1, "ROGPT_ENABLE", "")
_sub("MISC_CTL", 7, 1, "INVLPGB_TLBSYNC_ENABLE", "")
_c(0x098, 64, "AVIC_APIC_BAR", "; 15.29", clean=11)
_c(0x0A0, 64, "GHCB_GPA", "; 15.35")
_c(0x0A8, 64, "EVENTINJ", "; 15.20")
_c(0x0B0, 64, "N_CR3", "; 15.25.4", clean=4)
_c(0x0B8, 64, "MISC_CTL2", "")                               # Linux misc_ctl2 (virt_ext)
_sub("MISC_CTL2", 0, 1, "LBR_VIRTUALIZATION_ENABLE", "; 15.23")  # bit 10: the LBR MSRs only
_sub("MISC_CTL2", 1, 1, "V_VMSAVE_VMLOAD_ENABLE", "; 15.33.1")
_sub("MISC_CTL2", 2, 1, "IBS_VIRTUALIZATION_ENABLE", "")
_c(0x0C0, 32, "VMCB_CLEAN", "; 15.15.3")
_c(0x0C8, 64, "NRIP", "; 15.7.1")
_g("decode assists")
_c(0x0D0, 8, "INSN_LEN", "")                                 # bytes fetched
_c(0x0D1, 120, "INSN_BYTES", "")                             # up to 15 instruction bytes
_g("AVIC / SEV")
_c(0x0E0, 64, "AVIC_BACKING_PAGE", "; 15.29", clean=11)
_c(0x0F0, 64, "AVIC_LOGICAL_TABLE", "; 15.29", clean=11)
_c(0x0F8, 64, "AVIC_PHYSICAL_TABLE", "; 15.29", clean=11)
_sub("AVIC_PHYSICAL_TABLE", 0, 12, "AVIC_PHYSICAL_MAX_INDEX", clean=11)
_c(0x108, 64, "VMSA_PA", "; 15.35")
_c(0x110, 64, "VMGEXIT_RAX", "; 15.35.6")                    # VmgexitParameter (SEV_FEATURES[10])
_c(0x118, 8, "VMGEXIT_CPL", "; 15.35.6")
_c(0x120, 16, "BUS_LOCK_COUNTER", "")
_c(0x138, 64, "ALLOWED_SEV_FEATURES", "; 15.36")
_c(0x140, 64, "GUEST_SEV_FEATURES", "; 15.36")

# Save area, APM vol 2 table B-2 (offsets relative to the save area).
SEGMENTS = ("ES", "CS", "SS", "DS", "FS", "GS", "GDTR", "LDTR", "IDTR", "TR")
_SEG_CLEAN = {"ES": 8, "CS": 8, "SS": 8, "DS": 8, "GDTR": 7, "IDTR": 7}
_g("segments")
for _i, _seg in enumerate(SEGMENTS):
    _base, _cb = 0x10 * _i, _SEG_CLEAN.get(_seg)
    if _seg not in ("GDTR", "IDTR"):          # GDTR/IDTR: selector and attrib reserved
        _s(_base + 0, 16, f"{_seg}.SEL", clean=_cb)
        _s(_base + 2, 16, f"{_seg}.ATTRIB", clean=_cb)
        _s(_base + 4, 32, f"{_seg}.LIMIT", clean=_cb)
    else:
        _s(_base + 4, 16, f"{_seg}.LIMIT", clean=_cb)     # bits 31:16 reserved
    _s(_base + 8, 64, f"{_seg}.BASE", clean=_cb)
_g("registers")
_s(0x0CA, 8, "VMPL", "; 15.36")
_s(0x0CB, 8, "CPL", clean=8)
_s(0x0D0, 64, "EFER", clean=5)
_s(0x148, 64, "CR4", clean=5)
_s(0x150, 64, "CR3", clean=5)
_s(0x158, 64, "CR0", clean=5)
_s(0x160, 64, "DR7", clean=6)
_s(0x168, 64, "DR6", clean=6)
_s(0x170, 64, "RFLAGS")
_s(0x178, 64, "RIP")
_s(0x1D8, 64, "RSP")
_s(0x1E0, 64, "S_CET", clean=12)
_s(0x1E8, 64, "SSP", clean=12)
_s(0x1F0, 64, "ISST_ADDR", clean=12)
_s(0x1F8, 64, "RAX")
_g("MSRs")
_s(0x200, 64, "STAR")
_s(0x208, 64, "LSTAR")
_s(0x210, 64, "CSTAR")
_s(0x218, 64, "SFMASK")
_s(0x220, 64, "KERNEL_GS_BASE")
_s(0x228, 64, "SYSENTER_CS")
_s(0x230, 64, "SYSENTER_ESP")
_s(0x238, 64, "SYSENTER_EIP")
_s(0x240, 64, "CR2", clean=9)
_s(0x268, 64, "G_PAT", "; 15.25", clean=4)
_s(0x270, 64, "DBGCTL", "; 15.23", clean=10)
_s(0x278, 64, "BR_FROM", "; 15.23", clean=10)
_s(0x280, 64, "BR_TO", "; 15.23", clean=10)
_s(0x288, 64, "LASTEXCP_FROM", "; 15.23", clean=10)
_s(0x290, 64, "LASTEXCP_TO", "; 15.23", clean=10)
_s(0x2E0, 64, "SPEC_CTRL")

FIELDS = tuple(_rows)
BY_NAME = {f.name: f for f in FIELDS}
del _i, _seg, _base, _cb

# Other spellings found in the brief, Linux and the APM prose.
ALIASES = {
    "INTERCEPT_WORD3": "INTERCEPT_MISC1", "INTERCEPT_WORD4": "INTERCEPT_MISC2",
    "INTERCEPT_WORD5": "INTERCEPT_MISC3", "INTERCEPT_EXCEPTIONS": "INTERCEPT_EXCEPTION",
    "INT_SHADOW": "INTERRUPT_SHADOW", "GUEST_INT_MASK": "GUEST_INTERRUPT_MASK",
    "V_NMI": "V_NMI_PENDING", "V_NMI_MASK": "V_NMI_BLOCKING",
    "LBR_VIRT": "LBR_VIRTUALIZATION_ENABLE", "V_VMSAVE_VMLOAD": "V_VMSAVE_VMLOAD_ENABLE",
    "NCR3": "N_CR3", "ASID": "GUEST_ASID", "CLEAN": "VMCB_CLEAN", "NEXT_RIP": "NRIP",
    "EXIT_CODE": "EXITCODE", "EVENT_INJ": "EVENTINJ", "PAT": "G_PAT",
    "NESTED_CTL": "MISC_CTL", "VIRT_EXT": "MISC_CTL2",
}
_LOOKUP = {**{a: BY_NAME[t] for a, t in ALIASES.items()}, **BY_NAME}
CHILDREN = {}
for _f in FIELDS:
    if _f.parent:
        CHILDREN.setdefault(_f.parent, []).append(_f)

# VMCB clean bits (APM vol 2, 15.15.3): bit -> (name, fields it covers).
CLEAN_BITS = {}
for _f in FIELDS:
    if _f.clean is not None:
        CLEAN_BITS.setdefault(_f.clean, []).append(_f.name)
CLEAN_BIT_NAMES = {0: "I", 1: "IOPM", 2: "ASID", 3: "TPR", 4: "NP", 5: "CRX", 6: "DRX",
                   7: "DT", 8: "SEG", 9: "CR2", 10: "LBR", 11: "AVIC", 12: "CET"}
del _f


def field(name: str) -> Field:
    """The Field called ``name`` (aliases accepted); KeyError if unknown."""
    return _LOOKUP[name]


# ---------------------------------------------------------------- memory access
class _BufMem:
    """A bytearray (or memoryview) as little-endian memory."""
    __slots__ = ("buf",)

    def __init__(self, buf):
        self.buf = buf

    def read(self, addr, n):
        return int.from_bytes(self.buf[addr:addr + n], "little")

    def write(self, addr, n, value):
        self.buf[addr:addr + n] = value.to_bytes(n, "little")


class _BusMem:
    """PhysBus-like ``read(pa, size)``/``write(pa, size, value)``; sizes that
    are not 1, 2, 4 or 8 are split so MMIO devices only see natural sizes."""
    __slots__ = ("bus",)

    def __init__(self, bus):
        self.bus = bus

    def read(self, addr, n):
        if n in (1, 2, 4, 8):
            return self.bus.read(addr, n)
        value = shift = 0
        for chunk in _chunks(n):
            value |= self.bus.read(addr, chunk) << shift
            addr, shift = addr + chunk, shift + chunk * 8
        return value

    def write(self, addr, n, value):
        if n in (1, 2, 4, 8):
            self.bus.write(addr, n, value)
            return
        for chunk in _chunks(n):
            self.bus.write(addr, chunk, value & ((1 << (chunk * 8)) - 1))
            addr, value = addr + chunk, value >> (chunk * 8)


def _chunks(n):
    while n:
        chunk = 8 if n >= 8 else 4 if n >= 4 else 2 if n >= 2 else 1
        yield chunk
        n -= chunk


def _adapt(mem):
    if isinstance(mem, (bytearray, memoryview)):
        return _BufMem(mem)
    return _BusMem(mem)


# ---------------------------------------------------------------- the view
class LayoutView:
    """Fields of a structure declared as a table (the VMCB here; the VMSA in
    vmsa.py) at physical address ``pa``, by name.

    ``mem`` is a PhysBus (or anything with ``read(pa, size)`` and
    ``write(pa, size, value)``) or a bytearray (``pa`` is then an offset).
    Reads and writes go straight to memory: nothing is cached here, so the
    view always sees what the hypervisor last wrote.
    """
    __slots__ = ("mem", "pa", "buf")
    LOOKUP: dict = {}                  # name (and alias) -> Field
    FIELDS: tuple = ()

    def __init__(self, mem, pa: int = 0):
        self.mem = _adapt(mem)
        self.pa = pa
        # A VMCB page copied into a bytearray (pa 0) is read by slicing.
        self.buf = mem if isinstance(mem, bytearray) and pa == 0 else None

    def read(self, f: Field) -> int:
        buf = self.buf
        if buf is not None:
            raw = int.from_bytes(buf[f.offset:f.end], "little")
        else:
            raw = self.mem.read(self.pa + f.offset, f.nbytes)
        return (raw >> f.bit) & f.mask

    def write(self, f: Field, value: int) -> None:
        n, mask = f.nbytes, f.mask << f.bit
        if f.bit == 0 and f.width == n * 8:
            if self.buf is not None:
                self.buf[f.offset:f.end] = (value & f.mask).to_bytes(n, "little")
            else:
                self.mem.write(self.pa + f.offset, n, value & f.mask)
            return
        # Sub-field: read-modify-write so neighbouring bits are kept.
        raw = self.mem.read(self.pa + f.offset, n)
        self.mem.write(self.pa + f.offset, n, (raw & ~mask) | ((value << f.bit) & mask))

    def __getitem__(self, name: str) -> int:
        return self.read(self.LOOKUP[name])

    def __setitem__(self, name: str, value: int) -> None:
        self.write(self.LOOKUP[name], value)

    def __contains__(self, name: str) -> bool:
        return name in self.LOOKUP

    # -- segments -------------------------------------------------------
    def segment(self, seg: str) -> tuple:
        """(selector, attrib, limit, base); GDTR/IDTR report selector/attrib 0."""
        sel = self[f"{seg}.SEL"] if f"{seg}.SEL" in self.LOOKUP else 0
        attr = self[f"{seg}.ATTRIB"] if f"{seg}.ATTRIB" in self.LOOKUP else 0
        return sel, attr, self[f"{seg}.LIMIT"], self[f"{seg}.BASE"]

    def set_segment(self, seg: str, sel: int, attrib: int, limit: int, base: int) -> None:
        """Write one segment; GDTR/IDTR ignore ``sel`` and ``attrib`` (reserved)."""
        if f"{seg}.SEL" in self.LOOKUP:
            self[f"{seg}.SEL"] = sel
            self[f"{seg}.ATTRIB"] = attrib
        self[f"{seg}.LIMIT"] = limit
        self[f"{seg}.BASE"] = base

    def to_dict(self) -> dict:
        """{name: value} for every field (containers and sub-fields)."""
        return {f.name: self.read(f) for f in self.FIELDS}


class VmcbView(LayoutView):
    """Fields of the VMCB at physical address ``pa``, by name (see LayoutView)."""
    __slots__ = ()
    LOOKUP = _LOOKUP
    FIELDS = FIELDS


    def dump(self) -> str:
        """Readable listing of the non-zero fields, grouped, in VMCB order."""
        return format_vmcb(self.to_dict())


# ---------------------------------------------------------------- formatting
def _describe(name: str, value: int) -> str:
    if name == "EXITCODE":
        return f" ({exits.exit_name(value)})"
    if name in ("EVENTINJ", "EXITINTINFO"):
        return f" ({exits.describe_event(value)})"
    if name == "VMCB_CLEAN" and value:
        bits = [CLEAN_BIT_NAMES.get(b, str(b)) for b in range(32) if value >> b & 1]
        return f" ({' '.join(bits)})"
    return ""


def format_vmcb(values: dict) -> str:
    """Format a ``to_dict()`` result: non-zero fields, grouped, hex values."""
    lines, group = [], None
    seg_done = set()
    for f in FIELDS:
        if f.parent:
            continue                                  # printed under their container
        if f.group == "segments":
            seg = f.name.split(".")[0]
            if seg in seg_done:
                continue
            seg_done.add(seg)
            parts = [(p, values[f"{seg}.{p}"]) for p in ("SEL", "ATTRIB", "LIMIT", "BASE")
                     if f"{seg}.{p}" in values]
            if not any(v for _, v in parts):
                continue
            line = f"  {seg:<6}" + " ".join(f"{p.lower()}={v:#x}" for p, v in parts)
        else:
            value = values[f.name]
            if not value:
                continue
            line = f"  {f.name:<24}{value:#x}{_describe(f.name, value)}"
            subs = [f"{c.name}={values[c.name]:#x}" for c in CHILDREN.get(f.name, ())
                    if values[c.name]]
            if subs:
                line += "  [" + " ".join(subs) + "]"
        if f.group != group:
            group = f.group
            lines.append(f"{f.area} area: {group}")
        lines.append(line)
    return "\n".join(lines) if lines else "(all fields zero)"
