"""Structured run events: printed readably (``--trace``) or as JSON lines
(``--trace-file``), and available from Python through ``machine.listeners``.

Every event is a dict with a ``type``; the machine emits:

* ``deliver``: an exception or interrupt is about to be delivered (vector,
  kind, error code, RIP).  Kinds are named below.
* ``exception``: a fault raised by an instruction, with svmsim's explanation
  of why (real hardware gives none).
"""
import json

KIND_NAMES = {0: "interrupt", 1: "nmi", 2: "exception", 3: "int-n", 4: "int3/into", 5: "int1"}
CATEGORIES = {"exceptions": {"exception"}, "interrupts": {"deliver"}, "all": None}


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
    return json.dumps(e)
