"""Exit coverage: which intercepts a hypervisor under test enabled, which of
them fired, which never did (``svmsim run --exit-coverage``).

Enabled means set in the VMCB's intercept vectors (APM vol 2, Appendix B,
000h-014h) at some VMRUN, as the CPU loaded them; fired means a #VMEXIT with
that exit code.  Exits that no intercept bit controls (NPF, VMEXIT_INVALID,
AVIC, VMGEXIT) are listed apart.
"""
from ..svm.intercepts import INTERCEPTS, WORD_NAMES


class ExitCoverage:
    """A listener: attach to ``machine.listeners`` (a Tracer has one)."""

    def __init__(self, machine):
        self.machine = machine
        self.words = [0] * len(WORD_NAMES)
        self.fired: dict = {}              # exit name -> count
        self.vmruns = 0

    def __call__(self, e) -> None:
        t = e["type"]
        if t == "vmrun":
            self.vmruns += 1
            svm = self.machine.cpus[e["cpu"]].svm
            for i, w in enumerate(getattr(svm, "words", ())):
                self.words[i] |= w
        elif t == "vmexit":
            self.fired[e["name"]] = self.fired.get(e["name"], 0) + 1

    def enabled(self) -> list:
        return [i.name for i in INTERCEPTS if self.words[i.word] >> i.bit & 1]

    def as_dict(self) -> dict:
        enabled = self.enabled()
        return {"vmruns": self.vmruns,
                "enabled": enabled,
                "fired": {n: self.fired.get(n, 0) for n in enabled if self.fired.get(n)},
                "never_fired": [n for n in enabled if not self.fired.get(n)],
                "without_intercept_bit": {n: c for n, c in self.fired.items() if n not in enabled}}

    def report(self) -> str:
        d = self.as_dict()
        if not d["vmruns"]:
            return "svmsim: exit coverage: no VMRUN"
        lines = [f"svmsim: exit coverage over {d['vmruns']} VMRUN: intercepts enabled at VMRUN, and #VMEXITs"]
        w = max([16] + [len(n) for n in d["enabled"]] + [len(n) for n in d["without_intercept_bit"]])
        for name in d["enabled"]:
            n = d["fired"].get(name, 0)
            lines.append(f"svmsim:   {name:<{w}} {'fired ' + str(n) if n else 'never fired'}")
        for name, n in d["without_intercept_bit"].items():
            lines.append(f"svmsim:   {name:<{w}} fired {n} (no intercept bit)")
        lines.append(f"svmsim: {len(d['enabled'])} intercepts enabled, {len(d['fired'])} fired, "
                     f"{len(d['never_fired'])} never did" +
                     (f": {', '.join(d['never_fired'])}" if d["never_fired"] else ""))
        return "\n".join(lines)
