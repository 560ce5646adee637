"""svmsim's command line: ``svmsim run KERNEL ...`` boots a Multiboot kernel
the way ``qemu-system-x86_64 -kernel KERNEL -serial stdio -device
isa-debug-exit,iobase=0xf4,iosize=4`` does, and exits with the same status."""
import argparse
import logging
import math
import sys

from .errors import ConfigError, SvmsimError


def _int_arg(text):
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _module_arg(text):
    path, _, args = text.partition(" ")
    return (path, args)


def _count(text):
    """A non-negative integer option (--max-insns, --smp)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _seconds(text):
    """A positive, finite number of seconds (--timeout): 'nan', 'inf' and 0 are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr and status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def version() -> str:
    from importlib.metadata import version as dist_version, PackageNotFoundError
    try:
        return dist_version("svmsim")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="svmsim", description="AMD64 + SVM + SEV machine simulator")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks of internal errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks of internal errors")
    p.add_argument("--version", action="version", version=f"svmsim {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", parents=[common], help="boot a Linux bzImage or a Multiboot kernel (as qemu -kernel does)")
    r.add_argument("kernel", help="Linux bzImage, or Multiboot v1 kernel (ELF32, a.out kludge, or ELF64)")
    r.add_argument("--append", default="", help="kernel command line")
    r.add_argument("--module", action="append", default=[], metavar="'FILE [ARGS]'",
                   help="a Multiboot module (repeatable); text after the first space is its command line")
    r.add_argument("--initrd", default=None, metavar="FILE",
                   help="initial ramdisk for a Linux bzImage (-initrd); for a Multiboot kernel, one more module")
    r.add_argument("-m", "--memory", default="128M", help="RAM size (default 128M; QEMU syntax)")
    r.add_argument("--smp", type=_count, default=1, help="number of CPUs")
    r.add_argument("--cpu", default="epyc",
                   help="CPU model and features, QEMU's syntax: epyc (default), epyc-genoa, amd64-base, "
                        "max; then +feature/-feature, e.g. max,+svm,-npt,-rdtscp")
    r.add_argument("--device", action="append", default=[], metavar="NAME",
                   help="add an optional device, repeatable: edu (QEMU's educational PCI device with "
                        "DMA), pc-testdev")
    r.add_argument("--max-insns", type=_count, default=None, help="stop after this many instructions")
    r.add_argument("--timeout", type=_seconds, default=None, help="stop after this many host seconds")
    r.add_argument("--serial-out", default=None, help="write COM1 output to FILE instead of stdout")
    r.add_argument("--serial-in", default=None, help="read COM1 input from FILE")
    r.add_argument("--trace", default=None, metavar="CATS",
                   help="print events on stderr: comma list of exceptions, interrupts, vmexit (VMRUN, #VMEXIT, injection), "
                        "dma (blocked DMA), smm (SMI, RSM), skinit, all")
    r.add_argument("--trace-file", default=None, metavar="FILE",
                   help="write events to FILE (JSON lines, ending with a summary record; see --trace-format)")
    r.add_argument("--trace-file-filter", default="all", metavar="CATS",
                   help="the categories --trace-file gets (default all), independent of --trace")
    r.add_argument("--trace-format", default="jsonl", choices=("jsonl", "perfetto"),
                   help="--trace-file as JSON lines (default) or a Perfetto/Chrome trace (ui.perfetto.dev)")
    r.add_argument("--exit-coverage", action="store_true",
                   help="at the end, list the intercepts the hypervisor enabled and which of them fired")
    r.add_argument("--gdb", metavar="DEV", default=None,
                   help="serve gdb's remote protocol on DEV: tcp::PORT (localhost) or tcp:HOST:PORT, as QEMU's -gdb")
    r.add_argument("-s", dest="gdb_default", action="store_true", help="shorthand for --gdb tcp::1234")
    r.add_argument("-S", dest="gdb_wait", action="store_true",
                   help="with --gdb or -s: wait for gdb before the first instruction")
    r.add_argument("--profile", metavar="FILE", default=None,
                   help="profile svmsim itself with cProfile and write the statistics to FILE "
                        "(read with python3 -m pstats FILE; see docs/PERFORMANCE.md)")
    r.add_argument("--quiet", "-q", action="store_true", help="no run report on stderr")
    r.add_argument("--report", action="store_true", help="print the full run report on stderr")
    la = sub.add_parser("launch", parents=[common], help="launch a firmware image (OVMF) as an SEV, SEV-ES or "
                        "SEV-SNP guest, as QEMU does, and check its launch measurement as the guest owner would")
    la.add_argument("--ovmf", required=True, metavar="FILE", help="the firmware image (e.g. /usr/share/ovmf/OVMF.fd)")
    la.add_argument("--mode", required=True, choices=("sev", "seves", "snp"),
                    help="sev, seves or snp (as sev-snp-measure --mode spells them)")
    la.add_argument("--vcpus", type=_count, default=1, help="number of vCPUs (SEV-ES: one VMSA each; default 1)")
    la.add_argument("--vcpu-type", default="EPYC-v4", help="QEMU CPU model of the vCPUs (default EPYC-v4)")
    la.add_argument("--policy", type=_int_arg, default=None,
                    help="guest policy (default 0x1 for sev, 0x5 for seves, 0x30000 for snp, as QEMU's "
                         "sev-guest / sev-snp-guest use)")
    la.add_argument("--guest-features", type=_int_arg, default=None, metavar="HEX",
                    help="snp: the VMSAs' SEV_FEATURES (default 0x1, as sev-snp-measure)")
    la.add_argument("--attestation-out", metavar="DIR",
                    help="snp: write report.bin and the ark/ask/vcek certificates (PEM) there")
    la.add_argument("--expected-digest", metavar="HEX",
                    help="the launch digest the guest owner expects (e.g. from sev-snp-measure); "
                         "exit 0 only if the measurement verifies against it (snp: the report's "
                         "MEASUREMENT equals it and its signature chains to svmsim's ARK)")
    i = sub.add_parser("init", parents=[common], help="start a kernel of your own: copy svmsim's guest "
                       "runtime, an example kernel and a Makefile into DIR")
    i.add_argument("dir", help="directory to create or fill")
    from .fuzz.cli import add_parser as add_fuzz_parser
    add_fuzz_parser(sub, common)
    d = sub.add_parser("demo", parents=[common], help="boot a bundled kernel (default: the SVM hypervisor)")
    d.add_argument("which", nargs="?", default="hypervisor", choices=sorted(DEMOS),
                   help="hypervisor (default), sev, sev-es, sev-snp, attacks, smoke, avic, edu, dev, skinit or smm")
    d.add_argument("--smp", type=_count, default=None)
    d.add_argument("--path", action="store_true",
                   help="print the demo kernel's path (to boot it with svmsim run or QEMU) and exit")
    d.add_argument("--trace", default=None, metavar="CATS",
                   help="sev-es: print these trace events on stderr (e.g. vmexit: each #VMEXIT "
                        "and the GHCB server's answer)")
    d.add_argument("--timeout", type=_seconds, default=600)
    return p


