"""``svmsim-qemu``: svmsim behind the command line of ``qemu-system-x86_64``.

Tools written for QEMU start it with QEMU's options; kvm-unit-tests' runner
(``x86/run``, ``scripts/arch-run.bash``) is the main one::

    QEMU=svmsim-qemu ACCEL=tcg ./run_tests.sh -g svm

It probes the binary (``--help`` must name QEMU, ``-h`` gives the version,
``-device '?'`` lists the test devices, a missing ``-kernel`` must say
"could not load kernel", ``-smp`` beyond the maximum says "SMP CPUs"), then
boots each test with a line such as::

    svmsim-qemu --no-reboot -nodefaults -global kvm-pit.lost_tick_policy=discard
        -device pc-testdev -device isa-debug-exit,iobase=0xf4,iosize=0x4
        -display none -serial stdio -machine accel=tcg -kernel x86/svm.flat
        -smp 2 -append "..." -cpu max,+svm,-npt -m 4g -initrd ENVFILE

Every option QEMU would accept for such a boot is honoured or, where it only
tunes QEMU itself (``-global`` of a device svmsim does not have, ``-overcommit``,
``-name``), accepted and ignored as QEMU TCG ignores it.  Anything else is a
one-line error and status 1, as QEMU gives.  A run prints the guest's COM1 on
stdout and nothing on stderr unless something went wrong (the runner treats
other stderr text as a QEMU failure); svmsim's notes appear as warnings.

Exit status as QEMU's: ``(V << 1) | 1`` after the guest writes V to
isa-debug-exit; 0 after a shutdown or a reset (as ``-no-reboot``); a run that
can never go on (every CPU halted for good, a feature svmsim does not model,
an internal error) ends at once with svmsim's status and reason on stderr,
where QEMU would hang until the runner's timeout.
"""
import os
import sys
from importlib import metadata

from .errors import SvmsimError


def _svmsim_version() -> str:
    try:
        return metadata.version("svmsim")
    except metadata.PackageNotFoundError:
        return "(not installed)"


QEMU_VERSION = "7.2.0"          # the QEMU whose PC and -kernel boot svmsim reproduces
BANNER = f"QEMU emulator version {QEMU_VERSION} (svmsim {_svmsim_version()}: qemu-system-x86_64 command line)"
MAX_CPUS = 64
# -device NAME: (bus, what svmsim does with it)
DEVICES = {
    "isa-debug-exit": ("ISA", "always present at iobase=0xf4, iosize=4"),
    "pc-testdev": ("ISA", "QEMU's x86 test device (svmsim.devices.pc_testdev)"),
    "edu": ("PCI", "QEMU's educational PCI device with DMA (svmsim.devices.edu)"),
}
# Options that take an argument; the rest are flags.  Both -opt and --opt work.
_WITH_ARG = {"machine", "M", "accel", "cpu", "smp", "m", "kernel", "append", "initrd",
             "serial", "display", "device", "global", "overcommit", "name", "vga", "monitor",
             "uuid"}
_FLAGS = {"nodefaults", "no-reboot", "nographic", "no-hpet", "enable-kvm", "h", "help",
          "version", "no-user-config", "S"}

USAGE = f"""{BANNER}
usage: svmsim-qemu [options]

svmsim (an AMD64 + SVM + SEV machine simulator) with the options of
qemu-system-x86_64 that boot a kernel:

-kernel FILE      Multiboot kernel (as QEMU's -kernel)
-append ARGS      kernel command line
-initrd 'F [ARGS],F2'  Multiboot modules
-m SIZE           RAM (128M, 4G, size=4G)
-smp N            CPUs (N, cpus=N,...), at most {MAX_CPUS}
-cpu MODEL[,+feat,-feat,feat=on|off]  CPU model (EPYC, EPYC-Milan, EPYC-Genoa,
                  qemu64, max) and features, QEMU or svmsim names
-machine accel=tcg / -accel tcg   accepted (svmsim is its own accelerator)
-serial stdio|file:PATH|null|none   COM1 (default with -nographic: stdio)
-device pc-testdev | edu | isa-debug-exit,iobase=0xf4,iosize=4 | help
-display none, -nographic, -nodefaults, -no-reboot, -global, -overcommit,
-name, -vga none   accepted

Environment: SVMSIM_FORCE_EMULATION_PREFIX=1 turns on KVM's forced-emulation
prefix (ud2; .ascii "kvm"), as kvm.force_emulation_prefix=1 does on KVM
(same as -cpu ...,+force-emulation-prefix; off by default: #UD as on hardware)
"""


