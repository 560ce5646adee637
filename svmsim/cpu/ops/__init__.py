"""Instruction semantics, grouped by family, registered by iced mnemonic.

Each handler is a plain function ``handler(cpu, ins)`` (``ins`` is a
``svmsim.cpu.decoder.Insn``).  It either completes the instruction or raises
a ``CpuException`` before changing architectural state.  Handlers of
instructions that transfer control or change the CPU mode are registered
with ``ends_block=True``; such a handler sets ``cpu.rip`` itself.  For all
others the engine advances RIP.

A mnemonic with no handler decodes to ``unimplemented``: the guest gets #UD
and the run report names the instruction, so nothing is silently skipped.
"""
import iced_x86

from ..exceptions import CpuException, UD

BY_MNEMONIC: dict = {}
BY_CODE: dict = {}
ENDS_BLOCK_M: set = set()
ENDS_BLOCK_C: set = set()

M = iced_x86.Mnemonic
C = iced_x86.Code


def handles(*names, codes=(), ends_block=False):
    """Register a handler for mnemonics (names such as "ADD") and/or iced Codes."""
    def deco(fn):
        for n in names:
            m = getattr(M, n.upper())
            BY_MNEMONIC[m] = fn
            if ends_block:
                ENDS_BLOCK_M.add(m)
        for c in codes:
            BY_CODE[c] = fn
            if ends_block:
                ENDS_BLOCK_C.add(c)
        return fn
    return deco


def unimplemented(cpu, ins):
    """#UD for an instruction svmsim does not implement yet (named in the report)."""
    seen = cpu.machine.unimplemented
    seen[ins.name] = seen.get(ins.name, 0) + 1
    raise CpuException(UD, detail=f"instruction not implemented in svmsim: {ins.iced}")


def invalid(cpu, ins):
    raise CpuException(UD, detail="invalid opcode")


def not_reported(cpu, ins):
    """#UD: an instruction whose CPUID feature this CPU does not report."""
    raise CpuException(UD, detail=f"{ins.name}: its CPUID feature is not reported by this CPU profile")


_OTHER_ENCODINGS = (iced_x86.EncodingKind.EVEX, iced_x86.EncodingKind.XOP,
                    iced_x86.EncodingKind.D3NOW, iced_x86.EncodingKind.MVEX)


def lookup(ins, machine=None):
    """(handler, ends_block) for a decoded instruction.  With ``machine``, an
    instruction whose feature its CPU does not report is #UD (cpuid.py)."""
    if ins.iced.encoding in _OTHER_ENCODINGS:
        return unimplemented, True           # AVX-512, XOP, 3DNow!: not modelled
    if machine is not None:
        from ..cpuid import supports_code
        if not supports_code(machine, ins.code) and (ins.code in BY_CODE or ins.mnemonic in BY_MNEMONIC):
            return not_reported, True
    fn = BY_CODE.get(ins.code)
    if fn is not None:
        return fn, ins.code in ENDS_BLOCK_C or ins.mnemonic in ENDS_BLOCK_M
    fn = BY_MNEMONIC.get(ins.mnemonic)
    if fn is not None:
        return fn, ins.mnemonic in ENDS_BLOCK_M
    if ins.code == C.INVALID:
        return invalid, True
    return unimplemented, True


def load_all():
    """Import every family module so their handlers register."""
    from . import arith, data, control  # noqa: F401
    import importlib
    for mod in ("shift", "bits", "muldiv", "string", "misc_int", "system", "farxfer", "fpu",
                "sse_int", "sse_fp", "sse_mov", "sse42", "x87", "crypto", "avx"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