STATUS_USAGE = 2          # a user mistake: bad option, file, kernel (before the machine runs)
STATUS_INTERNAL = 70      # a bug in svmsim (EX_SOFTWARE)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Library code logs through logging; the command line shows warnings as one line each.
    logging.basicConfig(level=logging.WARNING, format="svmsim: %(name)s: %(message)s")
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "init":
            return cmd_init(args)
        if args.command == "fuzz":
            from .fuzz.cli import cmd_fuzz
            return cmd_fuzz(args)
        if args.command == "launch":
            from .cli_launch import cmd_launch
            return cmd_launch(args)
    except SvmsimError as e:
        print(f"svmsim: error: {e}", file=sys.stderr)
        return STATUS_USAGE
    except KeyboardInterrupt:
        print("svmsim: interrupted", file=sys.stderr)
        return 130
    except Exception as e:        # a bug in svmsim: one line, the traceback only on request
        return internal_error(e, args.debug)
    return 0


def internal_error(e: BaseException, debug: bool) -> int:
    """Report a bug in svmsim as one line (with --debug, the traceback too)."""
    import traceback
    if debug:
        traceback.print_exception(e)
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (at {where.filename.split('svmsim/')[-1]}:{where.lineno})" if where else ""
    hint = "" if debug else "; --debug shows the traceback"
    print(f"svmsim: internal error: {type(e).__name__}: {e}{at}; please report it{hint}", file=sys.stderr)
    return STATUS_INTERNAL


