"""Layouts compiled once: one ``struct`` unpack/pack per area (issue 14, item 1).

A world switch moves about a hundred VMCB fields.  Reading them one by one
(``int.from_bytes`` of a slice per field, a name lookup per access) cost
most of a VMRUN/#VMEXIT round trip, so the tables in vmcb.py are compiled
here, from the same data, into:

* ``Packed``: a ``struct.Struct`` over a byte range holding a set of the
  table's whole fields, with the bytes between them carried along as byte
  strings (so packing never clobbers reserved or software-owned bytes, e.g.
  the 32 bytes at 3E0h the APM leaves to software);
* ``VmcbPage``: the VMCB page as a dict of every whole field, filled by one
  unpack, read at dict speed (``page["EFER"]``), sub-fields (V_TPR,
  NP_ENABLE, ...) and aliases computed on first use, written back with one
  pack (``flush``).  It offers the VmcbView protocol (``[name]``,
  ``read(field)``, ``segment``, ``set_segment``, ``to_dict``, ``dump``) so
  the checks and the SEV/AVIC/nested-paging code take it unchanged.
"""
import struct
from operator import itemgetter

from . import vmcb as _vmcb
from .vmcb import FIELDS, BY_NAME, CHILDREN, VMCB_SIZE

_CODES = {8: "B", 16: "H", 32: "I", 64: "Q"}


class Packed:
    """Whole fields of a layout table between byte ``start`` and ``end``,
    as one struct.  ``unpack`` gives a list (fields and gap bytes, in
    offset order; ``index[name]`` is a field's position), ``pack_into``
    writes such a list back."""

    def __init__(self, fields, start: int, end: int):
        fields = sorted(fields, key=lambda f: f.offset)
        fmt, names, odd, pos = ["<"], [], [], start
        for f in fields:
            if f.parent is not None or f.bit:
                raise ValueError(f"{f.name}: only whole fields can be packed")
            if f.offset < pos or f.end > end:
                raise ValueError(f"{f.name} overlaps the previous field or leaves the range")
            if f.offset > pos:
                fmt.append(f"{f.offset - pos}s")
                names.append(pos)                     # a gap, named by its offset
            code = _CODES.get(f.width)
            if code is None:
                fmt.append(f"{f.nbytes}s")
                odd.append((len(names), f.nbytes))
            else:
                fmt.append(code)
            names.append(f.name)
            pos = f.end
        if pos < end:
            fmt.append(f"{end - pos}s")
            names.append(pos)
        self.struct = struct.Struct("".join(fmt))
        self.start, self.end = start, end
        self.names = tuple(names)
        self.index = {n: i for i, n in enumerate(names)}
        self.odd = tuple(odd)                          # fields wider than 64 bits: ints here

    def unpack(self, buf, base: int = 0) -> list:
        vals = list(self.struct.unpack_from(buf, base + self.start))
        for i, _n in self.odd:
            vals[i] = int.from_bytes(vals[i], "little")
        return vals

    def pack_into(self, buf, base: int, vals) -> None:
        if self.odd:
            vals = list(vals)
            for i, n in self.odd:
                vals[i] = vals[i].to_bytes(n, "little")
        self.struct.pack_into(buf, base + self.start, *vals)


# ---------------------------------------------------------------- the VMCB page
_TOP = tuple(f for f in FIELDS if f.parent is None)
VMCB_PACKED = Packed(_TOP, 0, VMCB_SIZE)
_TOP_MASK = {f.name: f.mask for f in _TOP}
_CHILD_NAMES = {p: tuple(c.name for c in cs) for p, cs in CHILDREN.items()}
_LOOKUP = _vmcb._LOOKUP
_SEG_NAMES = {s: (f"{s}.SEL" if f"{s}.SEL" in BY_NAME else None,
                  f"{s}.ATTRIB" if f"{s}.ATTRIB" in BY_NAME else None,
                  f"{s}.LIMIT", f"{s}.BASE") for s in _vmcb.SEGMENTS}


_ALL = itemgetter(*VMCB_PACKED.names)


