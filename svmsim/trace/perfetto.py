"""``--trace-format perfetto``: the run as a Chrome trace-event JSON file, which
ui.perfetto.dev (and chrome://tracing) opens.

Time is svmsim's virtual time (1 ns per instruction, PAUSE longer: see
docs/DESIGN.md), so the picture is the same on every host.  Each CPU is a
process ("cpu0"); inside it, "host" and one track per guest ASID
("guest ASID 1") hold slices: the host runs until VMRUN, the guest until
#VMEXIT.  Each #VMEXIT is an instant event on the guest's track (named by
exit code, with EXITINFO1/2 and the guest RIP), as are exceptions,
interrupts and event injections on the track where they happened.
"""
import json

HOST_TID = 0
GUEST_TID_BASE = 1_000_000            # track ids of guests: base + ASID (0 is the host)


def _us(ns: int) -> float:
    return ns / 1000.0


class PerfettoTrace:
    def __init__(self, machine):
        self.machine = machine
        self.events: list = []
        self.open: dict = {}             # cpu -> (tid, name, start ns, args)
        self.tracks: set = set()
        self._start = machine.clock.now_ns

    def _track(self, cpu, tid, name):
        if (cpu, tid) not in self.tracks:
            self.tracks.add((cpu, tid))
            self.events.append({"ph": "M", "name": "thread_name", "pid": cpu, "tid": tid,
                                "args": {"name": name}})
            self.events.append({"ph": "M", "name": "thread_sort_index", "pid": cpu, "tid": tid,
                                "args": {"sort_index": tid}})
        if (cpu, None) not in self.tracks:
            self.tracks.add((cpu, None))
            self.events.append({"ph": "M", "name": "process_name", "pid": cpu, "args": {"name": f"cpu{cpu}"}})

    def _begin(self, cpu, tid, name, ns, args=None):
        self._end(cpu, ns)
        self._track(cpu, tid, "host" if tid == HOST_TID else f"guest ASID {tid - GUEST_TID_BASE}")
        self.open[cpu] = (tid, name, ns, args or {})

    def _end(self, cpu, ns, args=None):
        cur = self.open.pop(cpu, None)
        if cur is None:
            return
        tid, name, start, a = cur
        a = dict(a, **(args or {}))
        self.events.append({"ph": "X", "name": name, "pid": cpu, "tid": tid, "ts": _us(start),
                            "dur": max(_us(ns - start), 0.001), "args": a})

    def _instant(self, e, name, args):
        cpu = e["cpu"]
        tid = GUEST_TID_BASE + e["asid"] if e.get("world") == "guest" else HOST_TID
        if cpu not in self.open:
            self._begin(cpu, tid, "host" if tid == HOST_TID else f"guest ASID {e['asid']}", self._start)
        self._track(cpu, tid, "host" if tid == HOST_TID else f"guest ASID {e['asid']}")
        self.events.append({"ph": "i", "s": "t", "name": name, "pid": cpu, "tid": tid,
                            "ts": _us(e["ns"]), "args": args})

    def add(self, e: dict) -> None:
        """A decorated event (svmsim.trace.decorate)."""
        t, cpu, ns = e["type"], e["cpu"], e["ns"]
        if cpu not in self.open and t != "vmrun":
            self._begin(cpu, HOST_TID, "host", self._start)
        if t == "vmrun":
            if cpu not in self.open:
                self._begin(cpu, HOST_TID, "host", self._start)
            self._end(cpu, ns)
            self._begin(cpu, GUEST_TID_BASE + e["asid"], f"guest ASID {e['asid']}", ns,
                        {"vmcb": hex(e["vmcb"]), "rip": hex(e["rip"])})
        elif t == "vmexit":
            tid = GUEST_TID_BASE + e["asid"]
            args = {"code": hex(e["code"]), "info1": hex(e["info1"]), "info2": hex(e["info2"]),
                    "rip": hex(e["rip"])}
            if e.get("reason"):
                args["rule"] = e["reason"]["rule"]
            if e.get("insn"):
                args["insn"] = e["insn"]
            self._track(cpu, tid, f"guest ASID {e['asid']}")
            self.events.append({"ph": "i", "s": "t", "name": f"#VMEXIT {e['name']}", "pid": cpu,
                                "tid": tid, "ts": _us(ns), "args": args})
            self._end(cpu, ns, {"exit": e["name"]})
            self._begin(cpu, HOST_TID, "host", ns)
        elif t == "exception":
            self._instant(e, e["vector_name"], {"rip": hex(e["rip"]), "detail": e["detail"]})
        elif t == "deliver":
            self._instant(e, f"{e['kind_name']} {e['vector']:#x}", {"rip": hex(e["rip"])})
        elif t == "inject":
            self._instant(e, "EVENTINJ", {"event": e.get("event_decoded", hex(e["event"]))})

    def finish(self, out, result=None) -> None:
        end = self.machine.clock.now_ns
        for cpu in list(self.open):
            self._end(cpu, max(end, self.open[cpu][2]))
        meta = {"tool": "svmsim", "time": "virtual (1 ns per instruction)"}
        if result is not None:
            meta.update(reason=result.reason, status=result.status, instructions=result.instructions)
        json.dump({"traceEvents": self.events, "displayTimeUnit": "ns", "metadata": meta}, out)
        out.write("\n")