def _open(path, mode, option):
    """An output/input file named on the command line, or a one-line error."""
    try:
        return open(path, mode)
    except OSError as e:
        raise ConfigError(f"cannot open {option} {path!r}: {e.strerror or e}") from None


def cmd_run(args) -> int:
    from .machine import Machine, MachineConfig
    if args.smp < 1:
        raise ConfigError("--smp must be at least 1")
    gdb = args.gdb or ("tcp::1234" if args.gdb_default else None)
    if args.gdb_wait and not gdb:
        raise SvmsimError("-S waits for gdb: give --gdb tcp::PORT or -s too")
    cfg = MachineConfig(mem_size=args.memory, smp=args.smp, cpu=args.cpu, serial_out=None,
                        max_insns=args.max_insns, timeout=args.timeout, devices=tuple(args.device))
    m = Machine(cfg)
    m.load_kernel(args.kernel, args.append, [_module_arg(t) for t in args.module], initrd=args.initrd)
    # Files are opened once the kernel is known to load.
    out = _open(args.serial_out, "wb", "--serial-out") if args.serial_out else sys.stdout.buffer
    status = None
    if not args.quiet and sys.stderr.isatty():
        from .status import StatusLine, ClearingWriter
        status = StatusLine(m, sys.stderr)
        m.pollers.append(status.poll)
    m.uart.out = ClearingWriter(out, status) if status is not None and not args.serial_out else out
    if args.serial_in:
        m.uart.inp = _open(args.serial_in, "rb", "--serial-in")
    tracer = None
    if args.trace or args.trace_file or args.exit_coverage:
        from .trace import Tracer
        trace_out = _open(args.trace_file, "w", "--trace-file") if args.trace_file else None
        tracer = Tracer(m, sys.stderr if args.trace else None, args.trace or "all",
                        trace_out, args.trace_file_filter, args.trace_format)
        m.listeners.append(tracer)
    if args.profile:
        _open(args.profile, "wb", "--profile").close()      # a bad path fails before the run
    run = (lambda: _run_with_gdb(m, gdb, args.gdb_wait)) if gdb else m.run
    result = _profiled(run, args.profile) if args.profile else run()
    out.flush()
    if status is not None:
        status.clear()
    if tracer is not None:
        tracer.close(result)
    if result is None:
        print("svmsim: killed by gdb", file=sys.stderr)
        return 0
    if result.kind == "internal-error" and args.debug and m.internal_exception is not None:
        import traceback
        traceback.print_exception(m.internal_exception)
    if not args.quiet:
        _report(m, result, full=args.report)
    if args.exit_coverage:
        print(tracer.coverage.report(), file=sys.stderr)
    return result.status


def _profiled(run, path):
    """Run under cProfile and write its statistics to ``path``.  Compiled
    guest code shows as blk_<guest address> functions of "<svmsim block>"."""
    import cProfile
    prof = cProfile.Profile()
    try:
        return prof.runcall(run)
    finally:
        prof.dump_stats(path)
        print(f"svmsim: profile written to {path} (python3 -m pstats {path})", file=sys.stderr)


def _run_with_gdb(m, address, wait):
    from .debug.gdbstub import GdbServer, GdbKilled, parse_address
    try:
        host, port = parse_address(address)
        server = GdbServer(m, host, port)
    except (ValueError, OSError) as e:
        raise SvmsimError(f"--gdb {address}: {getattr(e, 'strerror', None) or e}") from None
    print(f"svmsim: gdb server on tcp:{host}:{server.port}"
          f"{', waiting for gdb to connect (-S)' if wait else ''}", file=sys.stderr, flush=True)
    try:
        return server.serve(wait=wait)
    except GdbKilled:
        return None
    finally:
        server.close()


