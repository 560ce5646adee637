"""The decoder adapter: iced-x86 instructions -> our ``Insn`` records.

Handlers never see raw bytes or iced objects on the hot path: each operand
becomes a pair of small closures (``get``/``set``) specialised at translation
time for its kind (register of a given width, immediate, memory with a given
addressing form), and the rest of what a handler needs (operand and address
size, prefixes, segment, condition code, branch target) is a plain field.
The iced instruction stays available as ``insn.iced`` for rare properties.
"""
import iced_x86 as iced
from iced_x86 import OpKind, Register as R, MemorySizeInfo

from .segments import ES, CS, SS, DS, FS, GS

MASK64 = (1 << 64) - 1
SEG_OF = {R.ES: ES, R.CS: CS, R.SS: SS, R.DS: DS, R.FS: FS, R.GS: GS}

# General-purpose registers: iced register -> (index in cpu.regs, size in bytes, high-byte?)
GPR = {}
for _i, _n in enumerate("RAX RCX RDX RBX RSP RBP RSI RDI R8 R9 R10 R11 R12 R13 R14 R15".split()):
    GPR[getattr(R, _n)] = (_i, 8, False)
for _i, _n in enumerate("EAX ECX EDX EBX ESP EBP ESI EDI R8D R9D R10D R11D R12D R13D R14D R15D".split()):
    GPR[getattr(R, _n)] = (_i, 4, False)
for _i, _n in enumerate("AX CX DX BX SP BP SI DI R8W R9W R10W R11W R12W R13W R14W R15W".split()):
    GPR[getattr(R, _n)] = (_i, 2, False)
for _i, _n in enumerate("AL CL DL BL SPL BPL SIL DIL R8L R9L R10L R11L R12L R13L R14L R15L".split()):
    GPR[getattr(R, _n)] = (_i, 1, False)
for _i, _n in enumerate("AH CH DH BH".split()):
    GPR[getattr(R, _n)] = (_i, 1, True)

MNEMONIC_NAMES = {getattr(iced.Mnemonic, n): n.lower() for n in dir(iced.Mnemonic)
                  if not n.startswith("_") and isinstance(getattr(iced.Mnemonic, n), int)}
_MEM_SIZE = {}


def mem_size(ms: int) -> int:
    s = _MEM_SIZE.get(ms)
    if s is None:
        s = _MEM_SIZE[ms] = MemorySizeInfo(ms).size
    return s


# ---------------------------------------------------------------- register access
def reg_getter(idx, size, high):
    if size == 8:
        return lambda cpu: cpu.regs[idx]
    if high:
        return lambda cpu: (cpu.regs[idx] >> 8) & 0xFF
    mask = (1 << (size * 8)) - 1
    return lambda cpu: cpu.regs[idx] & mask


def reg_setter(idx, size, high):
    if size == 8:
        def set64(cpu, v):
            cpu.regs[idx] = v & MASK64
        return set64
    if size == 4:
        def set32(cpu, v):          # 32-bit writes zero-extend (APM vol 1, 3.1.2.3)
            cpu.regs[idx] = v & 0xFFFFFFFF
        return set32
    if high:
        def set8h(cpu, v):
            regs = cpu.regs
            regs[idx] = (regs[idx] & ~0xFF00) | ((v & 0xFF) << 8)
        return set8h
    keep = ~((1 << (size * 8)) - 1)
    mask = (1 << (size * 8)) - 1

    def setn(cpu, v):
        regs = cpu.regs
        regs[idx] = (regs[idx] & keep) | (v & mask)
    return setn


# ---------------------------------------------------------------- effective addresses
def ea_func(base, index, scale, disp, asize):
    """Closure computing the offset of a memory operand (before segmentation)."""
    amask = (1 << (asize * 8)) - 1
    disp &= amask
    b = GPR[base][0] if base in GPR else None
    i = GPR[index][0] if index in GPR else None
    if base == R.RIP or base == R.EIP:
        b = None                      # iced already folded RIP into disp
    if b is None and i is None:
        return lambda cpu: disp
    if i is None:
        if disp == 0:
            return lambda cpu: cpu.regs[b] & amask
        return lambda cpu: (cpu.regs[b] + disp) & amask
    if b is None:
        return lambda cpu: (cpu.regs[i] * scale + disp) & amask
    return lambda cpu: (cpu.regs[b] + cpu.regs[i] * scale + disp) & amask


def mem_getter(ea, seg, size):
    return lambda cpu: cpu.read(seg, ea(cpu), size)


def mem_setter(ea, seg, size):
    return lambda cpu, v: cpu.write(seg, ea(cpu), size, v)


def const_getter(value):
    return lambda cpu: value


def _bad_set(cpu, v):
    raise AssertionError("operand is not writable")


# ---------------------------------------------------------------- Insn
class Insn:
    """A decoded instruction, prepared for its handler."""
    __slots__ = ("ip", "next_ip", "len", "code", "mnemonic", "name", "osize", "asize",
                 "rep", "repne", "lock", "seg", "cc", "target", "imm", "imm2", "opsz",
                 "get0", "set0", "get1", "set1", "get2", "ea", "mem_size", "iced",
                 "regs", "fn", "ends_block", "bits", "vx", "idx", "vimm")

    def __str__(self):
        return f"{self.ip:#x}: {self.iced}"


