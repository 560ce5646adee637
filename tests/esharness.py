"""An SEV-ES guest for unit tests of the hardware rules (APM vol 2, 15.35).

``EsRig(guest_asm)`` builds on SvmRig's host stub (``mov rax, VMCB; vmrun;
hlt``): memory encryption on, HWCR.SmmLock, an identity nested map, a key
loaded into the guest's ASID slot, and a 64-bit guest whose code, page
tables, GDT, IDT and stack are private (encrypted with the guest's key).
Its initial state is a VMSA page encrypted and sealed as the AMD-SP's
LAUNCH_UPDATE_VMSA leaves it (the firmware's own path is tested in
test_sev_firmware / test_vmm_sev_es).

The guest's IDT sends every vector to a stub that records the vector, the
error code (if any) and the saved RIP at ``REC`` (private) and executes HLT
(intercepted: an automatic exit).  The page at ``SHARED`` is mapped C=0 by
the guest: plaintext for the hypervisor.
"""
from cpuharness import asm
from svmharness import SvmRig, NestedTables, GUEST_CODE, GUEST_STACK
from svmsim.cpu import msr
from svmsim.memory.encryption import EncryptionEngine
from svmsim.svm.exits import ExitCode
from svmsim.svm.vmsa import VmsaView
from svmsim.memory.rmp import RmpEntry, PERM_ALL, PAGE

SYSCFG, HWCR = 0xC0010010, 0xC0010015
KEY = bytes(range(0xA0, 0xB0))
C_BIT = 1 << 47
G_PML4, G_PDPT, G_PD = 0x600000, 0x601000, 0x602000
G_IDT, G_STUBS, G_GDT = 0x500000, 0x501000, 0x520000
REC = 0x510000
SHARED = 0xA00000
VMSA = 0x700000
RMP_BASE, RMP_END, RMP_AT = 0xC0010132, 0xC0010133, 0x1C00000
HAS_EC = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}
GDT = [0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF]


def _stubs(cache=[]):
    """The 256 IDT stubs, 64 bytes apart (assembled once per test session)."""
    if not cache:
        src = ""
        for vec in range(256):
            src += f".balign 64\nmov dword ptr [{REC:#x}], {vec}\n"
            if vec in HAS_EC:
                src += f"pop rax\nmov [{REC + 8:#x}], rax\n"
            src += f"mov rax, [rsp]\nmov [{REC + 16:#x}], rax\nhlt\n"
        cache.append(asm(src))
    return cache[0]


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 16)