DEMOS = {
    # name: (kernel under tests/guests, -append, CPUs, what it shows)
    "hypervisor": ("svm_basic", "", 1, "a bare-metal SVM hypervisor and its 64-bit, 32-bit and real-mode guests"),
    "smoke": ("smoke", "smoke", 2, "exceptions, APIC timer, a second CPU (issue 2's smoke kernel)"),
    "sev": ("sev_guest", "", 1, "an SEV guest launched through the AMD-SP by the reference VMM"),
    "sev-es": ("hello", "greeting=1 svmsim", 1, "an SEV-ES guest launched through the AMD-SP by "
               "the reference VMM, its I/O through the GHCB"),
    "attacks": ("attack_target", "", 1, "the malicious-hypervisor gallery: one guest launched as SEV, "
                "SEV-ES and SEV-SNP through the AMD-SP, attacked six ways"),
    "avic": ("svm_avic", "", 2, "an SMP hypervisor with AVIC: two vCPUs on two CPUs send each other "
             "IPIs with and without #VMEXITs; another VM and the hosts never see them"),
    "edu": ("edu", "", 1, "a driver for QEMU's edu PCI device: registers, DMA, INTx and MSI", ("edu",)),
    "dev": ("dev", "", 1, "the Device Exclusion Vector blocking the edu device's DMA page by page",
            ("edu",)),
    "skinit": ("skinit", "", 2, "SKINIT: a secure loader measured into the TPM's PCR 17, protected "
               "from DMA", ("edu",)),
    "smm": ("smm", "", 1, "system management mode: SMIs by port B2h, the APIC and from a guest; RSM"),
    "sev-snp": ("snp_attest", "", 1, "an SEV-SNP guest that validates its memory and proves what it "
                "is with an attestation report (a minute or two)"),
}


def cmd_init(args) -> int:
    from . import guestkit
    try:
        written = guestkit.init(args.dir)
    except (OSError, FileNotFoundError) as e:
        raise SvmsimError(f"init {args.dir}: {e}") from None
    print(f"svmsim: wrote {len(written)} files into {args.dir}; build with `make -C {args.dir}` "
          f"(gcc, binutils), run with `svmsim run {args.dir}/hello.elf`", file=sys.stderr)
    return 0


def demo_kernel(name: str):
    """A bundled kernel (svmsim.guestkit.kernel), saying so when it is built."""
    from . import guestkit
    if guestkit.packaged_kernel(name) is None:
        print(f"svmsim demo: building tests/guests/{name} with gcc ...", file=sys.stderr)
    try:
        return guestkit.kernel(name)
    except FileNotFoundError as e:
        raise SvmsimError(str(e)) from None


def cmd_demo(args) -> int:
    """Boot a bundled kernel.

    The default demo is a small hypervisor (tests/guests/svm_basic.c): it
    enables SVM, runs a guest, intercepts CPUID, I/O, MSRs, VMMCALL, #UD and
    HLT, injects an interrupt and an exception, and prints every exit; svmsim
    adds its own exit summary.  A wheel ships the kernels prebuilt
    (svmsim.guestkit); a source checkout builds them with gcc.
    """
    import time
    name, append, smp, what, *devices = DEMOS[args.which]
    devices = devices[0] if devices else ()
    smp = args.smp or smp
    if args.path:
        print(demo_kernel(name))
        return 0
    print(f"svmsim demo: {what}", file=sys.stderr)
    kernel = demo_kernel(name)
    if args.which == "sev":
        return _demo_sev(kernel)
    if args.which == "sev-es":
        return _demo_sev_es(kernel, append, args.trace)
    if args.which == "attacks":
        return _demo_attacks(str(kernel))
    if args.which == "sev-snp":
        return _demo_snp(str(kernel), args.timeout)
    with_devices = "".join(f" --device {d}" for d in devices)
    print(f"svmsim demo: booting it as `qemu-system-x86_64 -kernel` would, --smp {smp}{with_devices}",
          file=sys.stderr)
    from .machine import Machine
    m = Machine(mem_size="128M", smp=smp, serial_out=sys.stdout.buffer, devices=devices)
    m.load_kernel(str(kernel), append)
    t = time.monotonic()
    result = m.run(timeout=args.timeout)
    sys.stdout.flush()
    if result.svm:
        print(format_svm_summary(result.svm), file=sys.stderr)
    if m.counters:
        print("svmsim: platform: " + ", ".join(f"{n} {what}" for what, n in sorted(m.counters.items())),
              file=sys.stderr)
    verdict = "PASS" if result.status == 1 else "FAIL"
    print(f"svmsim demo: {verdict}: {result.reason}; {result.instructions} instructions in "
          f"{time.monotonic() - t:.1f} s; exit status {result.status}", file=sys.stderr)
    return 0 if verdict == "PASS" else 1


