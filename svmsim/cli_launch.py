"""``svmsim launch``: the guest owner's check of a confidential firmware launch
(issue 9, item 6; SEV-SNP: issue 10, item 7).

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


def _digest(text, size=32):
    if text is None:
        return None
    try:
        digest = bytes.fromhex(text.strip())
    except ValueError:
        digest = b""
    if len(digest) != size:
        kind = "SHA-384" if size == 48 else "SHA-256"
        raise ConfigError(f"--expected-digest must be {2 * size} hex digits (a {kind} launch digest), "
                          f"got {text!r}")
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
    mode, vcpu = launch_mode(args.mode), vcpu_type(args.vcpu_type)
    expected = _digest(args.expected_digest, 48 if mode.snp else 32)
    if not 1 <= args.vcpus <= KVM_MAX_VCPUS:
        raise ConfigError(f"--vcpus must be between 1 and {KVM_MAX_VCPUS}")
    for option in ("guest_features", "attestation_out"):
        if getattr(args, option, None) is not None and not mode.snp:
            raise ConfigError(f"--{option.replace('_', '-')} is for --mode snp")
    image = OvmfImage.from_file(args.ovmf)
    if mode.snp:
        return _launch_snp(args, image, vcpu, expected)
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


def _launch_snp(args, image, vcpu, expected) -> int:
    """The SEV-SNP launch; the digest comes from the guest's attestation report,
    whose signature is checked against the VCEK certificate the VMM handed
    over and that certificate against svmsim's (simulated) ARK and ASK."""
    import os
    from .machine import Machine
    from .sev import snp_certs, snp_report
    from .vmm import Vmm
    from .vmm.ovmf import SECTION_NAMES
    from .vmm.snp_launch import DEFAULT_FEATURES, SnpFirmwareLauncher, host_ram_needed
    from .vmm.vcpu_reset import BSP_RESET_EIP
    from .vmm.vmm import GuestExit
    features = DEFAULT_FEATURES if args.guest_features is None else args.guest_features
    machine = Machine(mem_size=host_ram_needed(image.size, args.vcpus, Vmm.GUEST_MEM))
    launcher = SnpFirmwareLauncher(Vmm(machine), image, args.vcpus, args.vcpu_type, args.policy, features)
    nonce = os.urandom(64)
    try:
        r = launcher.run()
        report = launcher.attest(nonce)
    except GuestExit as e:
        print(f"svmsim: launch failed: {e}", file=sys.stderr)
        return 1
    print(f"svmsim launch: {args.ovmf} ({image.size >> 10} KiB) at gPA {image.gpa:#x}-{image.gpa + image.size - 1:#x} "
          f"as an SEV-SNP guest, policy {r.policy:#x}, guest features {r.guest_features:#x}")
    print(f"svmsim launch: {r.vcpus} vCPU{'s' if r.vcpus > 1 else ''} {vcpu.name} (signature {vcpu.signature:#x}): "
          f"BSP at {BSP_RESET_EIP:#x}" + (f", APs at {r.ap_eip:#x} (SEV-ES reset block)" if r.vcpus > 1 else ""))
    print("svmsim launch: OVMF metadata: " + ", ".join(
        f"{SECTION_NAMES[k]} {gpa:#x} ({size >> 10} KiB)" for gpa, size, k in r.sections))
    print(f"AMD-SP: {_commands(launcher.psp.log)}")
    fields = snp_report.parse(report)
    print(f"attestation report: version {fields['version']}, VMPL {fields['vmpl']}, policy {fields['policy']:#x}, "
          f"reported TCB {snp_report.tcb_str(fields['reported_tcb'])}, report data = the guest owner's nonce: "
          f"{'yes' if fields['report_data'] == nonce else 'NO'}")
    print(f"measurement: {fields['measurement'].hex()}")
    vcek = launcher.vcek_from_certs()
    signed = snp_report.verify(report, vcek.public_key())
    chained = _chain_ok(vcek)
    print(f"report signature: {'verified' if signed else 'NOT verified'} with the VCEK certificate from the "
          f"VMM; VCEK -> ASK -> ARK chain: {'verified' if chained else 'NOT verified'} "
          "(svmsim's simulated root, not AMD's)")
    if args.attestation_out:
        _save(args.attestation_out, report, vcek, snp_certs)
    if expected is None:
        print("guest owner: no --expected-digest given, nothing verified (compute one with e.g. "
              f"`sev-snp-measure --mode snp --vcpus {r.vcpus} --vcpu-type {vcpu.name} "
              f"--guest-features {r.guest_features:#x} --ovmf {args.ovmf}`)")
        return 1
    if fields["measurement"] != expected or not (signed and chained and fields["report_data"] == nonce):
        print(f"guest owner: launch digest {expected.hex()} NOT verified")
        return 1
    print(f"guest owner: launch digest {expected.hex()} verified (the signed report's MEASUREMENT)")
    return 0


def _chain_ok(vcek) -> bool:
    from .sev.snp_certs import root_chain
    from .sev.snp_verify import chain_ok
    ark, ask = root_chain()
    return chain_ok(vcek, ask) and chain_ok(ask, ark) and chain_ok(ark, ark)


def _save(folder, report, vcek, snp_certs) -> None:
    import os
    os.makedirs(folder, exist_ok=True)
    ark, ask = snp_certs.root_chain()
    with open(os.path.join(folder, "report.bin"), "wb") as f:
        f.write(report)
    for name, cert in (("vcek.pem", vcek), ("ask.pem", ask), ("ark.pem", ark)):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(snp_certs.pem(cert))
    print(f"attestation: report.bin, vcek.pem, ask.pem, ark.pem written to {folder}")
