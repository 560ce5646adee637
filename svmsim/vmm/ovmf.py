"""An OVMF firmware image as QEMU maps and reads it for a confidential guest.

QEMU maps a ``-bios`` (or pflash) image so that it ends at 4 GiB: the reset
vector sits at FFFF_FFF0h (APM vol 2, 14.1.5).  Just below the last 32 bytes
of the image (the reset vector area), OVMF's ResetVector places a table of
GUIDed entries that the VMM reads (edk2 OvmfPkg/ResetVector; QEMU
hw/i386/pc_sysfw_ovmf.c).  Read backwards from ``size - 32``:

    ... | entry data | u16 entry size | entry GUID | ... | u16 table size | footer GUID |

Each entry's size counts its data, its size field and its GUID; the footer's
counts the whole table including the footer.  The entries a launch needs:

* SEV-ES reset block (``00f771de-...``): a u32 guest-physical address where
  an SEV-ES AP starts after reset (its CS base is the address's upper 16 bits,
  RIP the lower 16, as QEMU sets the APs' reset state);
* the SEV metadata (``dc886566-...``): a u32 offset from the end of the image
  to an ``ASEV`` header {signature "ASEV", size u32, version u32 (1), count
  u32} followed by ``count`` sections {gPA u32, size u32, type u32}
  (edk2 OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm): the memory an SEV-SNP
  launch prepares besides the image (``sev_metadata``);
* the SEV hash table (kernel hashes; not read here).
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from ..errors import LoadError

FOUR_GIB = 1 << 32
RESET_AREA = 32                     # bytes after the table: the reset vector's area
ENTRY_HEADER = 18                   # u16 size + 16-byte GUID

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_HASH_TABLE_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")

# OVMF SEV metadata section types (OvmfSevMetadata.asm).
SECTION_SNP_SEC_MEM, SECTION_SNP_SECRETS, SECTION_CPUID = 1, 2, 3
SECTION_SVSM_CAA, SECTION_SNP_KERNEL_HASHES = 4, 0x10
SECTION_NAMES = {1: "SNP_SEC_MEM", 2: "SNP_SECRETS", 3: "CPUID", 4: "SVSM_CAA",
                 0x10: "SNP_KERNEL_HASHES"}

# QEMU's x86 BIOS loader refuses an image whose size is not a multiple of 64 KiB.
SIZE_GRANULE = 64 << 10


class OvmfError(LoadError):
    """Not an image QEMU would launch as this confidential guest's firmware."""


@dataclass(frozen=True)
class OvmfImage:
    """The bytes of a firmware image and its GUIDed table (empty if it has none)."""
    data: bytes
    table: dict                     # uuid.UUID -> entry data (bytes)
    name: str = "image"

    @classmethod
    def from_file(cls, path: str) -> "OvmfImage":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise OvmfError(f"cannot read the firmware image: {e.strerror}: {path}") from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: bytes, name: str = "image") -> "OvmfImage":
        data = bytes(data)
        if not data or len(data) % SIZE_GRANULE:
            raise OvmfError(f"{name}: {len(data)} bytes is not a firmware image size "
                            f"(a multiple of 64 KiB, as QEMU requires)")
        return cls(data, _footer_table(data, name), name)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def gpa(self) -> int:
        """Where the image starts in guest-physical memory: it ends at 4 GiB."""
        return FOUR_GIB - len(self.data)

    def sev_es_reset_eip(self) -> int | None:
        """The APs' SEV-ES reset address from the reset block, or None."""
        entry = self.table.get(SEV_ES_RESET_BLOCK_GUID)
        if entry is None:
            return None
        if len(entry) < 4:
            raise OvmfError(f"{self.name}: the SEV-ES reset block is {len(entry)} bytes, not a u32 address")
        return struct.unpack_from("<I", entry)[0]

    def sev_metadata(self) -> list:
        """The SEV metadata sections as (gPA, size, type), in table order;
        empty if the image has none."""
        entry = self.table.get(SEV_METADATA_GUID)
        if entry is None:
            return []
        if len(entry) < 4:
            raise OvmfError(f"{self.name}: the SEV metadata entry is {len(entry)} bytes")
        start = self.size - struct.unpack_from("<I", entry)[0]
        if not 0 <= start <= self.size - 16:
            raise OvmfError(f"{self.name}: the SEV metadata offset points outside the image")
        return parse_sev_metadata(self.data, start, self.name)


def parse_sev_metadata(data: bytes, start: int, name: str) -> list:
    """The ``ASEV`` header at ``data[start:]`` and its sections as (gPA,
    size, type); OvmfError for anything QEMU would not launch."""
    if not 0 <= start <= len(data) - 16:
        raise OvmfError(f"{name}: the SEV metadata is truncated")
    sig, size, version, count = struct.unpack_from("<4sIII", data, start)
    if sig != b"ASEV" or version != 1 or size < 16 + 12 * count or start + size > len(data):
        raise OvmfError(f"{name}: bad SEV metadata header ({sig!r}, version {version})")
    out = []
    for i in range(count):
        gpa, length, kind = struct.unpack_from("<III", data, start + 16 + 12 * i)
        if kind not in SECTION_NAMES or gpa & 0xFFF or length & 0xFFF:
            raise OvmfError(f"{name}: SEV metadata section {i} (type {kind}, gPA {gpa:#x}, "
                            f"{length:#x} bytes) is not one QEMU launches")
        out.append((gpa, length, kind))
    return out


def _footer_table(data: bytes, name: str) -> dict:
    """Entries of the GUIDed table before the reset vector area, by GUID."""
    end = len(data) - RESET_AREA
    if uuid.UUID(bytes_le=data[end - 16:end]) != FOOTER_GUID:
        return {}
    size = struct.unpack_from("<H", data, end - ENTRY_HEADER)[0]
    if size < ENTRY_HEADER or size > end:
        raise OvmfError(f"{name}: the OVMF GUIDed table claims {size} bytes")
    table, pos, start = {}, end - ENTRY_HEADER, end - size
    while pos - start >= ENTRY_HEADER:
        guid = uuid.UUID(bytes_le=data[pos - 16:pos])
        entry_size = struct.unpack_from("<H", data, pos - ENTRY_HEADER)[0]
        if entry_size < ENTRY_HEADER or pos - entry_size < start:
            raise OvmfError(f"{name}: OVMF table entry {guid} has an invalid size {entry_size}")
        table[guid] = data[pos - entry_size:pos - ENTRY_HEADER]
        pos -= entry_size
    return table