def _demo_sev(kernel) -> int:
    """Issue 5, item 7: launch an SEV guest, show the measurement the guest
    owner verifies, the same page as plaintext inside and ciphertext outside,
    and the secret delivered."""
    from .machine import Machine
    from .sev.crypto import GuestOwner
    from .vmm import Vmm
    from .vmm import launch_sev
    from .vmm.vmm import GUEST_BASE
    say = lambda text: print(f"svmsim demo: {text}", file=sys.stderr)   # noqa: E731
    m = Machine(mem_size="128M", serial_out=sys.stdout.buffer)
    vmm = Vmm(m, asid=5)
    info = vmm.load_kernel(str(kernel))
    owner = GuestOwner(policy=1)                        # NODBG: no debug decryption
    secret = b"disk key 0f1e2d3c4b5a6978\0"
    launch = launch_sev(vmm, owner, secret, 0x200000,
                        regions=[(info.load_addr, info.load_end - info.load_addr)])
    say(f"AMD-SP: LAUNCH_START .. LAUNCH_FINISH, ACTIVATE handle {launch.handle} on ASID {launch.asid}")
    say(f"launch measurement {launch.measurement[:32].hex()}")
    say(f"guest owner checks it against the image it expects: {'verified' if launch.verified else 'WRONG'}"
        f"{', secret injected' if launch.verified else ''}")
    result = vmm.run()
    sys.stdout.flush()
    raw = m.bus.read_bytes(GUEST_BASE + 0x300000, 32)
    say(f"what the hypervisor reads at the guest's private page: {raw.hex()}")
    shared = m.bus.read_bytes(GUEST_BASE + 0x600000, 31)
    say(f"what the hypervisor reads at the guest's shared page (C = 0): {shared!r}")
    say(f"DRAM holds the secret in plaintext: {'yes' if m.bus.ram.buf.find(secret[:8], 0, m.bus.ram.size) >= 0 else 'no'}")
    ok = result.reason.startswith("isa-debug-exit: guest wrote 0x0") and launch.verified
    say(f"{'PASS' if ok else 'FAIL'}: {result.reason}; exits {result.exits}")
    return 0 if ok else 1


def _demo_sev_es(kernel, append: str, trace) -> int:
    """Issue 9, item 8: launch an SEV-ES guest (its VMSA measured by the
    AMD-SP), let it print through the GHCB, then show the guest's registers
    as the hypervisor reads them in the VMSA page (ciphertext) beside the
    values the CPU runs the guest with (the VMSA under the guest's key)."""
    from .machine import Machine
    from .sev.api import PAGE_SIZE
    from .svm.vmsa import VmsaView
    from .vmm import Vmm
    from .vmm.sev_es import launch_es
    say = lambda text: print(f"svmsim demo: {text}", file=sys.stderr)   # noqa: E731
    m = Machine(mem_size="128M", serial_out=sys.stdout.buffer)
    if trace:
        from .trace import Tracer
        m.symbols.load_elf(str(kernel))
        m.listeners.append(Tracer(m, sys.stderr, trace))
    vmm = Vmm(m)
    launch = launch_es(vmm, str(kernel), append)
    say(f"AMD-SP: LAUNCH_START, LAUNCH_UPDATE_DATA (the kernel), LAUNCH_UPDATE_VMSA (vCPU 0), "
        f"LAUNCH_MEASURE, LAUNCH_FINISH, ACTIVATE handle {launch.handle} on ASID {launch.asid}")
    say(f"launch measurement {launch.measurement[:32].hex()} (mnonce {launch.measurement[32:].hex()})")
    say(f"guest owner checks it against the kernel and VMSA it expects: "
        f"{'verified' if launch.verified else 'WRONG'}")
    result = vmm.run()
    sys.stdout.flush()
    spa = launch.vmsa_spas[0]
    raw = VmsaView(bytearray(m.bus.read_bytes(spa, PAGE_SIZE)))
    own = VmsaView(bytearray(m.mem_engine.read(m.bus.read_bytes, spa, PAGE_SIZE, vmm.asid)))
    say(f"the guest's registers at its last exit, in its VMSA page at {spa:#x}:")
    say(f"  {'register':8} {'the hypervisor reads':>20}   {'the guest runs with':>20}")
    for name in ("RIP", "RSP", "RAX", "RBX", "CR3", "CR0", "EFER"):
        say(f"  {name:8} {raw[name]:#20x}   {own[name]:#20x}")
    say(f"GHCB requests the hypervisor answered: "
        f"{', '.join(f'{k} {v}' for k, v in result.ghcb.items())}")
    ok = (result.reason == "isa-debug-exit: guest wrote 0x0" and launch.verified
          and raw["RIP"] != own["RIP"])
    say(f"{'PASS' if ok else 'FAIL'}: {result.reason}; exits {result.exits}")
    return 0 if ok else 1