_KIND_IMM = {OpKind.IMMEDIATE8, OpKind.IMMEDIATE16, OpKind.IMMEDIATE32, OpKind.IMMEDIATE64,
             OpKind.IMMEDIATE8TO16, OpKind.IMMEDIATE8TO32, OpKind.IMMEDIATE8TO64,
             OpKind.IMMEDIATE32TO64, OpKind.IMMEDIATE8_2ND}
_KIND_BRANCH = {OpKind.NEAR_BRANCH16, OpKind.NEAR_BRANCH32, OpKind.NEAR_BRANCH64}
_STR_ASIZE = {OpKind.MEMORY_SEG_SI: 2, OpKind.MEMORY_SEG_DI: 2, OpKind.MEMORY_ESDI: 2,
              OpKind.MEMORY_SEG_ESI: 4, OpKind.MEMORY_SEG_EDI: 4, OpKind.MEMORY_ESEDI: 4,
              OpKind.MEMORY_SEG_RSI: 8, OpKind.MEMORY_SEG_RDI: 8, OpKind.MEMORY_ESRDI: 8}


def build_insn(i, bits: int) -> Insn:
    """Turn one iced instruction into an Insn (operands, sizes, prefixes)."""
    ins = Insn()
    ins.iced = i
    ins.idx = 0                 # position in its block (engine.translate): time within a block
    ins.ip = i.ip
    ins.next_ip = i.next_ip
    ins.len = i.len
    ins.code = i.code
    ins.mnemonic = i.mnemonic
    ins.bits = bits
    ins.rep = i.has_rep_prefix or i.has_repe_prefix
    ins.repne = i.has_repne_prefix
    ins.lock = i.has_lock_prefix
    ins.cc = i.condition_code
    ins.target = None
    ins.imm = ins.imm2 = None
    ins.ea = None
    ins.mem_size = 0
    ins.get0 = ins.get1 = ins.get2 = None
    ins.set0 = ins.set1 = None
    ins.regs = []
    ins.vx = None                 # vector-operand layout, built on first use (ops/simd.py)
    ins.vimm = None               # (RAM offset, size, signed): a patched immediate (engine.py)
    ins.seg = SEG_OF.get(i.memory_segment, DS)
    ins.asize = bits // 8
    opsz = []
    for n in range(min(i.op_count, 3)):
        kind = i.op_kind(n)
        get = setter = None
        size = 0
        if kind == OpKind.REGISTER:
            reg = i.op_register(n)
            ins.regs.append(reg)
            g = GPR.get(reg)
            if g is not None:
                get, setter, size = reg_getter(*g), reg_setter(*g), g[1]
        elif kind == OpKind.MEMORY:
            size = mem_size(i.memory_size)
            asize = 8 if i.memory_base == R.RIP else _addr_size(i, bits)
            ins.asize = asize
            ea = ea_func(i.memory_base, i.memory_index, i.memory_index_scale,
                         i.memory_displacement, asize)
            ins.ea = ea
            ins.mem_size = size
            get, setter = mem_getter(ea, ins.seg, size), mem_setter(ea, ins.seg, size)
        elif kind in _KIND_IMM:
            value = i.immediate(n)
            if kind == OpKind.IMMEDIATE8_2ND:
                ins.imm2 = value
            else:
                ins.imm = value
            size = opsz[0] if opsz and opsz[0] else 0
            get = const_getter(value & ((1 << (size * 8)) - 1) if size else value)
        elif kind in _KIND_BRANCH:
            ins.target = i.near_branch_target
        elif kind in (OpKind.FAR_BRANCH16, OpKind.FAR_BRANCH32):
            ins.target = i.far_branch32 if kind == OpKind.FAR_BRANCH32 else i.far_branch16
            ins.imm = i.far_branch_selector
        elif kind in _STR_ASIZE:
            ins.asize = _STR_ASIZE[kind]
            size = mem_size(i.memory_size)
            ins.mem_size = size
        opsz.append(size)
        setattr(ins, "get%d" % n, get)
        if n < 2:
            setattr(ins, "set%d" % n, setter or _bad_set)
    for n in range(3, i.op_count):    # VEX forms: an imm8 or an is4 register in operand 3
        kind = i.op_kind(n)
        if kind == OpKind.REGISTER:
            ins.regs.append(i.op_register(n))
        elif kind == OpKind.IMMEDIATE8_2ND:
            ins.imm2 = i.immediate(n)
        elif kind in _KIND_IMM:
            ins.imm = i.immediate(n)
    ins.opsz = opsz
    ins.osize = opsz[0] if opsz and opsz[0] else _default_osize(i, bits)
    ins.name = MNEMONIC_NAMES.get(i.mnemonic, str(i.mnemonic))
    return ins


def _addr_size(i, bits):
    """Address size of a memory operand: from its registers, else from the
    displacement width iced reports (which already reflects a 0x67 prefix)."""
    for r in (i.memory_base, i.memory_index):
        if r in GPR:
            return GPR[r][1]
    if i.memory_base == R.EIP:
        return 4
    size = i.memory_displ_size
    return size if size in (2, 4, 8) else bits // 8


def _default_osize(i, bits):
    info = iced.OpCodeInfo(i.code)
    osz = info.operand_size
    if osz:
        return osz // 8
    return 8 if bits == 64 else bits // 8
