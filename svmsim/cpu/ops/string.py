"""String instructions: MOVS, CMPS, SCAS, LODS, STOS with REP/REPE/REPNE
(AMD APM vol 3, ch. 3 and vol 1, 3.10.3 "Repeat Prefixes").

Addressing (APM vol 3 "MOVS"): the source is seg:rSI (DS unless
overridden), the destination is always ES:rDI (no override).  rSI, rDI and
rCX are used and updated at the *address* size: 16-bit updates keep the
upper 48 bits, 32-bit updates zero-extend in 64-bit mode (a 32-bit register
write, as QEMU does).  RFLAGS.DF selects increment or decrement.

REP semantics and precise faults: each iteration does its accesses, then
updates rSI/rDI, then decrements rCX.  A fault in iteration k therefore
leaves the registers reflecting the k completed iterations with RIP at the
instruction, so the handler's IRET restarts it where it stopped.  REPE/REPNE
(CMPS/SCAS only) end after the iteration whose ZF fails the condition; F2 on
MOVS/STOS/LODS acts as REP.

Interruptibility: hardware takes interrupts between iterations.  svmsim runs
at most ``MAX_FAST`` elements (bulk page-sized copies) or ``MAX_SLOW``
elements (one by one) per execution and, when more remain, leaves RIP at the
instruction so the engine checks for interrupts and executes it again.  All
string handlers are therefore registered with ``ends_block=True`` and set
RIP themselves (iced gives REP and non-REP forms the same Code).

Fast path: REP MOVS / REP STOS over flat (or 64-bit) segments, in either
direction, copy page-bounded chunks after one translation per page: directly
in RAM, or through the encryption engine for private (C-bit / SEV guest key)
pages, one engine call per page (whole 16-byte lines; DRAM gets the same
ciphertext as element-by-element writes give, issue 14 item 4).  They fall back to element-by-element work for MMIO, elements
that straddle a page, address-size wrap-around, and overlaps where the
destination runs ahead of the source by less than the chunk (element-wise
copying then replicates a pattern that a bulk move would not).
"""
import iced_x86

from . import handles
from ..exceptions import PF_W
from ..flags import OP_SUB, DF, ZF
from ..segments import ES, SS

C = iced_x86.Code
MASK64 = (1 << 64) - 1
MAX_FAST = 1 << 16          # elements per execution on the bulk path
MAX_SLOW = 1 << 12          # elements per execution one by one
PAGE = 0x1000

RSI, RDI, RCX, RAX = 6, 7, 1, 0


def _put(regs, i, v, am):
    """Write a pointer/count register at the address size ``am`` (mask)."""
    if am == 0xFFFF:
        regs[i] = (regs[i] & ~0xFFFF) | (v & 0xFFFF)
    else:
        regs[i] = v & am            # 32-bit: zero-extends (a 32-bit register write)


def _put_acc(regs, size, v):
    """Write AL/AX/EAX/RAX."""
    if size >= 4:
        regs[RAX] = v               # 32-bit write zero-extends
    else:
        keep = ~0xFF if size == 1 else ~0xFFFF
        regs[RAX] = (regs[RAX] & keep) | v


# ---------------------------------------------------------------- one element
def _movs1(cpu, ins, size, am, step):
    regs = cpu.regs
    si, di = regs[RSI] & am, regs[RDI] & am
    cpu.write(ES, di, size, cpu.read(ins.seg, si, size))
    _put(regs, RSI, si + step, am)
    _put(regs, RDI, di + step, am)


def _stos1(cpu, ins, size, am, step):
    regs = cpu.regs
    di = regs[RDI] & am
    cpu.write(ES, di, size, regs[RAX] & ((1 << (size << 3)) - 1))
    _put(regs, RDI, di + step, am)


def _lods1(cpu, ins, size, am, step):
    regs = cpu.regs
    si = regs[RSI] & am
    _put_acc(regs, size, cpu.read(ins.seg, si, size))
    _put(regs, RSI, si + step, am)


