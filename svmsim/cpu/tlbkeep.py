"""Flushes that keep what a walk made now would give (TLB_CONTROL at VMRUN).

A flush guarantees that no stale translation is used afterwards: "When the
VMM sets the TLB_CONTROL field to 1, the VMRUN instruction flushes the TLB
for all ASIDs, for both global and non-global pages" (APM 15.16.1), and the
next access walks the tables as they are.  A translation whose walk is kept
in a walk memo (cpu/walkmemo.py) and none of whose entries has been written
since is exactly what that walk gives now, under the same inputs, and the
walk would write nothing (a kept walk found every Accessed/Dirty bit it
needed set).  Such a translation is kept by the flush, as if the processor
had walked it again at once: the TLB may hold any translation the tables
give after the flush (docs/DESIGN.md, "Flushes that keep what a walk
gives").  Everything else goes as before.

This module builds the checks ``Tlb.flush_keeping`` applies: for a context
(a walker and the control inputs its walks are keyed by), whether a cached
translation of page ``vpn`` is such a walk's result under those inputs.  A
check is the same object while its inputs, the walker's memo and the
watch's generation are: a TLB that found every entry of a tag valid under
it, and has had no entry added and no kept walk dropped since
(``PtWatch.drops``), need not look again.
"""
from .paging import CR4_LA57, EFER_NXE

EFER_LMA = 1 << 10
ENABLED = True          # False: every flush empties what it reaches (tests compare the two)


def walk_check(walker, watch, cr3, cr4, efer):
    """``valid(vpn, t)`` for translations walked by ``walker`` under CR3,
    CR4 and EFER (the memo key's inputs, paging.Walker.walk), or None when
    that walker keeps no walk there (not long mode, no memo)."""
    memo = walker.memo
    if memo is None or not efer & EFER_LMA:
        return None
    gen = watch.gen
    inputs = (cr3 & walker.addr_mask, 5 if cr4 & CR4_LA57 else 4, bool(efer & EFER_NXE))
    made = walker.keep_checks
    if made is None or len(made) >= 8:
        made = walker.keep_checks = {}
    last = made.get(inputs)
    if last is not None and last[0] is memo and last[1] == gen:
        return last[2]            # the same object while nothing changed (Tlb.flush_keeping)

    def valid(vpn, t):
        return t.kept == gen and t.memo is memo and t.mkey == (vpn, *inputs)
    made[inputs] = (memo, gen, valid)
    return valid


def host_check(cpu, key):
    """(key, tag, valid) for the host context of fast-set key ``key``
    (svm/world.py fast_key: (0, CR3, CR0, CR4, EFER, SEV ASID, enc mask)),
    or None when nothing of it can be kept."""
    if key is None or not ENABLED:
        return None
    _, cr3, _cr0, cr4, efer, _sev, enc = key
    if enc or cpu.machine.rmp.enabled:
        return None
    valid = walk_check(cpu.walker, cpu.machine.pt_watch, cr3, cr4, efer)
    if valid is None:
        return None
    return key, (0, cr3 & 0xFFF if cr4 & (1 << 17) else 0), valid