class QemuUsageError(SvmsimError):
    """A command line svmsim-qemu cannot honour (printed as QEMU prints errors)."""


def parse(argv):
    """QEMU's argv -> dict of option -> value (lists for repeatable ones)."""
    opts = {"device": [], "global": []}
    it = iter(argv)
    for arg in it:
        if not arg.startswith("-") or arg in ("-", "--"):
            raise QemuUsageError(f"{arg}: invalid option (svmsim-qemu takes the kernel with -kernel)")
        name = arg.lstrip("-")
        if name in _WITH_ARG:
            try:
                value = next(it)
            except StopIteration:
                raise QemuUsageError(f"-{name}: requires an argument") from None
            key = "machine" if name == "M" else name
            if key in ("device", "global"):
                opts[key].append(value)
            else:
                opts[key] = value
        elif name in _FLAGS:
            opts[name] = True
        else:
            raise QemuUsageError(f"-{name}: option not supported by svmsim-qemu (see --help)")
    return opts


def _props(text):
    """'a,b=c,d' -> ('a', {'b': 'c', 'd': ''}): a QEMU option value."""
    first, *rest = text.split(",")
    return first, dict((p.partition("=")[0], p.partition("=")[2]) for p in rest if p)


def _implied(text, key, default):
    """(value, props) of an option whose first part is its implied ``key``
    ('1' or 'cpus=1,...' for -smp); ``default`` when ``key=`` is not given."""
    first, props = _props(text)
    if "=" in first:
        k, _, value = first.partition("=")
        props[k] = value
        first = props.get(key, default)
    return first, props


def _memory(text):
    return _implied(text, "size", "")[0] or "128M"


def _smp(text):
    first = _implied(text, "cpus", "1")[0]
    try:
        n = int(first, 0)
    except ValueError:
        raise QemuUsageError(f"Parameter 'smp.cpus' expects a number, not {first!r}") from None
    if not 1 <= n <= MAX_CPUS:
        raise QemuUsageError(f"Invalid SMP CPUs {n}. The max CPUs supported by machine 'pc' is {MAX_CPUS}")
    return n


def _accel(opts):
    """-machine accel=X / -accel X / -enable-kvm: only TCG (svmsim itself)."""
    accel = "tcg"
    if "machine" in opts:
        mtype, props = _implied(opts["machine"], "type", "pc")
        if mtype not in ("pc", "") and not mtype.startswith("pc-i440fx"):
            raise QemuUsageError(f"machine type {mtype!r} not supported: svmsim models QEMU's 'pc'")
        accel = props.get("accel", accel)
    accel = _props(opts["accel"])[0] if "accel" in opts else accel
    if opts.get("enable-kvm") or accel.split(":")[0] != "tcg":
        raise QemuUsageError(f"accelerator {accel!r} not available: svmsim simulates the CPU "
                             f"(use accel=tcg, e.g. ACCEL=tcg for kvm-unit-tests)")


def _devices(opts):
    """-device list -> optional device names for MachineConfig."""
    out = []
    for text in opts["device"]:
        name, props = _props(text)
        if name == "isa-debug-exit":
            base, size = int(props.get("iobase", "0x501"), 0), int(props.get("iosize", "1"), 0)
            if base != 0xF4 or size > 4:
                raise QemuUsageError(f"-device {text}: svmsim's isa-debug-exit is fixed at iobase=0xf4,iosize=4")
        elif name in DEVICES:
            out.append(name)
        else:
            raise QemuUsageError(f"-device {name!r}: device not supported by svmsim "
                                 f"(supported: {', '.join(sorted(DEVICES))})")
    return tuple(out)


