"""``monitor`` commands of the gdb stub (also usable from Python:
``Monitor(machine).run("walk 0x1000")`` returns the text).

Each command reads machine state without changing it (``scope``,
``stop-on`` and ``physmem`` change only the debugger's settings).
"""
from collections import deque

from . import memory
from .control import Scope, ANYWHERE
from .report import format_registers, world, cpu_mode, symbolize

HELP = """svmsim monitor commands:
  info                  every CPU: host or guest (ASID, VMCB), mode, RIP
  regs                  all registers of the selected CPU, with flag names
  vmcb [PA]             the VMCB the selected CPU runs (or last ran), or the one at PA
  exits                 #VMEXITs by name, VMEXIT_INVALID reasons, the last 16 exits
  tlb [ASID]            the selected CPU's TLB: entries per ASID/PCID (one ASID: its entries)
  walk VA               the page walk of VA in the CPU's current mode (1-D, or 2-D under NPT);
                        VA, PA, GPA: a number, a register ($rip, rsp) or a symbol (name+0x10)
  walk guest VA         the same for the CPU's last guest, from the host (its VMCB)
  walk gpa GPA          the nested walk of a guest-physical address
  sev                   memory encryption: C-bit, SEV key slots by ASID, SEV guests (no key bytes)
  scope [host|guest|asid N|cpu N|any]   where gdb's breakpoints and watchpoints stop (all of them)
  stop-on vmexit [NAME|off]             stop in the host after each #VMEXIT (or of one name)
  stop-on vmrun [off]                   stop at the guest's first instruction after VMRUN
  physmem [on|off]      gdb memory accesses use system-physical addresses (as QEMU's PhyMemMode)"""


