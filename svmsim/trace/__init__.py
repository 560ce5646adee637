"""Structured run events: printed readably (``--trace``), written as JSON lines
or as a Perfetto trace (``--trace-file``, ``--trace-format``), and available
from Python through ``machine.listeners``.

Every event is a dict with a ``type``; the machine emits:

* ``deliver``: an exception or interrupt is about to be delivered (vector,
  kind, error code, RIP; ``via``: "AVIC" for an interrupt AVIC takes from
  the vAPIC backing page).  Kinds are named below.
* ``exception``: a fault raised by an instruction, with svmsim's explanation
  of why (real hardware gives none).
* ``vmrun``: VMRUN entered a guest (VMCB address, ASID, guest RIP, EVENTINJ).
* ``vmexit``: #VMEXIT (exit code and name, EXITINFO1/2, EXITINTINFO, guest
  RIP, ASID; for VMEXIT_INVALID the rule that failed, with field, value and
  the APM section).
* ``inject``: VMRUN delivers EVENTINJ into the guest.
* ``ghcb``: the reference VMM's GHCB server answered an SEV-ES guest's
  VMGEXIT (the request and what the server did; ``svmsim.vmm.sev_es``).
* ``dma_blocked``: a device's DMA read or write that the Device Exclusion
  Vector, SKINIT's SL_DEV protection or the SEV-SNP RMP blocked (device,
  address, length, reason).
* ``skinit``: SKINIT started a secure loader (SLB, image length, entry).
* ``smi`` / ``rsm``: the CPU entered system management mode (the SMI's
  source, SMBASE, where it was) or left it by RSM.

A ``Tracer`` adds what a reader needs to every event it writes (``decorate``):
``cpu``, ``insns`` (the CPU's instructions retired so far), ``ns`` (virtual
time), ``world`` ("host" or "guest") and ``asid``, the names of vectors,
delivery kinds and events (EVENTINJ, EXITINTINFO), and the symbol and
disassembly of the instruction at ``rip``.  A JSON-lines file ends with a
``summary`` record: how the run ended, event counts, the SVM exit summary
and the exit coverage.
"""
import json

KIND_NAMES = {0: "interrupt", 1: "nmi", 2: "exception", 3: "int-n", 4: "int3/into", 5: "int1"}
CATEGORIES = {"exceptions": {"exception"}, "interrupts": {"deliver"},
              "vmexit": {"vmrun", "vmexit", "inject", "ghcb"}, "svm": {"vmrun", "vmexit", "inject", "ghcb"},
              "dma": {"dma_blocked"}, "smm": {"smi", "rsm"}, "skinit": {"skinit"}, "all": None}
FORMATS = ("jsonl", "perfetto")


def parse_categories(categories):
    """A set of event types, or None for all; unknown names are a ConfigError."""
    if isinstance(categories, str):
        categories = categories.split(",")
    wanted = set()
    for c in categories:
        c = c.strip()
        if c not in CATEGORIES:
            from ..errors import ConfigError
            raise ConfigError(f"unknown trace category {c!r} (known: {', '.join(CATEGORIES)})")
        if CATEGORIES[c] is None:
            return None
        wanted |= CATEGORIES[c]
    return wanted


class Tracer:
    """A listener writing events to stderr (readable) and/or a file (JSON lines
    or Perfetto), each with its own category filter."""

    def __init__(self, machine, text_out=None, text_categories=("all",), file_out=None,
                 file_categories=("all",), file_format="jsonl"):
        if file_format not in FORMATS:
            from ..errors import ConfigError
            raise ConfigError(f"unknown trace format {file_format!r} (known: {', '.join(FORMATS)})")
        self.machine = machine
        self.text_out, self.text_wanted = text_out, parse_categories(text_categories)
        self.file_out, self.file_wanted = file_out, parse_categories(file_categories)
        self.counts: dict = {}
        from .coverage import ExitCoverage
        self.coverage = ExitCoverage(machine)
        self.perfetto = None
        if file_out is not None and file_format == "perfetto":
            from .perfetto import PerfettoTrace
            self.perfetto = PerfettoTrace(machine)

    @staticmethod
    def _wants(wanted, t):
        return wanted is None or t in wanted

    def __call__(self, event: dict) -> None:
        t = event["type"]
        self.counts[t] = self.counts.get(t, 0) + 1
        self.coverage(event)
        to_text = self.text_out is not None and self._wants(self.text_wanted, t)
        to_file = self.file_out is not None and self._wants(self.file_wanted, t)
        if not (to_text or to_file):
            return
        e = decorate(self.machine, event)
        if to_file:
            if self.perfetto is not None:
                self.perfetto.add(e)
            else:
                self.file_out.write(json.dumps(e) + "\n")
        if to_text:
            self.text_out.write(format_event(e) + "\n")

    def close(self, result=None) -> None:
        """The end of the run: the summary record (JSON lines) or the whole
        Perfetto trace; then the file is flushed."""
        if self.file_out is None:
            return
        if self.perfetto is not None:
            self.perfetto.finish(self.file_out, result)
        else:
            self.file_out.write(json.dumps(self.summary(result)) + "\n")
        self.file_out.flush()

    def summary(self, result=None) -> dict:
        rec = {"type": "summary", "events": dict(self.counts), "exit_coverage": self.coverage.as_dict()}
        if result is not None:
            rec.update(status=result.status, kind=result.kind, reason=result.reason,
                       instructions=result.instructions, wall_time=round(result.wall_time, 6),
                       virtual_ns=self.machine.clock.now_ns, svm=result.svm)
        return rec


