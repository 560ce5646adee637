"""Compiled ROL/ROR (codegen._rotate_t) against the interpreter's handlers
(svmsim/cpu/ops/shift.py rol/ror), through test_codegen's runners.

APM vol 3 "ROL", "ROR": the count is masked to 5 bits (6 for a 64-bit
operand), 8/16-bit operands rotate modulo their width; CF is the bit rotated
in, OF is defined for a count of 1 (the handler's value for other counts is
QEMU's, kept so the tiers agree); the other flags are unchanged and a masked
count of 0 changes no flag.  Every width, register (including AH) and memory
destinations, counts 0, 1, width-1, width, 31, 63, 33 and CL, each followed
by instructions that observe every flag.
"""
import random

import pytest

from cpuharness import CODE_ADDR, asm
from test_codegen import (CCS, R32, R64, _assemble_cases, _random_state, compare,  # noqa: F401
                          runners)
from svmsim.cpu import codegen

PTR = {8: "qword", 4: "dword", 2: "word", 1: "byte"}


def _counts(width):
    return sorted({0, 1, width - 1, width, 31, 33, 63 if width == 64 else 0x21, 0xFF & (width + 1)}) + ["cl"]


def _dests(bits, size):
    regs = R64 if bits == 64 else R32
    out = list(regs[size][:2])
    if bits == 32 and size == 1:
        out.append("ah")
    base = "rsi" if bits == 64 else "esi"
    out += [f"{PTR[size]} ptr [{base}+0x10]", f"{PTR[size]} ptr [{base}+{0x1000 - 1:#x}]"]
    return out


def _observe(rng, bits):
    """Instructions that read every flag the rotate may have left."""
    regs = R64 if bits == 64 else R32
    out = [f"set{cc} {rng.choice(regs[1])}" for cc in rng.sample(CCS, 3)]
    out.append(f"adc {rng.choice(regs[4])}, {rng.choice(regs[4])}")
    out.append("pushf" if bits == 32 else "pushfq")
    out.append("pop edx" if bits == 32 else "pop rdx")
    return out


def _cases(bits, rng):
    cases = []
    for op in ("rol", "ror"):
        for size in ([8, 4, 2, 1] if bits == 64 else [4, 2, 1]):
            for d in _dests(bits, size):
                for c in _counts(size * 8):
                    before = rng.choice([[], ["add eax, ecx"], ["sub dl, 3"], ["inc ebp"]])
                    after = _observe(rng, bits) if rng.random() < 0.8 else \
                        [f"{op} {d}, {c}", "add ecx, edx"]        # flags dead after it
                    cases.append(before + [f"{op} {d}, {c}"] + after + [f"j{rng.choice(CCS)} 1f"])
    return cases


@pytest.mark.parametrize("mode,bits,seed", [("long64", 64, 21), ("prot32", 32, 22)])
def test_rotates_match_interpreter(runners, mode, bits, seed):
    rng = random.Random(seed)
    cases = _cases(bits, rng)
    blobs = _assemble_cases(cases, bits)
    for body, code in zip(cases, blobs):
        regs, mem, flags = _random_state(rng, bits)
        regs[1] = (regs[1] & ~0xFF) | rng.choice([0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 0xFF])
        if bits == 64 and rng.random() < 0.15:
            regs[6] = 0x2_0000_0000           # rsi-based destinations fault with #PF
        compare(runners, mode, code, regs, mem, flags, len(body), label="; ".join(body))


@pytest.mark.parametrize("src", ["rol eax, 5", "ror r9b, cl", "rol word ptr [rsi], 1",
                                 "ror qword ptr [rsi+8], cl", "rol ah, 3"])
def test_rotate_is_compiled_not_generic(runners, src):
    """The rotate has a template: the region does not call its handler."""
    interp, comp = runners("long64")
    m, cpu = comp.m, comp.cpu
    code = asm(f"{src}\nsetc al\nhlt", bits=64)
    m.engine.flush()
    m.bus.write_bytes(CODE_ADDR, code)
    cpu.rip = CODE_ADDR
    blk = m.engine.translate(cpu, CODE_ADDR, (CODE_ADDR, cpu.mode_key))
    fn = codegen.compile_block(blk, cpu)
    assert fn is not None and "h0(cpu" not in fn.source