class Monitor:
    def __init__(self, machine, on_scope=None):
        self.machine = machine
        self.cpu_index = 0
        self.scope = ANYWHERE
        self.on_scope = on_scope            # called when the scope changes (re-scope gdb's points)
        self.phys = False
        self.recent = deque(maxlen=16)
        self._stop_hooks = {}
        machine.listeners.append(self._record)

    def value(self, text: str) -> int:
        """A number, a register of the selected CPU ($rip or rip), or a symbol
        with an optional +offset."""
        from . import regs
        base, plus, off = text.partition("+")
        extra = int(off, 0) if plus else 0
        try:
            return int(base, 0) + extra
        except ValueError:
            pass
        name = base.lstrip("$")
        if name.lower() in ("pc",):
            name = "rip"
        try:
            return regs.read(self.cpu, name) + extra
        except KeyError:
            pass
        for address, _, sym in self.machine.symbols._syms:
            if sym == name:
                return address + extra
        raise ValueError(f"{text!r} is not a number, a register or a symbol")

    def _record(self, e):
        if e["type"] == "vmexit":
            self.recent.append(e)

    @property
    def cpu(self):
        return self.machine.cpus[self.cpu_index]

    def run(self, line: str) -> str:
        words = line.split()
        if not words:
            return HELP
        name, args = words[0].replace("_", "-"), words[1:]
        fn = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if fn is None:
            return f"unknown monitor command {name!r}\n{HELP}"
        try:
            return fn(args)
        except (ValueError, IndexError, memory.DebugMemoryError) as e:
            return f"{name}: {e}"

    # -- state ------------------------------------------------------------------------
    def cmd_help(self, args):
        return HELP

    def cmd_info(self, args):
        lines = []
        for c in self.machine.cpus:
            state = " (halted)" if c.halted else " (waiting for SIPI)" if c.wait_for_sipi else ""
            lines.append(f"cpu{c.index}{state}: {world(c)}; {cpu_mode(c)}; rip={symbolize(self.machine, c.rip)}")
        return "\n".join(lines)

    def cmd_regs(self, args):
        return f"cpu{self.cpu.index}: {world(self.cpu)}, {cpu_mode(self.cpu)}\n{format_registers(self.cpu)}"

    def cmd_vmcb(self, args):
        from ..svm.vmcb import VmcbView
        pa = self.value(args[0]) if args else getattr(self.cpu.svm, "vmcb_pa", 0)
        if not pa:
            return "this CPU has not run a guest (no VMCB); give its address: monitor vmcb PA"
        state = "running" if self.cpu.svm_guest and pa == self.cpu.svm.vmcb_pa else "in memory"
        return f"VMCB at {pa:#x} ({state}):\n" + VmcbView(self.machine.bus, pa).dump()

    def cmd_exits(self, args):
        from ..cli import format_svm_summary
        summary = self.machine.svm_summary()
        if not summary:
            return "no VMRUN yet"
        lines = [format_svm_summary(summary).replace("svmsim: ", "")]
        if self.recent:
            lines.append("last exits (oldest first):")
            for e in self.recent:
                lines.append("  " + _exit_line(self.machine, e))
        return "\n".join(lines)

    def cmd_tlb(self, args):
        tlb = self.cpu.tlb
        want = int(args[0], 0) if args else None
        lines = [f"cpu{self.cpu.index} TLB (current tag: ASID {tlb.asid}, PCID {tlb.pcid}); "
                 f"{tlb.stats['misses']} misses"]
        for (asid, pcid), entries in sorted(tlb._tagged.items()):
            glob = tlb._global.get(asid, {}) if pcid == 0 else {}
            if want is None:
                if entries or glob:
                    lines.append(f"  ASID {asid} PCID {pcid}: {len(entries)} entries, {len(glob)} global")
                continue
            if asid != want:
                continue
            for vpn, t in sorted(list(entries.items()) + list(glob.items()))[:64]:
                lines.append("  " + _tlb_line(vpn, t))
        if want is not None and len(lines) == 1:
            lines.append(f"  nothing cached for ASID {want}")
        return "\n".join(lines)

    def cmd_walk(self, args):
        cpu = self.cpu
        c_bit = cpu.c_bit
        if args and args[0] == "gpa":
            return memory.format_walk(memory.gpa_walk(cpu, self.value(args[1])), c_bit)
        if args and args[0] == "guest":
            va = self.value(args[1])
            ctx = memory.live_context(cpu) if cpu.svm_guest else memory.vmcb_context(cpu)
            return memory.format_walk(memory.walk(cpu, va, ctx), c_bit)
        if not args:
            raise ValueError("walk VA | walk guest VA | walk gpa GPA")
        return memory.format_walk(memory.walk(cpu, self.value(args[0])), c_bit)

    def cmd_sev(self, args):
        m = self.machine
        sev = m.profile.extra.get("sev") or {}
        if not sev:
            return f"the {m.profile.name if hasattr(m.profile, 'name') else 'CPU'} profile has no SEV"
        cpu = self.cpu
        lines = [f"C-bit {sev['c_bit']}, {sev['reduction']} physical address bits cut, "
                 f"SEV ASIDs 1..{sev['max_asid']}",
                 f"cpu{cpu.index}: SYSCFG.MemEncryptionModEn={'1' if cpu.c_bit else '0'}"
                 + (f"; running SEV guest ASID {cpu.svm.asid}" if cpu.svm_guest and cpu.svm.sev else "")]
        eng = m.mem_engine
        loaded = [a for a in range(0, eng.num_asids + 1) if eng.key_loaded(a)]
        lines.append("key slots loaded (ASID): " + (", ".join("0 (SME)" if a == 0 else str(a) for a in loaded)))
        fw = m._amd_sp
        if fw is None:
            lines.append("AMD-SP: not used yet")
        else:
            lines.append(f"AMD-SP: platform {fw.state.name}, {len(fw.guests)} guest(s)")
            for h, g in sorted(fw.guests.items()):
                lines.append(f"  handle {h}: ASID {g.asid or '-'}, state {g.state.name}, policy {g.policy:#x}")
        return "\n".join(lines)

    # -- settings ---------------------------------------------------------------------
    def cmd_scope(self, args):
        if args:
            self.scope = parse_scope(args)
            if self.on_scope is not None:
                self.on_scope(self.scope)
        return f"breakpoints and watchpoints stop: {self.scope}"

    def cmd_physmem(self, args):
        if args:
            self.phys = args[0] in ("on", "1")
        return f"gdb memory accesses are {'system-physical' if self.phys else 'virtual'}"

    def cmd_stop_on(self, args):
        if not args or args[0] not in ("vmexit", "vmrun"):
            raise ValueError("stop-on vmexit [NAME|off] | stop-on vmrun [off]")
        what, rest = args[0], args[1:]
        old = self._stop_hooks.pop(what, None)
        if old is not None:
            old.remove()
        if rest and rest[0] == "off":
            return f"no longer stopping on {what}"
        m = self.machine

        def stop(m, cpu, e):
            m.pause("stopped", f"VMRUN of ASID {e['asid']}" if e["type"] == "vmrun" else f"#VMEXIT {e['name']}",
                    cpu.index)
        if what == "vmrun":
            self._stop_hooks[what] = m.hook_vmrun(stop)
            return "stopping at each VMRUN (at the guest's first instruction)"
        name = rest[0].upper() if rest else None
        self._stop_hooks[what] = m.hook_vmexit(stop, exit=name)
        return f"stopping in the host after each #VMEXIT{' ' + name if name else ''}"


def parse_scope(args) -> Scope:
    """"host" | "guest" | "asid N" | "cpu N" | "any", combinable: "guest asid 1 cpu 0"."""
    world = asid = cpu = None
    it = iter(args)
    for word in it:
        if word in ("host", "guest"):
            world = word
        elif word == "asid":
            asid = int(next(it), 0)
        elif word == "cpu":
            cpu = int(next(it), 0)
        elif word in ("any", "all", "anywhere"):
            return ANYWHERE
        else:
            raise ValueError(f"unknown scope word {word!r} (host, guest, asid N, cpu N, any)")
    return Scope(world, asid, cpu)


def _exit_line(machine, e) -> str:
    if e.get("reason"):
        return f"cpu{e['cpu']} VMEXIT_INVALID [{e['reason']['rule']}] insn {e['insns']}"
    return (f"cpu{e['cpu']} {e['name']} ({e['code']:#x}) info1={e['info1']:#x} info2={e['info2']:#x} "
            f"rip={symbolize(machine, e['rip'])} asid={e['asid']} insn {e['insns']}")


def _tlb_line(vpn, t) -> str:
    perms = ("RW" if t.rw else "R-") + (" U" if t.us else " S") + (" NX" if t.nx else "") + (" G" if t.g else "")
    extra = ""
    if hasattr(t, "gpa"):
        extra = f" gPA {t.gpa:#x}" + (" nested " + ("RW" if t.n_rw else "R-") + (" NX" if t.n_nx else ""))
    return f"{vpn << 12:#x} -> {t.spa:#x} {perms} {t.size >> 10} KiB{extra}"
