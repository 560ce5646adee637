"""Structured run events: printed readably (``--trace``) or as JSON lines
(``--trace-file``), and available from Python through ``machine.listeners``.

Every event is a dict with a ``type``; the machine emits:

* ``deliver``: an exception or interrupt is about to be delivered (vector,
  kind, error code, RIP).  Kinds are named below.
* ``exception``: a fault raised by an instruction, with svmsim's explanation
  of why (real hardware gives none).
* ``vmrun``: VMRUN entered a guest (VMCB address, ASID, guest RIP, EVENTINJ).
* ``vmexit``: #VMEXIT (exit code and name, EXITINFO1/2, EXITINTINFO, guest
  RIP, ASID; for VMEXIT_INVALID the rule that failed, with field, value and
  the APM section).
* ``inject``: VMRUN delivers EVENTINJ into the guest.

Every event carries ``cpu`` and, for the SVM ones, ``insns``: the CPU's
instructions retired so far.
"""
import json

KIND_NAMES = {0: "interrupt", 1: "nmi", 2: "exception", 3: "int-n", 4: "int3/into", 5: "int1"}
CATEGORIES = {"exceptions": {"exception"}, "interrupts": {"deliver"},
              "vmexit": {"vmrun", "vmexit", "inject"}, "svm": {"vmrun", "vmexit", "inject"},
              "all": None}


class Tracer:
    """A listener that filters events by category and writes them out."""

    def __init__(self, categories=("exceptions",), text_out=None, jsonl_out=None):
        wanted = set()
        for c in categories:
            if c not in CATEGORIES:
                from ..errors import ConfigError
                raise ConfigError(f"unknown trace category {c!r} (known: {', '.join(CATEGORIES)})")
            if CATEGORIES[c] is None:
                wanted = None
                break
            wanted |= CATEGORIES[c]
        self.wanted = wanted
        self.text_out = text_out
        self.jsonl_out = jsonl_out
        self.counts: dict = {}

    def __call__(self, event: dict) -> None:
        t = event["type"]
        self.counts[t] = self.counts.get(t, 0) + 1
        if self.wanted is not None and t not in self.wanted:
            return
        if self.jsonl_out is not None:
            self.jsonl_out.write(json.dumps(event) + "\n")
        if self.text_out is not None:
            self.text_out.write(format_event(event) + "\n")


def format_event(e: dict) -> str:
    t = e["type"]
    if t == "exception":
        return f"[cpu{e['cpu']}] fault at rip={e['rip']:#x}: {e['detail']}"
    if t == "deliver":
        err = "" if e["error_code"] is None else f" error={e['error_code']:#x}"
        return (f"[cpu{e['cpu']}] deliver {KIND_NAMES.get(e['kind'], e['kind'])} "
                f"vector={e['vector']:#x}{err} rip={e['rip']:#x}")
    if t == "vmexit":
        return format_vmexit(e)
    if t == "vmrun":
        inj = ""
        if e.get("eventinj", 0) >> 31 & 1:
            from ..svm.exits import describe_event
            inj = f" inject={describe_event(e['eventinj'])}"
        return (f"[cpu{e['cpu']}] VMRUN vmcb={e['vmcb']:#x} asid={e['asid']} "
                f"rip={e['rip']:#x}{inj} insns={e['insns']}")
    if t == "inject":
        from ..svm.exits import describe_event
        return f"[cpu{e['cpu']}] inject {describe_event(e['event'])} rip={e['rip']:#x}"
    return json.dumps(e)


def format_vmexit(e: dict) -> str:
    head = f"[cpu{e['cpu']}] #VMEXIT {e['name']}"
    if "reason" in e:
        r = e["reason"]
        return f"[cpu{e['cpu']}] #VMEXIT VMEXIT_INVALID insns={e['insns']}: [{r['rule']}] {r['message']}"
    text = (f"{head} ({e['code']:#x}) info1={e['info1']:#x} info2={e['info2']:#x} "
            f"rip={e['rip']:#x} asid={e['asid']} insns={e['insns']}")
    if e.get("exitintinfo"):
        from ..svm.exits import describe_event
        text += f" exitintinfo={describe_event(e['exitintinfo'])}"
    return text
