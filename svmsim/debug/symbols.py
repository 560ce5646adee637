"""ELF symbols for addresses: ``rip=0x101234 <guest_entry+0x14>``.

The kernel's symbol table (pyelftools) is read when first needed; functions,
objects and untyped labels (assembly) count, section and file symbols do not.
An address resolves to the nearest symbol at or below it, within the
symbol's size when it has one, else up to the next symbol.
"""
import bisect

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

_KINDS = ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")


class SymbolTable:
    def __init__(self):
        self._addrs: list = []
        self._syms: list = []         # (address, size, name), sorted by address

    def load_elf(self, path, offset: int = 0) -> int:
        """Add the symbols of an ELF file (shifted by ``offset``); returns how many."""
        found = []
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                for section in elf.iter_sections():
                    if section.header.sh_type not in ("SHT_SYMTAB", "SHT_DYNSYM"):
                        continue
                    for sym in section.iter_symbols():
                        e = sym.entry
                        if (e.st_info.type in _KINDS and sym.name and e.st_shndx != "SHN_UNDEF"
                                and not sym.name.startswith(".L")):
                            found.append((e.st_value + offset, e.st_size, sym.name))
        except (OSError, ELFError):
            return 0
        self._syms = sorted(set(self._syms) | set(found))
        self._addrs = [s[0] for s in self._syms]
        return len(found)

    def lookup(self, address: int):
        """(name, offset) of the symbol holding ``address``, or None."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        start, size, name = self._syms[i]
        # Prefer a sized symbol that covers the address among same-address aliases.
        j = i
        while j > 0 and self._addrs[j - 1] == start:
            j -= 1
            if self._syms[j][1] > size:
                size, name = self._syms[j][1], self._syms[j][2]
        if size and address >= start + size:
            return None
        return name, address - start

    def describe(self, address: int) -> str:
        """``<name+0x14>``, ``<name>`` or an empty string."""
        hit = self.lookup(address)
        if hit is None:
            return ""
        name, off = hit
        return f"<{name}+{off:#x}>" if off else f"<{name}>"

    def __len__(self):
        return len(self._syms)
