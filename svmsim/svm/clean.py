"""VMCB clean bits, honoured (APM vol 2, 15.15.3).

When VMCB_CLEAN bit n is 1, the processor may use the copy of the fields
that bit covers it kept from this VMCB's last VMRUN/#VMEXIT instead of
reading the VMCB.  svmsim does use the copy, as hardware may: a hypervisor
that edits a field but leaves its clean bit set gets the old value, exactly
the bug real hardware would show.  Unlike hardware, svmsim says so: each
stale use is noted in the run report and traced as a ``vmcb_stale`` event.

The copy belongs to one VMCB: a VMRUN of any other VMCB address on this CPU
(or a VMEXIT_INVALID) discards it, so clean bits are then ignored, as the
APM requires for a VMCB the processor has not cached.

The copy holds every field a clean bit covers, as VMRUN used it, refreshed
by each field #VMEXIT writes.  A VMRUN compares the copy with the VMCB one
clean group at a time (a tuple compare): when the hypervisor changed
nothing, honouring the clean bits costs a few comparisons.
"""
from operator import itemgetter

from .vmcb import BY_NAME, FIELDS, CLEAN_BIT_NAMES, CHILDREN
from .packed import VmcbPage

# The copy is a list of the whole fields clean bits cover, in CLEAN_NAMES
# order (CLEAN_INDEX: name -> position).  GROUPS: clean bit -> (names, a
# getter of their values from a VmcbPage, the same from the copy).
_by_bit = {}
for _f in FIELDS:
    if _f.clean is not None and _f.parent is None:
        _by_bit.setdefault(_f.clean, []).append(_f.name)
# (Control-area fields first: svm/switch.py reads them from the two areas.)
CLEAN_NAMES = tuple(sorted((n for _, names in sorted(_by_bit.items()) for n in names),
                           key=lambda n: BY_NAME[n].area != "control"))
CLEAN_INDEX = {n: i for i, n in enumerate(CLEAN_NAMES)}


def _getter(keys):
    return itemgetter(*keys) if len(keys) > 1 else (lambda k: lambda d: (d[k],))(keys[0])


GROUPS = tuple((bit, tuple(names), _getter(names), _getter([CLEAN_INDEX[n] for n in names]))
               for bit, names in sorted(_by_bit.items()))
_ALL = itemgetter(*CLEAN_NAMES)
del _f, _by_bit


def view_for_vmrun(cpu, vmcb_pa: int, page: bytearray) -> VmcbPage:
    """The VMCB as this VMRUN sees it (clean bits apply only to the VMCB this
    CPU ran last); ``page`` is a copy of the VMCB page."""
    s = cpu.svm
    v = VmcbPage(page)
    cache = s.clean_cache
    if s.cache_pa != vmcb_pa:
        s.cache_pa = vmcb_pa
    elif cache:
        clean = v["VMCB_CLEAN"]
        if clean:
            for bit, names, get, get_cached in GROUPS:
                if clean >> bit & 1:
                    cached = get_cached(cache)
                    if get(v) != cached:
                        _use_cached(cpu, v, bit, names, cached)
    s.clean_cache = list(_ALL(v))
    return v


def _use_cached(cpu, v, bit, names, cached) -> None:
    for name, old in zip(names, cached):
        memory = v[name]
        if memory != old:
            kids = [c for c in CHILDREN.get(name, ()) if (memory ^ old) >> c.bit & c.mask]
            for f in kids or [None]:
                shown = (name, old, memory) if f is None else \
                    (f.name, old >> f.bit & f.mask, memory >> f.bit & f.mask)
                _stale(cpu, bit, *shown)
            v[name] = old


def refresh(cache: list, name: str, value: int) -> None:
    """#VMEXIT wrote ``value`` into the field ``name``: the copy follows."""
    i = CLEAN_INDEX.get(name)
    if i is not None and cache:
        cache[i] = value


def _stale(cpu, clean, name, cached, memory):
    bit = f"{clean} ({CLEAN_BIT_NAMES.get(clean, '?')})"
    cpu.machine.note(
        f"VMRUN used the cached {name} = {cached:#x}, not the VMCB's {memory:#x}: "
        f"VMCB_CLEAN bit {bit} was set (APM vol 2, 15.15.3)")
    cpu.machine.svm_event(cpu, "vmcb_stale", {"field": name, "cached": cached,
                                              "vmcb": memory, "clean_bit": clean})


def view_for_exit(cpu, page: bytearray) -> VmcbPage:
    """The VMCB #VMEXIT writes (into ``page``, a copy written back after):
    every written field refreshes the cache."""
    return VmcbPage(page, cpu.svm.clean_cache)


def forget(cpu) -> None:
    cpu.svm.cache_pa = None
    cpu.svm.clean_cache = []
