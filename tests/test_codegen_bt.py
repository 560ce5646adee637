"""BT of a register in compiled code (codegen ``t_bt``) against the
interpreter (ops/bits.py): CF is the bit, every other flag is what the
instruction before left (materialised from a lazy ALU result, or the flags
the block was entered with), and a loop testing bits stays in its region
(a generic handler call would end it at every iteration)."""
import random

import pytest

from cpuharness import asm, CODE_ADDR
from svmsim.cpu import codegen
from test_codegen import DATA_LEN, compare, runners, _regs   # noqa: F401 (fixture)

FORMS = ["bt rax, rcx", "bt eax, ecx", "bt ax, cx", "bt rax, 63", "bt eax, 37", "bt ax, 17",
         "bt r9, r10", "bt rax, 0"]
READERS = ["jb 1f\nadd rdx, 1\n1:", "setc dl", "adc rdx, 0", "pushfq\npop rdx",
           "sete dl\nsets dh\nsetp bl\nseto bh", "cmovc rdx, rax"]
BEFORE = ["add rax, rcx", "sub rcx, rax", "xor r9, r10", "inc rax", "", "stc", "clc"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reader", READERS)
def test_bt_matches_interpreter(runners, form, reader):
    rng = random.Random(hash((form, reader)) & 0xFFFF)
    for before in BEFORE:
        code = asm("\n".join([before, form, reader, "hlt"]))
        for _ in range(4):
            v = [rng.getrandbits(64) for _ in range(4)]
            regs = _regs(rax=v[0], rcx=v[1], r9=v[2], r10=v[3] & 0xFFF, rdx=0x55)
            flags = rng.choice([0x202, 0x203, 0xAD7, 0x2C2])
            compare(runners, "long64", code, regs, bytes(DATA_LEN), flags, 100, label=f"{before}; {form}; {reader}")


def test_bit_loop_stays_in_its_region(runners, monkeypatch):
    """A loop over the bits of a mask (kvm-unit-tests' page allocator walks
    its area mask so) runs in one call of its compiled function."""
    calls = []
    real = codegen.compile_block

    def counting(blk, cpu, *a, **kw):
        fn = real(blk, cpu, *a, **kw)

        def counted(cpu, budget, pc=0):
            calls.append(budget)
            return fn(cpu, budget, pc)
        counted.__dict__.update(fn.__dict__)
        return counted
    monkeypatch.setattr(codegen, "compile_block", counting)
    code = asm("""
    1:
        bt rax, rcx
        jae 2f
        add rdx, rcx
    2:
        add rcx, 1
        cmp rcx, 64
        jne 1b
        hlt
    """)
    interp, comp = runners("long64")
    regs = _regs(rax=0x8000_F00D_0000_1234)
    a = interp.run(code, regs, bytes(DATA_LEN), 0x202, 10 ** 4, False)
    b = comp.run(code, regs, bytes(DATA_LEN), 0x202, 10 ** 4, "hot")
    assert a == b and a["regs"][2] == sum(i for i in range(64) if 0x8000_F00D_0000_1234 >> i & 1)
    # Compiled once hot (a few iterations in), then one call to the end.
    assert len(calls) == 1