class VmcbPage(dict):
    """A copy of a VMCB page as {field name: value} (see the module
    docstring).  ``cache``: the clean-bit copy (clean.py) that every write
    of a field refreshes, as the processor's copy is refreshed by the
    values it writes at #VMEXIT."""
    __slots__ = ("buf", "cache")

    def __init__(self, buf: bytearray, cache: dict = None):
        dict.__init__(self, zip(VMCB_PACKED.names, VMCB_PACKED.unpack(buf)))
        self.buf, self.cache = buf, cache

    # -- reads ----------------------------------------------------------
    def __missing__(self, name):
        f = _LOOKUP[name]                                 # KeyError for unknown names
        if f.name != name:
            return self[f.name]                           # an alias
        value = self[f.parent] >> f.bit & f.mask          # a sub-field, kept until its parent changes
        dict.__setitem__(self, name, value)
        return value

    def __contains__(self, name) -> bool:
        return name in _LOOKUP

    def read(self, f) -> int:
        return self[f.name]

    def segment(self, seg: str) -> tuple:
        sel, attr, limit, base = _SEG_NAMES[seg]
        return (self[sel] if sel else 0, self[attr] if attr else 0, self[limit], self[base])

    def to_dict(self) -> dict:
        return {f.name: self[f.name] for f in FIELDS}

    def dump(self) -> str:
        return _vmcb.format_vmcb(self.to_dict())

    # -- writes ---------------------------------------------------------
    def __setitem__(self, name, value) -> None:
        mask = _TOP_MASK.get(name)
        if mask is None:
            f = _LOOKUP[name]
            if f.parent is None:
                self[f.name] = value                      # an alias of a whole field
                return
            parent = f.parent
            m = f.mask << f.bit
            self[parent] = self[parent] & ~m | (value << f.bit) & m
            dict.__setitem__(self, f.name, value & f.mask)
            return
        dict.__setitem__(self, name, value & mask)
        for child in _CHILD_NAMES.get(name, ()):
            self.pop(child, None)
        if self.cache is not None:
            from .clean import refresh
            refresh(self.cache, name, value & mask)

    def write(self, f, value) -> None:
        self[f.name] = value

    def set_many(self, values: dict) -> None:
        """Write whole fields that have no sub-fields, in bulk (the #VMEXIT
        guest state); values must already fit their fields."""
        self.update(values)
        if self.cache is not None:
            from .clean import refresh
            for name, value in values.items():
                refresh(self.cache, name, value)

    def set_segment(self, seg: str, sel: int, attrib: int, limit: int, base: int) -> None:
        n_sel, n_attr, n_limit, n_base = _SEG_NAMES[seg]
        if n_sel:
            self[n_sel] = sel
            self[n_attr] = attrib
        self[n_limit] = limit
        self[n_base] = base

    def flush(self) -> bytearray:
        """Pack every field back into the page copy and return it."""
        VMCB_PACKED.pack_into(self.buf, 0, _ALL(self))
        return self.buf


# ---------------------------------------------------------------- the host save area
# What VMRUN saves and #VMEXIT restores of the host (APM vol 3 VMRUN, "save
# host state"; 15.6): in the VMCB's save-area layout (world.py's docstring).
HOST_FIELDS = ("ES.SEL", "ES.ATTRIB", "ES.LIMIT", "ES.BASE", "CS.SEL", "CS.ATTRIB", "CS.LIMIT",
               "CS.BASE", "SS.SEL", "SS.ATTRIB", "SS.LIMIT", "SS.BASE", "DS.SEL", "DS.ATTRIB",
               "DS.LIMIT", "DS.BASE", "GDTR.LIMIT", "GDTR.BASE", "IDTR.LIMIT", "IDTR.BASE",
               "EFER", "CR4", "CR3", "CR0", "RFLAGS", "RIP", "RSP", "RAX")
HOST_PACKED = Packed([BY_NAME[n] for n in HOST_FIELDS], 0x400, 0x600)


# ---------------------------------------------------------------- the world switch's hot path
# VMRUN reads the control area and the save area each with one unpack
# (Reader; switch.py), straight from RAM; #VMEXIT and the host save area
# write their fields with one pack per run of adjacent fields (Runs), so no
# byte they do not own (reserved, software-owned) is read back or rewritten.


