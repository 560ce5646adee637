"""The SEV-SNP CPUID page and the firmware's check of it (issue 10 item 5).

An SNP guest cannot trust CPUID values the hypervisor hands it through #VC,
so the hypervisor fills a page with the guest's CPUID table and the AMD-SP
checks every entry against the processor before it encrypts the page
(SNP_LAUNCH_UPDATE, page type CPUID).  A bad entry is corrected in place and
the command fails with INVALID_PARAM, leaving the corrected table in the page
for the hypervisor to read back (what KVM copies to userspace and QEMU
reports as mismatches).

Layout (Linux ``struct snp_cpuid_table``): count u32, reserved u32 and u64,
then up to 64 entries of {EAX_IN u32, ECX_IN u32, XCR0_IN u64, XSS_IN u64,
EAX, EBX, ECX, EDX u32, reserved u64}.

Which bits the firmware lets the hypervisor choose is AMD's policy table
(SNP ABI, appendix "CPUID reporting"), which was not at hand; svmsim's policy
(docs/DESIGN.md) is ``POLICY`` below: feature words may only report features
the processor has (plus the hypervisor-present bit), the physical-address
width may not exceed the processor's, the C-bit position and the address
reduction must be the processor's, and leaves the processor does not
implement must be zero.  Everything else (signature, topology, cache and
the hypervisor range 4000_0000h-4000_00FFh) is the hypervisor's choice.
"""
from __future__ import annotations

import struct

MAX_ENTRIES = 64
HEADER = struct.Struct("<IIQ")
ENTRY = struct.Struct("<IIQQIIIIQ")
REGS = ("eax", "ebx", "ecx", "edx")

# (leaf, subleaf or None) -> {register index: (kind, allowed extra bits / field mask)}
#   "subset": only bits the processor reports (plus the extra ones)
#   "equal":  the masked field equals the processor's
#   "le":     the masked field is at most the processor's
POLICY = {
    (0x00000001, None): {2: ("subset", 1 << 31), 3: ("subset", 0)},
    (0x00000007, 0): {1: ("subset", 0), 2: ("subset", 0), 3: ("subset", 0)},
    (0x80000001, None): {2: ("subset", 0), 3: ("subset", 0)},
    (0x80000008, None): {0: ("le", 0xFF)},
    (0x8000001F, None): {0: ("subset", 0), 1: ("equal", 0xFFF)},
}


def pack_table(entries) -> bytes:
    """A CPUID page from (eax_in, ecx_in, eax, ebx, ecx, edx) tuples."""
    entries = list(entries)
    out = HEADER.pack(len(entries), 0, 0)
    for eax_in, ecx_in, *regs in entries:
        out += ENTRY.pack(eax_in, ecx_in, 0, 0, *regs, 0)
    return out.ljust(0x1000, b"\0")


def unpack_table(page: bytes) -> list:
    count = HEADER.unpack_from(page)[0]
    return [ENTRY.unpack_from(page, HEADER.size + i * ENTRY.size)
            for i in range(min(count, MAX_ENTRIES))]


def _implemented(leaf, real_max):
    base, ext = real_max
    return leaf <= base or 0x80000000 <= leaf <= ext or 0x40000000 <= leaf <= 0x400000FF


def check_table(page: bytes, cpuid, real_max) -> tuple[bytes, list]:
    """(the page with every bad entry corrected, [(index, leaf, subleaf, register,
    given, allowed)]).  ``cpuid(leaf, subleaf)`` is the processor's answer;
    ``real_max`` its highest basic and extended leaves."""
    count = HEADER.unpack_from(page)[0]
    out, problems = bytearray(page), []
    if count > MAX_ENTRIES:
        problems.append((None, None, None, "count", count, MAX_ENTRIES))
        out[0:4] = struct.pack("<I", MAX_ENTRIES)
    for i, (eax_in, ecx_in, xcr0, xss, *regs, rsvd) in enumerate(unpack_table(page)):
        fixed = _allowed(eax_in, ecx_in, regs, cpuid, real_max)
        for r, (given, want) in enumerate(zip(regs, fixed)):
            if given != want:
                problems.append((i, eax_in, ecx_in, REGS[r], given, want))
        if fixed != list(regs):
            off = HEADER.size + i * ENTRY.size
            out[off:off + ENTRY.size] = ENTRY.pack(eax_in, ecx_in, xcr0, xss, *fixed, rsvd)
    return bytes(out), problems


def _allowed(leaf, subleaf, regs, cpuid, real_max) -> list:
    if not _implemented(leaf, real_max):
        return [0, 0, 0, 0]
    rules = POLICY.get((leaf, subleaf)) or POLICY.get((leaf, None))
    if not rules:
        return list(regs)
    real = cpuid(leaf, subleaf)
    fixed = list(regs)
    for r, (kind, bits) in rules.items():
        if kind == "subset":
            fixed[r] = regs[r] & (real[r] | bits)
        elif kind == "equal":
            fixed[r] = (regs[r] & ~bits) | (real[r] & bits)
        elif kind == "le" and regs[r] & bits > real[r] & bits:
            fixed[r] = (regs[r] & ~bits) | (real[r] & bits)
    return fixed