def _cmps1(cpu, ins, size, am, step):
    """Compare seg:[rSI] with ES:[rDI]: flags of [rSI] - [rDI]."""
    regs = cpu.regs
    si, di = regs[RSI] & am, regs[RDI] & am
    a = cpu.read(ins.seg, si, size)
    b = cpu.read(ES, di, size)
    _put(regs, RSI, si + step, am)
    _put(regs, RDI, di + step, am)
    cpu.lf = (OP_SUB, size << 3, a, b, a - b, 0)


def _scas1(cpu, ins, size, am, step):
    """Compare rAX with ES:[rDI]: flags of rAX - [rDI]."""
    regs = cpu.regs
    di = regs[RDI] & am
    b = cpu.read(ES, di, size)
    a = regs[RAX] & ((1 << (size << 3)) - 1)
    _put(regs, RDI, di + step, am)
    cpu.lf = (OP_SUB, size << 3, a, b, a - b, 0)


# ---------------------------------------------------------------- bulk paths (RAM)
def _ram_page(cpu, lin, write, stack=False):
    """Translate the page holding ``lin`` (may fault; every check of the
    access - paging, SNP's RMP, nested paging - is made here, once per page)
    and return its system-physical address, or None if it is not RAM (MMIO
    goes element by element).  ``stack``: an SS-relative access (#SS instead
    of #GP for a non-canonical address).

    The address keeps its key bits: a page of private memory (C-bit, or an
    SEV guest's key) is read and written through the encryption engine by
    ``cpu.pread_bytes``/``pwrite_bytes``, whole lines per page in one call,
    exactly as the element-by-element path does it line by line."""
    access = cpu.user_access | (PF_W if write else 0)
    spa = cpu.translate(lin, access, stack)
    if cpu.bus.ram_offset(spa & ~cpu.enc_mask) is None:
        return None
    return spa


def _room(lin, off, size, am, step):
    """How many elements, starting with the one at ``off``, stay inside the
    page of ``lin`` and inside the address-size range, going in ``step``'s
    direction."""
    o = lin & 0xFFF
    if step > 0:
        return min(PAGE - o, am + 1 - off) // size
    if o + size > PAGE:
        return 0                        # the first element straddles a page
    return min(o, off) // size + 1


def _bulk_movs(cpu, ins, size, am, todo, step):
    """Copy up to ``todo`` elements in page-bounded chunks (either direction).
    Returns the number of elements done; registers are kept current."""
    regs = cpu.regs
    seg = ins.seg
    enc = cpu.enc_mask
    done = 0
    while done < todo:
        si, di = regs[RSI] & am, regs[RDI] & am
        src, dst = cpu.linear(seg, si), cpu.linear(ES, di)
        k = min(todo - done, _room(src, si, size, am, step), _room(dst, di, size, am, step))
        sspa = dspa = None
        if k:
            sspa = _ram_page(cpu, src, False, seg == SS)
            dspa = _ram_page(cpu, dst, True)
        if sspa is not None and dspa is not None:
            # Overlap where the destination runs ahead of the source: element
            # copies would replicate data, so keep chunks within the gap.
            # Through the same key (or none) the gap is in bytes of DRAM; the
            # same frame through two different keys aliases whole 16-byte
            # lines, so that goes element by element.
            if (sspa ^ dspa) & ~0xFFF & ~enc == 0 and (sspa ^ dspa) & enc:
                k = 0
            gap = dspa - sspa if step > 0 else sspa - dspa
            if 0 < gap < k * size:
                k = gap // size
        if not k or sspa is None or dspa is None:
            _movs1(cpu, ins, size, am, step)
            done += 1
            _put(regs, RCX, regs[RCX] - 1, am)
            continue
        n = k * size
        low = 0 if step > 0 else n - size       # going down, the chunk starts below the first element
        cpu.pwrite_bytes(dspa - low, cpu.pread_bytes(sspa - low, n))
        _put(regs, RSI, si + step * k, am)
        _put(regs, RDI, di + step * k, am)
        _put(regs, RCX, (regs[RCX] & am) - k, am)
        done += k
    return done


