"""``svmsim launch``: the guest owner's check of a confidential firmware launch
(issue 9, item 6).

The reference VMM launches a firmware image as QEMU does for an SEV or SEV-ES
guest (``svmsim.vmm.firmware_launch``); the guest owner, who made the launch
session and so holds its TIK, checks LAUNCH_MEASURE's MEASURE against the
launch digest it expects, e.g. from ``sev-snp-measure``.  Exit status: 0 when
the measurement verifies, 1 when it does not (or there is nothing to verify
against), 2 for a user mistake.
"""
import sys

from .errors import ConfigError

KVM_MAX_VCPUS = 1024


def _digest(text):
    if text is None:
        return None
    try:
        digest = bytes.fromhex(text.strip())
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ConfigError(f"--expected-digest must be 64 hex digits (a SHA-256 launch digest), got {text!r}")
    return digest


def _commands(log) -> str:
    """The AMD-SP commands in order, repeats folded: 'LAUNCH_UPDATE_VMSA x4'."""
    out = []
    for name, _ in log:
        if out and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1])
    return ", ".join(n if k == 1 else f"{n} x{k}" for n, k in out)


def cmd_launch(args) -> int:
    from .machine import Machine
    from .vmm import Vmm
    from .vmm.firmware_launch import FirmwareLauncher, host_ram_needed, launch_mode
    from .vmm.ovmf import OvmfImage
    from .vmm.vcpu_reset import BSP_RESET_EIP, vcpu_type
    from .vmm.vmm import GuestExit
    expected = _digest(args.expected_digest)
    mode, vcpu = launch_mode(args.mode), vcpu_type(args.vcpu_type)
    if not 1 <= args.vcpus <= KVM_MAX_VCPUS:
        raise ConfigError(f"--vcpus must be between 1 and {KVM_MAX_VCPUS}")
    image = OvmfImage.from_file(args.ovmf)
    machine = Machine(mem_size=host_ram_needed(image.size, args.vcpus))
    launcher = FirmwareLauncher(Vmm(machine), image, args.mode, args.vcpus,
                                args.vcpu_type, policy=args.policy)
    try:
        r = launcher.run()
    except GuestExit as e:
        print(f"svmsim: launch failed: {e}", file=sys.stderr)
        return 1
    print(f"svmsim launch: {args.ovmf} ({image.size >> 10} KiB) at gPA {image.gpa:#x}-{image.gpa + image.size - 1:#x} "
        f"as an {mode.title} guest, policy {r.policy:#x}")
    if mode.es:
        print(f"svmsim launch: {r.vcpus} vCPU{'s' if r.vcpus > 1 else ''} {vcpu.name} (signature {vcpu.signature:#x}): "
            f"BSP at {BSP_RESET_EIP:#x}" + (f", APs at {r.ap_eip:#x} (SEV-ES reset block)" if r.vcpus > 1 else ""))
    print(f"AMD-SP: {_commands(launcher.psp.log)}")
    print(f"AMD-SP: API {r.api[0]}.{r.api[1]} build {r.api[2]}, guest handle {r.handle}")
    print(f"measurement: {r.measurement.hex()}")
    print(f"mnonce:      {r.mnonce.hex()}")
    if expected is None:
        print("guest owner: no --expected-digest given, nothing verified (compute one with e.g. "
            f"`sev-snp-measure --mode {mode.name} --vcpus {r.vcpus} --vcpu-type {vcpu.name} --ovmf {args.ovmf}`)")
        return 1
    if not launcher.verify(expected):
        print(f"guest owner: launch digest {expected.hex()} NOT verified: MEASURE is not "
            "HMAC(TIK, 04h || API || build || policy || digest || MNONCE) for this digest")
        return 1
    launcher.finish()
    print(f"guest owner: launch digest {expected.hex()} verified "
        "(MEASURE = HMAC-SHA256(TIK, 04h || API || build || policy || digest || MNONCE)); LAUNCH_FINISH")
    return 0
