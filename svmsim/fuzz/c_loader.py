"""Campaign ``loader``: mutated Multiboot kernels (a.out kludge, ELF32, ELF64)
and Linux bzImage headers, with modules and command lines, through
``Machine.load_kernel`` (the path ``svmsim run`` takes), then a short run.

Mutations: bytes flipped or overwritten, header fields (ELF header, program
headers, Multiboot header, bzImage setup header) set to boundary values
(0, all ones, 2^31, 2^63, sizes past RAM and 4 GiB), truncation, growth.
Invariant: loading ends in a one-line user error (a LoadError/ConfigError
message without a newline) or the kernel runs to an architectural outcome,
never status 70 or a Python exception (issue 13, finding 1)."""
import os
import struct
import tempfile

from .driver import Campaign, Failure, campaign
from . import kernels as K
from ..errors import SvmsimError
from ..machine import Machine, STATUS_INTERNAL

BOUNDARY = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFF000,
            0x100000, 0x1000, 1 << 32, 1 << 40, 1 << 63, (1 << 64) - 1, (1 << 64) - 0x1000]
# (offset, size) of the fields a loader reads, per base image
ELF64_FIELDS = [(16, 2), (18, 2), (24, 8), (32, 8), (40, 8), (52, 2), (54, 2), (56, 2), (58, 2), (60, 2),
                (64, 4), (68, 4), (72, 8), (80, 8), (88, 8), (96, 8), (104, 8), (112, 8)]
ELF32_FIELDS = [(16, 2), (18, 2), (24, 4), (28, 4), (32, 4), (42, 2), (44, 2), (46, 2), (48, 2),
                (52, 4), (56, 4), (60, 4), (64, 4), (68, 4), (72, 4), (76, 4), (80, 4)]
AOUT_FIELDS = [(4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4)]
MB_IN_ELF = [(0x1000, 4), (0x1004, 4), (0x1008, 4)]
BZ_FIELDS = [(0x1F1, 1), (0x1F4, 4), (0x202, 4), (0x206, 2), (0x211, 1), (0x214, 4), (0x218, 4),
             (0x21C, 4), (0x228, 4), (0x230, 4), (0x234, 1), (0x238, 4), (0x258, 8), (0x260, 4)]


def _base(kind: str) -> tuple:
    if kind == "aout":
        c = K.Code().mov_eax(0x12345678).out8(0x80, 0x41).exit(0).halt_forever()
        return K.kernel(c, bss=0x1000), AOUT_FIELDS
    if kind == "elf32":
        return K.elf_kernel(False), ELF32_FIELDS + MB_IN_ELF
    if kind == "elf64":
        return K.elf_kernel(True), ELF64_FIELDS + MB_IN_ELF
    # a minimal bzImage: setup sectors, "HdrS", protocol 2.15, a 64-bit entry that spins
    img = bytearray(0x1000 + 0x200)
    img[0x1F1] = 1                                       # setup_sects
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)           # version
    img[0x211] = 1                                       # loadflags: LOADED_HIGH
    struct.pack_into("<I", img, 0x230, 0x200000)         # kernel_alignment
    img[0x234] = 1                                       # relocatable
    struct.pack_into("<I", img, 0x260, 0x100000)         # init_size
    img[0x400:0x402] = b"\xEB\xFE"
    return bytes(img), BZ_FIELDS


def _value(rnd, size):
    v = rnd.choice(BOUNDARY + [rnd.getrandbits(8 * size)])
    return v & ((1 << (8 * size)) - 1)


@campaign
class Loader(Campaign):
    name = "loader"
    description = "mutated Multiboot (a.out, ELF32, ELF64) and bzImage kernels, modules, command lines"

    def generate(self, rnd):
        kind = rnd.choice(("aout", "elf32", "elf64", "elf64", "bzimage"))
        data, fields = _base(kind)
        data = bytearray(data)
        for _ in range(rnd.choice((1, 1, 2, 3, 6))):
            op = rnd.random()
            if op < 0.5:
                off, size = rnd.choice(fields)
                if off + size <= len(data):
                    data[off:off + size] = _value(rnd, size).to_bytes(size, "little")
            elif op < 0.75 and data:
                i = rnd.randrange(len(data))
                data[i] = rnd.randrange(256)
            elif op < 0.87:
                del data[rnd.randrange(len(data) + 1):]          # truncation
            else:
                data += bytes(rnd.randrange(256) for _ in range(rnd.choice((1, 16, 4096))))
        mods = [bytes(rnd.randrange(256) for _ in range(rnd.choice((0, 1, 100, 5000))))
                for _ in range(rnd.choice((0, 0, 1, 3)) if kind != "bzimage" else 0)]
        append = bytes(rnd.choice((0x20, 0x41, 0xFF, 0xC3, 0x80, 0x0A, 0x25))
                       for _ in range(rnd.choice((0, 0, 5, 300))))
        return {"kind": kind, "image": bytes(data), "modules": mods, "append": append,
                "mem": rnd.choice(("16M", "64M", "3G", "5G")), "initrd": kind == "bzimage" and rnd.random() < 0.3}

    def execute(self, inp):
        import io
        with tempfile.TemporaryDirectory(prefix="svmsim-fuzz-") as d:
            kpath = os.path.join(d, "kernel")
            with open(kpath, "wb") as f:
                f.write(inp["image"])
            mods = []
            for i, data in enumerate(inp["modules"]):
                p = os.path.join(d, f"mod{i}")
                with open(p, "wb") as f:
                    f.write(data)
                mods.append((p, f"arg{i}"))
            initrd = None
            if inp.get("initrd"):
                initrd = os.path.join(d, "initrd")
                with open(initrd, "wb") as f:
                    f.write(b"\x00" * 512)
            with Machine(mem_size=inp["mem"]) as m:
                m.uart.out = io.BytesIO()
                try:
                    m.load_kernel(kpath, os.fsdecode(inp["append"]), mods, initrd=initrd)
                except SvmsimError as e:
                    if "\n" in str(e) or not str(e):
                        raise Failure(f"user error is not one line: {str(e)!r}")
                    return f"{inp['kind']} refused"
                r = m.run(max_insns=20000, timeout=20, max_virtual_ns=1_000_000_000)
                if r.status == STATUS_INTERNAL:
                    raise Failure(r.reason)
                return f"{inp['kind']} {r.kind}"