class Runs:
    """Whole fields, in offset order, written with one ``struct`` per run of
    adjacent fields (``pack_into(buf, base, values)``, values in the same
    order) and read with one ``struct`` over the lot (``unpack(buf, base)``,
    gaps skipped).  Fields wider than 64 bits are not supported."""

    def __init__(self, names):
        fields = [BY_NAME[n] for n in names]
        if any(f.parent is not None or f.bit or f.width not in _CODES for f in fields):
            raise ValueError("Runs take whole fields of 8, 16, 32 or 64 bits")
        if any(b.offset < a.end for a, b in zip(fields, fields[1:])):
            raise ValueError("Runs take fields in offset order, not overlapping")
        self.names = tuple(names)
        runs, first = [], 0
        for i in range(1, len(fields) + 1):
            if i == len(fields) or fields[i].offset != fields[i - 1].end:
                fmt = "<" + "".join(_CODES[f.width] for f in fields[first:i])
                runs.append((fields[first].offset, struct.Struct(fmt).pack_into, first, i))
                first = i
        self.runs = tuple(runs)
        # The packs as one generated function, unrolled (no loop, no slices).
        src = ["def pack(buf, base, v):"]
        for k, (off, _pack, a, b) in enumerate(runs):
            src.append(f"    p{k}(buf, base + {off}, {', '.join(f'v[{i}]' for i in range(a, b))})")
        ns = {f"p{k}": run[1] for k, run in enumerate(runs)}
        # The same, writing only the runs whose values differ from ``old``:
        # returns the first and the end offset of what it wrote, or None.
        # Runs of one field that follow each other are tested together first
        # (one slice compare), then one by one.
        src.append("def pack_changed(buf, base, old, v):")
        body = len(src)
        src.append("    lo = None")
        groups = []
        for k, run in enumerate(runs):
            single = run[3] - run[2] == 1
            if single and groups and groups[-1][0] and len(groups[-1][1]) < 8:
                groups[-1][1].append(k)
            else:
                groups.append((single, [k]))

        def test(a, b):
            return f"old[{a}] != v[{a}]" if b - a == 1 else f"old[{a}:{b}] != v[{a}:{b}]"
        for _single, ks in groups:
            pad = "    "
            if len(ks) > 1:
                src.append(f"    if {test(runs[ks[0]][2], runs[ks[-1]][3])}:")
                pad = "        "
            for k in ks:
                off, _pack, a, b = runs[k]
                src.append(f"{pad}if {test(a, b)}:")
                src.append(f"{pad}    p{k}(buf, base + {off}, {', '.join(f'v[{i}]' for i in range(a, b))})")
                src.append(f"{pad}    if lo is None:\n{pad}        lo = {off}")
                src.append(f"{pad}    hi = {fields[b - 1].end}")
        src.append("    return None if lo is None else (lo, hi)")
        # pack_changed as callers call it (one Python call): values as a
        # tuple (runs are compared as tuple slices), and a value too wide
        # for its field cut to it, as a store into the field would.
        src += ["def pack_changed_t(buf, base, old, v):",
                "    if type(v) is not tuple:",
                "        v = tuple(v)",
                "    try:"]
        src += ["    " + line.replace("\n", "\n    ") for line in src[body:-4]]
        src += ["    except _error:",
                "        return _cut(buf, base, old, v)"]
        ns["_error"] = struct.error

        def cut(buf, base, old, v):
            self.exact = False      # from now on: a field may hold less than its value
            return self._pack_changed(buf, base, old, [x & m for x, m in zip(v, self.masks)])
        ns["_cut"] = cut
        exec("\n".join(src), ns)
        self._pack = ns["pack"]
        self._pack_changed = ns["pack_changed"]
        # Write the runs in which the values (a sequence) differ from ``old``
        # (what the buffer holds, as ``unpack`` gives it); return the byte
        # range written, (first offset, end offset), or None when nothing was.
        self.pack_changed = ns["pack_changed_t"]
        # No value has been cut to its field by pack_changed: the runs it left
        # unwritten hold exactly the values given (world.save_host relies on
        # it).  An instance attribute: CPython 3.11 reads a class attribute
        # through an instance without its attribute cache.
        self.exact = True
        fmt, pos = ["<"], fields[0].offset
        for f in fields:
            if f.offset > pos:
                fmt.append(f"{f.offset - pos}x")
            fmt.append(_CODES[f.width])
            pos = f.end
        self.start = fields[0].offset
        self._unpack = struct.Struct("".join(fmt)).unpack_from
        self.unpack_at = self._unpack       # (buf, base + start): unpack without a Python call
        self.masks = tuple(f.mask for f in fields)

    def unpack(self, buf, base: int = 0) -> tuple:
        return self._unpack(buf, base + self.start)

    def pack_into(self, buf, base: int, values) -> None:
        """Write ``values``; any that does not fit its field is cut to its
        width (as a store into the field would)."""
        try:
            self._pack(buf, base, values)
        except struct.error:
            self._pack(buf, base, [v & m for v, m in zip(values, self.masks)])