def _serial(opts):
    """-serial -> (binary output file, input file or None)."""
    spec = opts.get("serial", "stdio" if opts.get("nographic") else "null")
    if spec in ("stdio", "mon:stdio"):
        return sys.stdout.buffer, None
    if spec in ("null", "none"):
        return open("/dev/null", "wb"), None
    if spec.startswith("file:"):
        try:
            return open(spec[5:], "wb"), None
        except OSError as e:
            raise QemuUsageError(f"could not open serial file {spec[5:]!r}: {e.strerror}") from None
    raise QemuUsageError(f"-serial {spec}: not supported (stdio, file:PATH, null, none)")


def _modules(text):
    """-initrd 'file args,file2' -> [(path, args)] (',,' is a literal comma)."""
    parts = text.replace(",,", "\0").split(",")
    out = []
    for part in parts:
        path, _, args = part.replace("\0", ",").partition(" ")
        out.append((path, args))
    return out


FEP_ENV = "SVMSIM_FORCE_EMULATION_PREFIX"


def _fep_from_env() -> bool:
    """``SVMSIM_FORCE_EMULATION_PREFIX=1``: KVM's forced-emulation prefix on,
    whatever ``-cpu`` says -- the counterpart of KVM's module parameter
    ``kvm.force_emulation_prefix=1``, which kvm-unit-tests' runner cannot
    pass either (its stanzas' -cpu lines do not name it)."""
    value = os.environ.get(FEP_ENV, "").strip().lower()
    if value in ("", "0", "n", "no", "off", "false"):
        return False
    if value in ("1", "y", "yes", "on", "true"):
        return True
    raise QemuUsageError(f"{FEP_ENV}={value!r}: use 1 (on) or 0 (off)")


def _warn(text):
    print(f"svmsim-qemu: warning: {text}", file=sys.stderr)


def build(opts):
    """The Machine an option dict describes, with its kernel loaded."""
    from .machine import Machine, MachineConfig
    from .cpu import profiles
    _accel(opts)
    smp = _smp(opts["smp"]) if "smp" in opts else 1
    kernel = opts.get("kernel")
    if kernel is None:
        raise QemuUsageError("no -kernel given: svmsim-qemu boots a kernel (there is no firmware disk boot)")
    profile = profiles.get(opts.get("cpu", "epyc"), warn=_warn)
    if _fep_from_env():
        profile = profiles.with_fep(profile)
    out, inp = _serial(opts)
    cfg = MachineConfig(mem_size=_memory(opts.get("m", "128M")), smp=smp, cpu=profile,
                        serial_out=out, serial_in=inp, devices=_devices(opts))
    m = Machine(cfg)
    try:
        m.load_kernel(kernel, opts.get("append", ""), _modules(opts["initrd"]) if "initrd" in opts else [])
    except SvmsimError as e:
        raise QemuUsageError(f"could not load kernel '{kernel}': {e}") from None
    return m


def run(opts) -> int:
    m = build(opts)
    result = m.run()
    sys.stdout.flush()
    for note in m.notes:
        _warn(note)
    if result.kind == "debug-exit":
        return result.status
    if result.kind == "interrupted":         # Machine.run pauses on SIGINT instead of raising
        print("svmsim-qemu: terminating on signal 2", file=sys.stderr)
        return 130
    print(f"svmsim-qemu: {result.reason}", file=sys.stderr)
    if result.kind in ("shutdown", "reset"):
        return 0                       # QEMU -no-reboot: the process ends with 0
    return result.status


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse(argv)
        if opts.get("h") or opts.get("help"):
            print(USAGE, end="")
            return 0
        if opts.get("version"):
            print(BANNER)
            return 0
        if any(d in ("?", "help") for d in opts["device"]):
            for name, (bus, what) in DEVICES.items():
                print(f'name "{name}", bus {bus}, desc "{what}"')
            return 0
        return run(opts)
    except SvmsimError as e:
        print(f"svmsim-qemu: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("svmsim-qemu: terminating on signal 2", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