def decorate(machine, event: dict) -> dict:
    """The event with its decoded fields (a copy; listeners share the original)."""
    from ..cpu.exceptions import NAMES as VECTOR_NAMES
    from ..svm.exits import describe_event
    e = dict(event)
    cpu = machine.cpus[e.get("cpu", 0)]
    e.setdefault("insns", cpu.retired + cpu.q_exec)
    e["ns"] = machine.now_ns(cpu)
    guest = cpu.svm_guest
    e["world"] = "guest" if guest else "host"
    e.setdefault("asid", cpu.svm.asid if guest else 0)
    t = e["type"]
    if t in ("exception", "deliver"):
        e["vector_name"] = VECTOR_NAMES.get(e["vector"], f"vector {e['vector']:#x}")
    if t == "deliver":
        e["kind_name"] = KIND_NAMES.get(e["kind"], str(e["kind"]))
    for field in ("eventinj", "event", "exitintinfo"):
        if e.get(field):
            e[field + "_decoded"] = describe_event(e[field])
    rip = e.get("rip")
    if rip is not None and e.get("name") != "INVALID":
        sym = machine.symbols.describe(rip)
        if sym:
            e["symbol"] = sym
        if t in ("exception", "vmexit"):
            e["insn"] = _insn_text(cpu, rip)
    return e


def _insn_text(cpu, rip) -> str:
    from ..cpu.segments import CS
    from ..debug.disasm import disassemble
    line = disassemble(cpu, (cpu.ebase[CS] + rip) & cpu.lin_mask, 1)[0]
    return line.split(": ", 1)[-1]


def _where(e) -> str:
    rip = f"rip={e['rip']:#x}" if "rip" in e else ""
    if e.get("symbol"):
        rip += f" {e['symbol']}"
    return rip


def format_event(e: dict) -> str:
    t = e["type"]
    if t == "dma_blocked":                   # a device's access: no CPU
        kind = "write" if e["write"] else "read"
        return f"[dma] {e['device']} {kind} of {e['len']} bytes at {e['spa']:#x} blocked: {e['reason']}"
    cpu = f"[cpu{e['cpu']}{' guest' if e.get('world') == 'guest' else ''}]"
    if t == "exception":
        insn = f" ({e['insn']})" if e.get("insn") else ""
        return f"{cpu} fault at {_where(e)}{insn}: {e['detail']}"
    if t == "deliver":
        err = "" if e["error_code"] is None else f" error={e['error_code']:#x}"
        via = f" ({e['via']})" if e.get("via") else ""
        return (f"{cpu} deliver {KIND_NAMES.get(e['kind'], e['kind'])} "
                f"vector={e['vector']:#x}{err}{via} {_where(e)}")
    if t == "vmexit":
        return format_vmexit(e)
    if t == "vmrun":
        inj = ""
        if e.get("eventinj", 0) >> 31 & 1:
            from ..svm.exits import describe_event
            inj = f" inject={describe_event(e['eventinj'])}"
        return (f"{cpu} VMRUN vmcb={e['vmcb']:#x} asid={e['asid']} "
                f"{_where(e)}{inj} insns={e['insns']}")
    if t == "inject":
        from ..svm.exits import describe_event
        return f"{cpu} inject {describe_event(e['event'])} {_where(e)}"
    if t == "ghcb":
        return f"[vmm] vCPU{e['vcpu']} GHCB {e['request']}: {e['detail']}"
    if t == "skinit":
        return f"{cpu} SKINIT SLB={e['slb']:#x} length={e['length']} -> {_where(e)} (measured into PCR 17)"
    if t == "smi":
        return f"{cpu} SMI ({e['source']}) -> SMM at SMBASE {e['smbase']:#x} from {_where(e)}"
    if t == "rsm":
        return f"{cpu} RSM -> {_where(e)}{' (back into the guest)' if e.get('guest') else ''}"
    return json.dumps(e)


def format_vmexit(e: dict) -> str:
    cpu = f"[cpu{e['cpu']}]"
    if "reason" in e:
        r = e["reason"]
        return f"{cpu} #VMEXIT VMEXIT_INVALID insns={e['insns']}: [{r['rule']}] {r['message']}"
    insn = f" ({e['insn']})" if e.get("insn") else ""
    text = (f"{cpu} #VMEXIT {e['name']} ({e['code']:#x}) info1={e['info1']:#x} info2={e['info2']:#x} "
            f"{_where(e)}{insn} asid={e['asid']} insns={e['insns']}")
    if e.get("exitintinfo"):
        from ..svm.exits import describe_event
        text += f" exitintinfo={describe_event(e['exitintinfo'])}"
    return text