HOST_RUNS = Runs(HOST_FIELDS)


class Reader:
    """Whole fields of 8-64 bits read with one ``struct`` (``unpack(buf,
    base)`` -> a tuple in offset order; ``index[name]`` a field's position),
    the bytes between them skipped: what VMRUN reads of each area."""

    def __init__(self, fields):
        fields = sorted(fields, key=lambda f: f.offset)
        fmt, pos = ["<"], fields[0].offset
        for f in fields:
            if f.parent is not None or f.bit or f.width not in _CODES or f.offset < pos:
                raise ValueError(f"{f.name}: a Reader takes whole, separate fields of 8-64 bits")
            if f.offset > pos:
                fmt.append(f"{f.offset - pos}x")
            fmt.append(_CODES[f.width])
            pos = f.end
        self.start = fields[0].offset
        self.index = {f.name: i for i, f in enumerate(fields)}
        self._unpack = struct.Struct("".join(fmt)).unpack_from
        self.unpack_at = self._unpack       # (buf, base + start): unpack without a Python call

    def unpack(self, buf, base: int = 0) -> tuple:
        return self._unpack(buf, base + self.start)


# Byte ranges of the VMCB page that hold something: the table's fields and
# the 32 bytes at 3E0h the APM leaves to software (vmcb.py's docstring).
_OTHERS = tuple((f.offset, f.end) for f in _TOP) + ((0x3E0, 0x400),)


class ByteRuns:
    """The bytes of some whole fields, read with one ``struct`` as byte
    strings (``unpack(buf, base)`` -> a tuple of ``bytes``): one string per
    run of the fields, runs merged across gaps that hold no other field of
    the table and none of the software's bytes (reserved bytes), the other
    bytes skipped.  Two reads are
    equal exactly when every byte of the fields (and of those gaps) is: the
    world switch's delta test (switch.py)."""

    def __init__(self, fields):
        fields = sorted(fields, key=lambda f: f.offset)
        runs = []
        for f in fields:
            if f.parent is not None or f.bit:
                raise ValueError(f"{f.name}: ByteRuns take whole fields")
            if runs and f.offset < runs[-1][1]:
                raise ValueError(f"{f.name} overlaps the previous field")
            gap = (runs[-1][1], f.offset) if runs else None
            if runs and not any(gap[0] < end and start < gap[1] for start, end in _OTHERS):
                runs[-1][1] = f.end                       # only reserved bytes between: one run
            else:
                runs.append([f.offset, f.end])
        fmt, pos = ["<"], runs[0][0]
        for start, end in runs:
            if start > pos:
                fmt.append(f"{start - pos}x")
            fmt.append(f"{end - start}s")
            pos = end
        self.runs = tuple(tuple(r) for r in runs)
        self.start = runs[0][0]
        self._unpack = struct.Struct("".join(fmt)).unpack_from
        self.unpack_at = self._unpack       # (buf, base + start): unpack without a Python call

    def unpack(self, buf, base: int = 0) -> tuple:
        return self._unpack(buf, base + self.start)


# VMRUN's reads of the control area: every whole field but the instruction
# bytes a #VMEXIT leaves for the hypervisor (wider than 64 bits, never read
# by VMRUN).  Its reader of the save area (the fields it uses) is switch.py's.
CONTROL_READER = Reader([f for f in _TOP if f.area == "control" and f.width in _CODES])


def field_packer(name: str):
    """``pack(buf, base, value)`` writing the whole field ``name`` alone (a
    field wider than 64 bits from an int), cut to its width."""
    f = BY_NAME[name]
    code, mask = _CODES.get(f.width), f.mask
    if code is None:
        pack_bytes, n = struct.Struct(f"{f.nbytes}s").pack_into, f.nbytes
        return lambda buf, base, value: pack_bytes(buf, base + f.offset, (value & mask).to_bytes(n, "little"))
    pack = struct.Struct("<" + code).pack_into
    return lambda buf, base, value: pack(buf, base + f.offset, value & mask)
