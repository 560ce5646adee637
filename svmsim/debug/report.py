"""Crash reports and register dumps, readable.

When a run ends badly (shutdown, deadlock, timeout, budget, Ctrl-C, an
unmodelled feature, an internal error) the CLI prints ``crash_report``: the
reason, each CPU's registers with its mode (host or guest, ASID), the
instruction at RIP disassembled and symbolized, and the chain of faults that
led there, first fault first, each at its instruction.
"""
from ..cpu.exceptions import NAMES as VECTOR_NAMES
from ..cpu.segments import SEG_NAMES, CS
from .disasm import disassemble

RFLAGS_BITS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
               (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"), (20, "VIP"),
               (21, "ID"))
CR0_BITS = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"), (18, "AM"),
            (29, "NW"), (30, "CD"), (31, "PG"))
CR4_BITS = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"), (7, "PGE"),
            (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"), (12, "LA57"), (16, "FSGSBASE"),
            (17, "PCIDE"), (18, "OSXSAVE"), (20, "SMEP"), (21, "SMAP"), (22, "PKE"))
EFER_BITS = ((0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE"), (12, "SVME"), (13, "LMSLE"),
             (14, "FFXSR"), (15, "TCE"))


def bit_names(value: int, table) -> str:
    return " ".join(name for bit, name in table if value >> bit & 1)


def cpu_mode(cpu) -> str:
    """Operating mode as the APM names it (vol 2, 1.2), with the CPL."""
    if not cpu.cr0 & 1:
        return "real mode"
    if cpu.rflags & (1 << 17):
        return "virtual-8086 mode"
    if cpu.efer & (1 << 10):
        mode = "64-bit mode" if cpu.bits == 64 else f"compatibility mode ({cpu.bits}-bit)"
    else:
        mode = f"{cpu.bits}-bit protected mode"
    return f"{mode}, CPL {cpu.cpl}"


def world(cpu) -> str:
    if cpu.svm_guest:
        s = cpu.svm
        parts = [f"guest ASID {s.asid}", f"VMCB {s.vmcb_pa:#x}"]
        if s.np_enable:
            parts.append("nested paging")
        if s.sev:
            parts.append("SEV")
        return ", ".join(parts)
    last = getattr(cpu.svm, "vmcb_pa", 0)
    return "host" + (f" (last VMCB {last:#x})" if last else "")


def symbolize(machine, address: int) -> str:
    sym = machine.symbols.describe(address)
    return f"{address:#x} {sym}" if sym else f"{address:#x}"


def format_registers(cpu) -> str:
    r = cpu.regs
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
    order = (0, 3, 1, 2, 6, 7, 5, 4)
    lines = ["  " + "  ".join(f"{n}={r[i]:016x}" for n, i in zip(names[:4], order[:4])),
             "  " + "  ".join(f"{n}={r[i]:016x}" for n, i in zip(names[4:], order[4:])),
             "  " + "  ".join(f"r{i}={r[i]:016x}" if i > 9 else f"r{i}={r[i]:016x} " for i in range(8, 12)),
             "  " + "  ".join(f"r{i}={r[i]:016x}" for i in range(12, 16))]
    flags = cpu.get_rflags()
    lines.append(f"  rip={cpu.rip:016x}  rflags={flags:08x} [{bit_names(flags, RFLAGS_BITS)}]")
    lines.append("  " + "  ".join(f"{n}={cpu.segs[i].sel:04x}" for i, n in enumerate(SEG_NAMES))
                 + f"  fs.base={cpu.segs[4].base:x}  gs.base={cpu.segs[5].base:x}")
    lines.append(f"  cr0={cpu.cr0:08x} [{bit_names(cpu.cr0, CR0_BITS)}]  cr2={cpu.cr2:x}  cr3={cpu.cr3:x}")
    lines.append(f"  cr4={cpu.cr4:x} [{bit_names(cpu.cr4, CR4_BITS)}]  efer={cpu.efer:x} "
                 f"[{bit_names(cpu.efer, EFER_BITS)}]")
    lines.append(f"  gdtr={cpu.gdtr_base:x}/{cpu.gdtr_limit:x}  idtr={cpu.idtr_base:x}/{cpu.idtr_limit:x}  "
                 f"ldtr={cpu.ldtr.sel:04x}  tr={cpu.tr.sel:04x}  gif={int(cpu.gif)}")
    return "\n".join(lines)


def format_cpu(machine, cpu, count: int = 1) -> str:
    state = ", halted" if cpu.halted else ", waiting for SIPI" if cpu.wait_for_sipi else ""
    lin = (cpu.ebase[CS] + cpu.rip) & cpu.lin_mask
    head = f"cpu{cpu.index}: {world(cpu)}, {cpu_mode(cpu)}{state}, {cpu.retired} instructions"
    code = disassemble(cpu, lin, count)
    return "\n".join([head, format_registers(cpu)] + [f"  {line}" for line in code])


def fault_chain(machine, cpu_index: int, limit: int = 8) -> list:
    """The faults that led to the end, first first: the last fault and every
    fault raised at the same instruction (a delivery that faulted, #DF, the
    triple fault), preceded by earlier faults of this CPU for context."""
    log = [f for f in machine.fault_log if f.cpu == cpu_index]
    if not log:
        return []
    last = log[-1].insns
    chain = [f for f in log if f.insns == last]
    earlier = [f for f in log if f.insns != last][-(max(0, limit - len(chain))):] if limit > len(chain) else []
    cpu = machine.cpus[cpu_index]
    lines = []
    if earlier:
        lines.append("earlier faults:")
        lines += [_fault_line(machine, cpu, f) for f in earlier]
    lines.append("fault chain (first fault first):")
    lines += _collapse([_fault_line(machine, cpu, f) for f in chain])
    return lines


def _collapse(lines: list) -> list:
    """Runs of the same line as one line and a count (a fault loop repeats
    one fault at one instruction many times)."""
    out = []
    for line in lines:
        if out and out[-1][0] == line:
            out[-1][1] += 1
        else:
            out.append([line, 1])
    return [line if n == 1 else f"{line} [{n} times in a row]" for line, n in out]


def _fault_line(machine, cpu, f) -> str:
    name = VECTOR_NAMES.get(f.vector, f"vector {f.vector}")
    err = "" if f.error_code is None else f"({f.error_code:#x})"
    cr2 = "" if f.cr2 is None else f" cr2={f.cr2:#x}"
    where = f"guest ASID {f.asid}" if f.guest else "host"
    insn = disassemble(cpu, f.lin, 1, f.bits)[0].split(": ", 1)[-1]
    return (f"  {name}{err}{cr2} at rip={symbolize(machine, f.rip)} ({where}, insn {f.insns}): "
            f"{insn} -- {f.detail}")


def crash_report(machine, result) -> str:
    """Everything a developer needs when a run did not end by debug-exit:
    each CPU (APs that never started are left out) and the fault chain."""
    focus = result.cpu if result.cpu is not None else _focus_cpu(machine)
    lines = []
    for cpu in machine.cpus:
        if cpu.index != focus and (cpu.wait_for_sipi and not cpu.retired):
            continue
        lines += format_cpu(machine, cpu).splitlines()
    lines += fault_chain(machine, focus)
    return "\n".join(lines)


def run_report(machine, result, full=False) -> str:
    """What ``svmsim run`` prints on stderr at the end: one line for a guest
    that exited by isa-debug-exit (only with ``full``), else the reason and
    the crash report; then unimplemented instructions, the SVM exit summary,
    notes, and with ``full`` the engine's statistics."""
    from ..cli import format_svm_summary
    lines = []
    if result.kind != "debug-exit" or full:
        lines.append(f"svmsim: {result.reason} after {result.instructions} instructions "
                     f"in {result.wall_time:.2f} s ({result.insns_per_second / 1e6:.2f} M/s)")
    if result.kind not in ("debug-exit", "killed", "internal-error"):     # an internal error: one line
        lines += ["  " + line for line in crash_report(machine, result).splitlines()]
    if result.unimplemented:
        names = ", ".join(f"{k} x{v}" for k, v in sorted(result.unimplemented.items()))
        lines.append(f"svmsim: instructions not implemented (raised #UD): {names}")
    if result.svm:
        lines.append(format_svm_summary(result.svm))
    if machine.counters:
        lines.append("svmsim: platform: " + ", ".join(f"{n} {what}" for what, n in sorted(machine.counters.items())))
    lines += [f"svmsim: note: {n}" for n in machine.notes]
    if full:
        lines += format_stats(result.stats)
    return "\n".join(lines)


def format_stats(stats: dict) -> list:
    engine, tlb = stats.get("engine", {}), stats.get("tlb", {})
    out = [f"svmsim: virtual time {stats.get('virtual_ns', 0) / 1e6:.3f} ms"]
    if engine:
        out.append("svmsim: engine: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in engine.items()))
    if tlb:
        out.append("svmsim: TLB: " + ", ".join(f"{k} {v}" for k, v in tlb.items()))
    mem = stats.get("memory")
    if mem:
        out.append(f"svmsim: memory: guest RAM {mem['guest_ram_mib']} MiB (mapped, host pages only where "
                   f"touched), peak RSS {mem['peak_rss_mib']} MiB")
    for key, value in stats.items():
        if key not in ("engine", "tlb", "virtual_ns", "memory"):
            out.append(f"svmsim: {key.replace('_', ' ')}: {value}")
    return out


def _focus_cpu(machine) -> int:
    if machine.fault_log:
        return machine.fault_log[-1].cpu
    return machine.current_cpu.index
