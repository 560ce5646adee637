"""Multiboot kernels built from raw machine code, with no toolchain.

``flat_kernel(code)`` wraps 32-bit code in a Multiboot v1 image that uses the
a.out kludge (header flag 16): the header gives the load address, the end of
the file's bytes, the end of .bss and the entry point, so the image boots on
``qemu-system-x86_64 -kernel`` and on svmsim alike.  ``Code`` assembles the
few 32-bit instructions the campaigns and reproducers need (encodings from
APM vol 3), with labels.  The campaigns boot generated kernels through the
real loader and command line; tests build reproducers with them.
"""
import struct

MAGIC = 0x1BADB002
FLAGS = 0x00010003            # page-align modules, memory info, a.out kludge addresses
HEADER_SIZE = 32
LOAD_ADDR = 0x100000
COM1 = 0x3F8
DEBUG_EXIT = 0xF4


def flat_kernel(body: bytes, load_addr: int = LOAD_ADDR, bss: int = 0) -> bytes:
    """A Multiboot kernel: the header at ``load_addr``, then ``body`` (entered
    at its first byte in 32-bit protected mode, EAX = 0x2BADB002, EBX = the
    Multiboot info), then ``bss`` zero bytes the loader provides."""
    entry = load_addr + HEADER_SIZE
    end = entry + len(body)
    header = struct.pack("<8I", MAGIC, FLAGS, -(MAGIC + FLAGS) & 0xFFFFFFFF,
                         load_addr, load_addr, end, end + bss, entry)
    return header + body


class _Ref:
    __slots__ = ("label", "kind")

    def __init__(self, label, kind):
        self.label, self.kind = label, kind


