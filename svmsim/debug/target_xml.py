"""The gdb target description (gdb manual, "Target Descriptions"), generated
from the register table in ``regs.py``.

Architecture ``i386:x86-64`` in every CPU mode, as qemu-system-x86_64's stub
reports it: gdb cannot change the register set or sizes in the middle of a
session, so real-mode and 32-bit code show 64-bit registers with the upper
halves as the CPU holds them (for disassembly of 16/32-bit code use gdb's
``set architecture i8086`` / ``i386``).  Features: gdb's own
``org.gnu.gdb.i386.core`` (GPRs, RIP, EFLAGS, selectors, x87, plus the
segment bases, control registers and EFER as QEMU's x86-64 description adds
them) and ``org.gnu.gdb.i386.sse`` and ``org.gnu.gdb.i386.avx`` (YMM upper halves), then ``org.svmsim.x86.svm``: DR0-3/6/7,
GDTR/IDTR, and the SVM state (svm_guest, asid, gif, vmcb) for breakpoint
conditions such as ``break *0x1000 if $asid == 1``.
"""
from .regs import GDB_REGS

FEATURES = {"core": "org.gnu.gdb.i386.core", "sse": "org.gnu.gdb.i386.sse", "avx": "org.gnu.gdb.i386.avx",
            "svmsim": "org.svmsim.x86.svm"}

_EFLAGS = ((0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
           (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"),
           (20, "VIP"), (21, "ID"))
_MXCSR = ((0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "DAZ"), (7, "IM"),
          (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"), (12, "PM"), (15, "FZ"))
_VEC128 = """  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/>
    <field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/>
    <field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
"""


def _flags(name, fields):
    body = "".join(f'    <field name="{n}" start="{b}" end="{b}"/>\n' for b, n in fields)
    return f'  <flags id="{name}" size="4">\n{body}  </flags>\n'


def target_xml() -> str:
    out = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n',
           "  <architecture>i386:x86-64</architecture>\n"]
    for key, name in FEATURES.items():
        out.append(f'  <feature name="{name}">\n')
        if key == "core":
            out.append(_flags("i386_eflags", _EFLAGS))
        elif key == "sse":
            out.append(_VEC128 + _flags("i386_mxcsr", _MXCSR))
        for num, reg in enumerate(GDB_REGS):
            if reg.feature == key:
                out.append(f'    <reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" '
                           f'regnum="{num}" group="{reg.group}"/>\n')
        out.append("  </feature>\n")
    out.append("</target>\n")
    return "".join(out)