def _bulk_stos(cpu, ins, size, am, todo, step):
    regs = cpu.regs
    pattern = (regs[RAX] & ((1 << (size << 3)) - 1)).to_bytes(size, "little")
    done = 0
    while done < todo:
        di = regs[RDI] & am
        dst = cpu.linear(ES, di)
        k = min(todo - done, _room(dst, di, size, am, step))
        dspa = None
        if k:
            dspa = _ram_page(cpu, dst, True)
        if dspa is None:
            _stos1(cpu, ins, size, am, step)
            done += 1
            _put(regs, RCX, regs[RCX] - 1, am)
            continue
        low = 0 if step > 0 else (k - 1) * size
        cpu.pwrite_bytes(dspa - low, pattern * k)
        _put(regs, RDI, di + step * k, am)
        _put(regs, RCX, (regs[RCX] & am) - k, am)
        done += k
    return done


# ---------------------------------------------------------------- drivers
def _run(cpu, ins, one, size, bulk=None, cond=None):
    """Execute a string instruction with or without a repeat prefix.

    ``cond``: None (unconditional REP), or the ZF value that keeps a
    REPE (ZF=1) / REPNE (ZF=0) loop going.
    """
    am = (1 << (ins.asize << 3)) - 1
    step = -size if cpu.rflags & DF else size
    if not (ins.rep or ins.repne):
        one(cpu, ins, size, am, step)
        cpu.rip = ins.next_ip
        return
    regs = cpu.regs
    count = regs[RCX] & am
    if count == 0:
        cpu.rip = ins.next_ip
        return
    # Watched memory (data breakpoints, the debugger's watchpoints) and alignment checking
    # (#AC at the first misaligned element, APM vol 2, 8.2.18) go element by element.
    if bulk is not None and not (cpu.seg_chk[ins.seg] or cpu.seg_chk[ES] or cpu.watch or cpu.align_check):
        todo = min(count, MAX_FAST)
        done = bulk(cpu, ins, size, am, todo, step)
        cpu.rip = ins.next_ip if done == count else ins.ip
        cpu.stall += (count - (regs[RCX] & am)) >> 3     # bulk copies: 8 elements per ns
        return
    todo = min(count, MAX_SLOW)
    cpu.stall += todo - 1                                 # each element takes 1 ns of virtual time
    for _ in range(todo):
        one(cpu, ins, size, am, step)
        count -= 1
        _put(regs, RCX, count, am)
        if cond is not None and bool(cpu.get_rflags() & ZF) != cond:
            count = 0                   # REPE/REPNE condition ended the loop
            break
    cpu.rip = ins.next_ip if count == 0 else ins.ip


_SIZES = {"B": 1, "W": 2, "D": 4, "Q": 8}


def _codes(prefix, forms):
    return tuple(getattr(C, f"{prefix}{s}_{f}") for s, f in forms)


@handles(codes=_codes("MOVS", [("B", "M8_M8"), ("W", "M16_M16"), ("D", "M32_M32"), ("Q", "M64_M64")]),
         ends_block=True)
def movs(cpu, ins):
    _run(cpu, ins, _movs1, _SIZES[ins.name[-1].upper()], bulk=_bulk_movs)


@handles(codes=_codes("STOS", [("B", "M8_AL"), ("W", "M16_AX"), ("D", "M32_EAX"), ("Q", "M64_RAX")]),
         ends_block=True)
def stos(cpu, ins):
    _run(cpu, ins, _stos1, _SIZES[ins.name[-1].upper()], bulk=_bulk_stos)


@handles(codes=_codes("LODS", [("B", "AL_M8"), ("W", "AX_M16"), ("D", "EAX_M32"), ("Q", "RAX_M64")]),
         ends_block=True)
def lods(cpu, ins):
    _run(cpu, ins, _lods1, _SIZES[ins.name[-1].upper()])


@handles(codes=_codes("CMPS", [("B", "M8_M8"), ("W", "M16_M16"), ("D", "M32_M32"), ("Q", "M64_M64")]),
         ends_block=True)
def cmps(cpu, ins):
    _run(cpu, ins, _cmps1, _SIZES[ins.name[-1].upper()], cond=not ins.repne)


@handles(codes=_codes("SCAS", [("B", "AL_M8"), ("W", "AX_M16"), ("D", "EAX_M32"), ("Q", "RAX_M64")]),
         ends_block=True)
def scas(cpu, ins):
    _run(cpu, ins, _scas1, _SIZES[ins.name[-1].upper()], cond=not ins.repne)