class Code:
    """32-bit code placed at ``origin``; ``label``/``ref`` resolve forward
    references, ``image()`` returns the bytes."""

    def __init__(self, origin: int = LOAD_ADDR + HEADER_SIZE):
        self.origin = origin
        self.buf = bytearray()
        self.labels: dict = {}
        self.fixups: list = []          # (position, label, kind)

    @property
    def here(self) -> int:
        return self.origin + len(self.buf)

    def emit(self, *parts) -> "Code":
        for p in parts:
            if isinstance(p, _Ref):
                self.fixups.append((len(self.buf), p.label, p.kind))
                p = bytes(1 if p.kind == "rel8" else 8 if p.kind == "gate" else 4)
            self.buf += p if isinstance(p, (bytes, bytearray)) else bytes((p,))
        return self

    def label(self, name: str) -> "Code":
        self.labels[name] = self.here
        return self

    @staticmethod
    def _addr(target, kind="abs32"):
        """A 32-bit address (or rel8/rel32 displacement) of a label or a number."""
        if isinstance(target, str):
            return _Ref(target, kind)
        return struct.pack("<I", target & 0xFFFFFFFF)

    def image(self) -> bytes:
        for pos, name, kind in self.fixups:
            target = self.labels[name]
            if kind == "abs32":
                struct.pack_into("<I", self.buf, pos, target)
            elif kind == "rel32":
                struct.pack_into("<i", self.buf, pos, target - (self.origin + pos + 4))
            elif kind == "gate":                # 32-bit interrupt gate, DPL 0 (APM vol 2, 4.8.3)
                struct.pack_into("<HHBBH", self.buf, pos, target & 0xFFFF, 0x08, 0, 0x8E, target >> 16)
            else:
                rel = target - (self.origin + pos + 1)
                assert -128 <= rel < 128, f"jump to {name} too far for rel8"
                struct.pack_into("<b", self.buf, pos, rel)
        return bytes(self.buf)

    # -- instructions ----------------------------------------------------------------
    def mov_eax(self, imm):                 # mov eax, imm32
        return self.emit(0xB8, self._addr(imm))

    def mov_store32(self, addr, imm):       # mov dword [addr], imm32
        return self.emit(0xC7, 0x05, self._addr(addr), self._addr(imm))

    def mov_store8(self, addr, imm):        # mov byte [addr], imm8
        return self.emit(0xC6, 0x05, self._addr(addr), imm & 0xFF)

    def load_eax(self, addr):               # mov eax, [addr]
        return self.emit(0xA1, self._addr(addr))

    def store_eax(self, addr):              # mov [addr], eax
        return self.emit(0xA3, self._addr(addr))

    def out8(self, port, value):            # mov al, value; out port, al
        return self.emit(0xB0, value & 0xFF, 0xE6, port)

    def lidt(self, addr):                   # lidt [addr]
        return self.emit(0x0F, 0x01, 0x1D, self._addr(addr))

    def call(self, target):
        return self.emit(0xE8, self._addr(target, "rel32"))

    def jmp(self, target):
        return self.emit(0xE9, self._addr(target, "rel32"))

    def jmp_eax(self):
        return self.emit(0xFF, 0xE0)

    def exit_eax(self):
        """out 0xF4, eax: isa-debug-exit ends the run with status (EAX << 1) | 1."""
        return self.emit(0xE7, DEBUG_EXIT)

    def exit(self, value=0):
        return self.mov_eax(value).exit_eax()

    def halt_forever(self):                 # 1: cli; hlt; jmp 1b
        return self.emit(0xFA, 0xF4, 0xEB, 0xFC)

    def align(self, n):
        self.buf += bytes(-self.here % n)
        return self

    def put_hex_eax(self):
        """Print EAX as 8 hex digits and a newline on COM1 (clobbers EAX, EBX, ECX, EDX)."""
        return self.call("_put_hex")

    def runtime(self):
        """The subroutines ``put_hex_eax`` calls; emit once, after the code."""
        self.label("_put_hex")
        self.emit(0x89, 0xC3)                           # mov ebx, eax
        self.emit(0xB9, struct.pack("<I", 8))           # mov ecx, 8
        self.emit(0x66, 0xBA, struct.pack("<H", COM1))  # mov dx, 0x3F8
        self.label("_put_hex_digit")
        self.emit(0xC1, 0xC3, 0x04)                     # rol ebx, 4
        self.emit(0x89, 0xD8)                           # mov eax, ebx
        self.emit(0x83, 0xE0, 0x0F)                     # and eax, 15
        self.emit(0x8A, 0x80, self._addr("_hex_digits"))  # mov al, [_hex_digits + eax]
        self.emit(0xEE)                                 # out dx, al
        self.emit(0xE2, self._addr("_put_hex_digit", "rel8"))  # loop
        self.emit(0xB0, 0x0A, 0xEE, 0xC3)               # mov al, 10; out dx, al; ret
        self.label("_hex_digits").emit(b"0123456789abcdef")
        return self

    def idt(self, handler: str, vectors: int = 48):
        """An IDT whose ``vectors`` 32-bit interrupt gates (CS 0x08, as
        Multiboot leaves it) all lead to ``handler``; its IDTR at label "idtr"."""
        self.align(8).label("idt")
        for _ in range(vectors):
            self.emit(_Ref(handler, "gate"))
        self.label("idtr").emit(struct.pack("<H", vectors * 8 - 1), self._addr("idt"))
        return self


def kernel(code: Code, bss: int = 0) -> bytes:
    """The Multiboot kernel of ``code`` (assembled at LOAD_ADDR + HEADER_SIZE)."""
    return flat_kernel(code.image(), code.origin - HEADER_SIZE, bss)


# -- the PSP mailbox, from guest code ---------------------------------------------------
PSP_MMIO = 0xFE000000             # Machine.AMD_SP_MMIO
CMDRESP, CMDBUFF_LO, CMDBUFF_HI = 0x10980, 0x109E0, 0x109E4     # layout "v2" (sev/mailbox.py)


