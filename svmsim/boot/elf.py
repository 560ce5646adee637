"""A small ELF reader for the kernel loader: the header and the PT_LOAD segments.

Parsing is done by pyelftools; this module only turns its view into two small
frozen dataclasses and every parse failure into a one-line
:class:`svmsim.errors.LoadError` that names the file.

Only what a boot loader needs is kept (System V gABI, "Program Header"):
each PT_LOAD segment's file bytes, its physical and virtual addresses and its
memory size (the part past ``p_filesz`` is zero-filled .bss).  Segments with
``p_memsz == 0`` are dropped, as QEMU's ``load_elf`` drops them
(include/hw/elf_ops.h: "Some ELF files really do have segments of zero size").
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from svmsim.errors import LoadError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1

EM_386 = 3
EM_X86_64 = 62

PT_LOAD = 1
PF_X = 1

_MACHINE_NAMES = {EM_386: "i386", EM_X86_64: "x86-64"}


@dataclass(frozen=True)
class ElfSegment:
    """One PT_LOAD program header and its file bytes (``len(data) == filesz``)."""

    index: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int
    data: bytes

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


@dataclass(frozen=True)
class ElfImage:
    """What a loader needs from an ELF executable."""

    elf_class: int          # 32 or 64
    machine: int            # e_machine (EM_386, EM_X86_64, ...)
    type_name: str          # "ET_EXEC", "ET_DYN", ...
    entry: int              # e_entry, as stored (a virtual address)
    segments: tuple[ElfSegment, ...]

    @property
    def machine_name(self) -> str:
        return machine_name(self.machine)

    def describe(self) -> str:
        return (f"ELF{self.elf_class} {self.machine_name} {self.type_name}, "
                f"entry {self.entry:#x}, {len(self.segments)} PT_LOAD")


def machine_name(machine: int) -> str:
    return _MACHINE_NAMES.get(machine, f"machine {machine}")


def is_elf(data: bytes) -> bool:
    """True if ``data`` starts with the ELF magic (gABI, e_ident[EI_MAG0..3])."""
    return data[:4] == ELF_MAGIC


def elf_class_and_machine(data: bytes) -> tuple[int, int] | None:
    """(32 | 64, e_machine) from the first 20 bytes, or None if not ELF.

    e_machine sits at offset 18 in both ELF32 and ELF64 headers, which is
    why QEMU can test it without knowing the class.
    """
    if not is_elf(data) or len(data) < 20 or data[4] not in (ELFCLASS32, ELFCLASS64):
        return None
    (machine,) = struct.unpack_from("<H", data, 18)
    return (32 if data[4] == ELFCLASS32 else 64), machine


def parse_elf(data: bytes, name: str) -> ElfImage:
    """Parse ``data`` (a whole file) or raise LoadError("<name>: ...")."""
    if not is_elf(data):
        raise LoadError(f"{name}: not an ELF file")
    if len(data) < 6 or data[4] not in (ELFCLASS32, ELFCLASS64):
        raise LoadError(f"{name}: ELF file with an invalid class byte")
    if data[5] != ELFDATA2LSB:
        raise LoadError(f"{name}: big-endian ELF file; x86 needs little-endian")
    _check_program_headers(data, name)
    try:
        elf = ELFFile(io.BytesIO(data))
        header = elf.header
        segments = tuple(_load_segments(elf, data, name))
    except LoadError:
        raise
    except Exception as exc:    # pyelftools on hostile input: any failure means "malformed"
        raise LoadError(f"{name}: malformed ELF file ({type(exc).__name__}: {exc})") from None
    _, machine = elf_class_and_machine(data)
    return ElfImage(elf_class=elf.elfclass, machine=machine,
                    type_name=str(header["e_type"]), entry=header["e_entry"],
                    segments=segments)


def _check_program_headers(data: bytes, name: str) -> None:
    """The program header table (e_phoff, e_phentsize x e_phnum) lies inside
    the file (gABI, "ELF Header"); checked before pyelftools seeks there, so
    a hostile offset (e.g. >= 2^63) is a LoadError, not an OverflowError."""
    is64 = data[4] == ELFCLASS64
    need = 64 if is64 else 52
    if len(data) < need:
        raise LoadError(f"{name}: ELF header truncated ({len(data)} of {need} bytes)")
    if is64:
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        entsize = 56
    else:
        phoff, = struct.unpack_from("<I", data, 28)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
        entsize = 32
    if phnum and phentsize < entsize:
        raise LoadError(f"{name}: e_phentsize {phentsize} is smaller than a program header ({entsize})")
    if phoff + phentsize * phnum > len(data):
        raise LoadError(f"{name}: program header table at e_phoff {phoff:#x} "
                        f"({phnum} x {phentsize} bytes) is past the end of the file ({len(data):#x} bytes)")


def _load_segments(elf: ELFFile, data: bytes, name: str):
    for index in range(elf.num_segments()):
        ph = elf.get_segment(index).header
        if ph["p_type"] not in ("PT_LOAD", PT_LOAD) or ph["p_memsz"] == 0:
            continue
        off, filesz, memsz = ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
        if filesz > memsz:
            raise LoadError(f"{name}: segment {index} has p_filesz {filesz:#x} "
                            f"> p_memsz {memsz:#x}")
        if off + filesz > len(data):
            raise LoadError(f"{name}: segment {index} extends past the end of "
                            f"the file (offset {off:#x} + {filesz:#x} > {len(data):#x})")
        yield ElfSegment(index=index, offset=off, vaddr=ph["p_vaddr"],
                         paddr=ph["p_paddr"], filesz=filesz, memsz=memsz,
                         flags=ph["p_flags"], data=bytes(data[off:off + filesz]))