def _demo_snp(kernel: str, timeout) -> int:
    """Issue 10, item 10: an SEV-SNP guest validates its memory, asks the
    AMD-SP for an attestation report with its own REPORT_DATA; svmsim prints
    the report's fields and verifies it as a relying party would
    (svmsim/vmm/snp_demo.py)."""
    from .machine import Machine
    from .vmm import snp_demo
    say = lambda text: print(f"svmsim demo: {text}", file=sys.stderr, flush=True)   # noqa: E731
    m = Machine(mem_size=snp_demo.MACHINE_MEM, serial_out=sys.stdout.buffer)
    result = snp_demo.run(kernel, m, say, timeout=timeout)
    sys.stdout.flush()
    ok = result.ok and result.reason.startswith("isa-debug-exit: guest wrote 0x0")
    say(f"{'PASS' if ok else 'FAIL'}: the guest's report carries the launch digest and its own data, "
        f"and its signature chain verifies" if ok else
        f"FAIL: {result.reason}; a check failed or the guest handed out no report")
    return 0 if ok else 1


def _demo_attacks(kernel: str) -> int:
    """Issue 10, item 9: every attack of the gallery against SEV, SEV-ES and
    SEV-SNP; PASS when each gets what the literature reports on SEV/SEV-ES
    (SEV-ES's VMSA integrity excepted) and each is stopped on SEV-SNP."""
    from .vmm import attacks
    expected_ok = True
    for i, attack in enumerate(attacks.ATTACKS, 1):
        print(f"[{i}] {attacks.TITLES[attack]}")
        for outcome in attacks.gallery(kernel, attacks=(attack,)):
            print(f"    {outcome.line()}")
            for step in outcome.steps:
                print(f"             - {step}")
            should = outcome.mode != "snp" and not (attack == "vmsa" and outcome.mode == "seves")
            expected_ok &= outcome.achieved == should
        sys.stdout.flush()
    verdict = "PASS" if expected_ok else "FAIL"
    print(f"svmsim demo: {verdict}: every attack worked against SEV and SEV-ES (but the VMSA's, which "
          f"SEV-ES integrity-checks) and every one was stopped on SEV-SNP" if expected_ok else
          f"svmsim demo: {verdict}: an attack did not end as the manual says it should", file=sys.stderr)
    return 0 if expected_ok else 1


def _report(m, result, full=False) -> None:
    from .debug.report import run_report
    text = run_report(m, result, full)
    if text:
        print(text, file=sys.stderr)


def format_svm_summary(svm: dict) -> str:
    """The exit summary every run that used SVM ends with (issue 3, item 10)."""
    total = sum(svm["exits"].values())
    lines = [f"svmsim: SVM: {svm['vmruns']} VMRUN, {total} #VMEXIT"]
    for name, n in svm["exits"].items():
        code = svm["exit_codes"][name]
        shown = "-1" if code == -1 or code == (1 << 64) - 1 else f"{code:#05x}"
        lines.append(f"svmsim:   {shown:>5} {name}: {n}")
    for r in svm["invalid"]:
        lines.append(f"svmsim:   VMEXIT_INVALID [{r['rule']}]: {r['message']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