def mailbox_kernel(commands, psp: int = PSP_MMIO) -> bytes:
    """A kernel that issues SEV commands through the PSP mailbox, as Linux's
    ccp driver does, and prints each CMDRESP (RESP bit 31, status 15:0) as
    eight hex digits on COM1, then exits with 0 (status 1).

    ``commands``: (command id, buffer) pairs; a buffer is bytes (placed in
    the kernel, 4 KiB aligned) or an int (a physical address used as is)."""
    c = Code()
    for i, (cmd, buf) in enumerate(commands):
        addr = f"buf{i}" if isinstance(buf, (bytes, bytearray)) else buf
        c.mov_store32(psp + CMDBUFF_LO, addr).mov_store32(psp + CMDBUFF_HI, 0)
        c.mov_store32(psp + CMDRESP, (cmd & 0x7FF) << 16)
        c.load_eax(psp + CMDRESP).put_hex_eax()
    c.exit(0).halt_forever().runtime()
    for i, (_, buf) in enumerate(commands):
        if isinstance(buf, (bytes, bytearray)):
            c.align(4096).label(f"buf{i}").emit(bytes(buf))
    return kernel(c)


def elf_kernel(cls64: bool, phoff: int = None, body: bytes = b"\xEB\xFE") -> bytes:
    """A Multiboot kernel as ELF32 (i386) or ELF64 (x86-64) with one PT_LOAD
    segment at 1 MiB holding the Multiboot header and ``body`` (entered at
    0x10000C); ``phoff``: the program header table's offset (default: right
    after the ELF header)."""
    mb = struct.pack("<III", MAGIC, 0, -MAGIC & 0xFFFFFFFF) + body
    if cls64:
        phoff = 64 if phoff is None else phoff
        eh = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
            "<HHIQQQIHHHHHH", 2, 62, 1, 0x10000C, phoff, 0, 0, 64, 56, 1, 64, 0, 0)
        ph = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x100000, 0x100000, len(mb), len(mb), 0x1000)
    else:
        phoff = 52 if phoff is None else phoff
        eh = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
            "<HHIIIIIHHHHHH", 2, 3, 1, 0x10000C, phoff, 0, 0, 52, 32, 1, 40, 0, 0)
        ph = struct.pack("<8I", 1, 0x1000, 0x100000, 0x100000, len(mb), len(mb), 5, 0x1000)
    head = eh + ph
    return head + bytes(0x1000 - len(head)) + mb


def vmrun_module_kernel(hsave: int = 0x800000) -> bytes:
    """The smallest hypervisor for ``svmsim fuzz vmcb --kernel``: it sets
    EFER.SVME and VM_HSAVE_PA, runs VMRUN on Multiboot module 0 where the
    loader put it (the VMCB page, 4 KiB aligned), and exits with the low
    byte of the #VMEXIT's EXITCODE (VMCB offset 70h; APM vol 2, table B-1).
    A real hypervisor would copy the fields it accepts into its own VMCB."""
    c = Code()
    c.emit(0xB9, struct.pack("<I", 0xC0000080), 0x0F, 0x32)              # mov ecx, EFER; rdmsr
    c.emit(0x0D, struct.pack("<I", 1 << 12), 0x0F, 0x30)                 # or eax, SVME; wrmsr
    c.emit(0xB9, struct.pack("<I", 0xC0010117), 0xB8, struct.pack("<I", hsave))
    c.emit(0x31, 0xD2, 0x0F, 0x30)                                       # xor edx, edx; wrmsr
    c.emit(0x8B, 0x43, 0x18, 0x8B, 0x00).store_eax(0x7000)              # mov eax, [ebx+24]; mov eax, [eax]
    c.emit(0x0F, 0x01, 0xD8)                                             # vmrun (eax: the VMCB)
    c.load_eax(0x7000).emit(0x8B, 0x40, 0x70, 0x25, struct.pack("<I", 0xFF))   # mov eax, [eax+70h]; and eax, 0xFF
    c.exit_eax().halt_forever()
    return kernel(c)