class EsRig(SvmRig):
    def __init__(self, guest_asm: str = "hlt", asid: int = 1, intercepts=(ExitCode.HLT,),
                 es=True, snp=False, **vmcb_fields):
        super().__init__(b"", intercepts=intercepts)
        m, cpu, v = self.m, self.cpu, self.vmcb
        self.asid, self.snp = asid, snp
        msr.wrmsr(cpu, SYSCFG, 1 << 23)                        # MemEncryptionModEn
        cpu.msr[HWCR] = cpu.msr.get(HWCR, 0) | 1               # SmmLock
        nt = NestedTables(m.bus)
        if snp:
            nt.identity(0, 0x1000000, size=PAGE)               # 4 KiB: the RMP's page size
            self._enable_snp()
        else:
            nt.identity(0, 0x1000000)
        self.nested = nt
        m.mem_engine.load_key(asid, KEY)
        self._guest_memory(asm(guest_asm))
        v["NP_ENABLE"], v["N_CR3"], v["SEV_ENABLE"] = 1, nt.root, 1
        v["SEV_ES_ENABLE"], v["LBR_VIRTUALIZATION_ENABLE"] = int(es), 1
        v["VMSA_PA"], v["GUEST_ASID"] = VMSA, asid
        if snp:
            self.assign(0x400000, 0x700000)                      # code, stack, IDT, tables
            self.assign(VMSA, VMSA + PAGE, validated=False, vmsa=True)
        self.write_vmsa(self.initial_vmsa())
        for name, value in vmcb_fields.items():
            v[name] = value

    # -- guest memory (private unless said otherwise) ---------------------------------
    def put(self, addr, data):
        self.m.bus.write_bytes(addr, EncryptionEngine.encrypt(KEY, addr, _pad(data)))

    def private(self, addr, n):
        first = addr & ~15
        raw = self.m.bus.read_bytes(first, (addr + n - first + 15) & ~15)
        return EncryptionEngine.decrypt(KEY, first, raw)[addr - first:addr - first + n]

    def _guest_memory(self, code):
        self.put(GUEST_CODE, code)
        self.put(G_PML4, (G_PDPT | C_BIT | 3).to_bytes(8, "little"))
        self.put(G_PDPT, (G_PD | C_BIT | 3).to_bytes(8, "little"))
        pd = b"".join(((i << 21) | (0 if i << 21 == SHARED else C_BIT) | 0x83).to_bytes(8, "little")
                      for i in range(512))
        self.put(G_PD, pd)
        self.put(G_GDT, b"".join(d.to_bytes(8, "little") for d in GDT))
        idt = b""
        for vec in range(256):
            stub = G_STUBS + 64 * vec
            idt += ((stub & 0xFFFF) | 0x08 << 16 | 0x8E00 << 32 | ((stub >> 16) & 0xFFFF) << 48
                    ).to_bytes(8, "little") + (stub >> 32).to_bytes(8, "little")
        self.put(G_IDT, idt)
        self.put(G_STUBS, _stubs())
        self.put(REC, (0xFFFFFFFF).to_bytes(4, "little") + bytes(28))
        self.put(GUEST_STACK - 0x1000, bytes(0x1000))

    # -- SEV-SNP ------------------------------------------------------------------------
    def _enable_snp(self):
        """The RMP covers the 32 MiB machine; SNPEn and VMPLEn on."""
        cpu = self.cpu
        msr.wrmsr(cpu, RMP_BASE, RMP_AT)
        msr.wrmsr(cpu, RMP_END, RMP_AT + 0x4000 + 16 * (32 << 20 >> 12) - 1)
        msr.wrmsr(cpu, SYSCFG, 1 << 23 | 1 << 24 | 1 << 25)

    def assign(self, first, last, validated=True, asid=None, vmsa=False, gpa_of=lambda spa: spa):
        """Give the 4 KiB pages [first, last) to the guest in the RMP, as the
        AMD-SP's LAUNCH_UPDATE would (guest-owned, validated, VMPL0 all)."""
        for spa in range(first, last, PAGE):
            self.m.rmp.write(spa, RmpEntry(True, 0, False, gpa_of(spa), self.asid if asid is None else asid,
                                           vmsa, validated, [PERM_ALL, 0, 0, 0]))

    def initial_vmsa(self) -> VmsaView:
        g = VmsaView(bytearray(4096))
        g.set_segment("CS", 0x08, 0xA9B, 0xFFFFFFFF, 0)
        for seg in ("DS", "ES", "SS", "FS", "GS"):
            g.set_segment(seg, 0x10, 0xC93, 0xFFFFFFFF, 0)
        g.set_segment("GDTR", 0, 0, 8 * len(GDT) - 1, G_GDT)
        g.set_segment("IDTR", 0, 0, 16 * 256 - 1, G_IDT)
        g.set_segment("TR", 0, 0x8B, 0xFFFF, 0)
        g.set_segment("LDTR", 0, 0x82, 0xFFFF, 0)
        g["CR0"], g["CR4"], g["CR3"] = 0x80010031, 0x620, G_PML4
        g["EFER"] = (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12)
        g["RIP"], g["RSP"], g["RFLAGS"] = GUEST_CODE, GUEST_STACK, 2
        g["G_PAT"], g["DR7"], g["DR6"] = 0x0007040600070406, 0x400, 0xFFFF0FF0
        g["XCR0"], g["MXCSR"], g["X87_FCW"], g["X87_FTW"] = 1, 0x1F80, 0x37F, 0xFFFF
        if self.snp:
            g["SEV_FEATURES"] = 1                                # SNPActive
        return g

    def write_vmsa(self, g: VmsaView, seal=True):
        """Encrypt ``g`` at the VMSA page and seal it, as LAUNCH_UPDATE_VMSA does."""
        plain = bytes(g.mem.buf)
        self.m.bus.write_bytes(VMSA, EncryptionEngine.encrypt(KEY, VMSA, plain))
        if seal:
            self.m.mem_engine.seal_vmsa(VMSA, plain)

    def vmsa(self) -> VmsaView:
        """The VMSA as the guest owner (who knows the key) would decrypt it."""
        return VmsaView(bytearray(self.private(VMSA, 4096)))

    def recorded(self):
        """(vector, error code, saved RIP) the guest IDT stub recorded, or None."""
        rec = self.private(REC, 24)
        vec = int.from_bytes(rec[:4], "little")
        if vec == 0xFFFFFFFF:
            return None
        return vec, int.from_bytes(rec[8:16], "little"), int.from_bytes(rec[16:24], "little")
