"""``svmsim demo sev-snp`` (issue 10 item 10): the bare-metal SEV-SNP guest
tests/guests/snp_attest.c, launched from its Multiboot file through the
AMD-SP by the reference VMM (``snp_ghcb.launch_snp``), accepts its memory,
asks for an attestation report with its own REPORT_DATA and hands the
report out in a page it shares.  svmsim then plays the relying party: it
prints the report's fields, compares MEASUREMENT with the launch digest the
firmware chained and REPORT_DATA with what the guest chose, and verifies
the signature chain with the certificates that came with the extended
report (the VMM's table: svmsim's simulated ARK -> ASK -> VCEK), by its own
checks and, where ``openssl`` is installed, by openssl's.
"""
from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from ..sev import snp_report, snp_verify
from .snp_ghcb import SnpKernelRun, launch_snp
from .vmm import GUEST_BASE, Vmm

GUEST_MEM = 8 << 20
MACHINE_MEM = "64M"
OUTBOX_SYMBOL = "outbox"
OUTBOX_MAGIC = 0x54524F50504E53          # "SNPPORT"
#: The REPORT_DATA snp_attest.c asks for.
REPORT_DATA = b"svmsim snp_attest: my own report data".ljust(48, b"\0") + bytes(i * 7 & 0xFF for i in range(48, 64))


@dataclass
class DemoResult:
    snp: SnpKernelRun
    reason: str
    report: bytes = b""
    certs: bytes = b""                             # the certificate table that came with it
    checks: list = field(default_factory=list)     # (what, passed)

    @property
    def ok(self) -> bool:
        return bool(self.report) and bool(self.checks) and all(ok for _, ok in self.checks)


def outbox_gpa(kernel: str) -> int:
    with open(kernel, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        for s in symtab.iter_symbols():
            if s.name == OUTBOX_SYMBOL:
                return s.entry.st_value
    raise LookupError(f"{kernel}: no symbol {OUTBOX_SYMBOL!r}")


def handed_out(run: SnpKernelRun, gpa: int) -> tuple[bytes, bytes]:
    """The report and the certificate table the guest left in its shared
    pages ({magic, report length, certificates gPA, their length, report}):
    plaintext in DRAM, carried by the hypervisor, protected by the
    signature; (b"", b"") if there is none."""
    bus, mem = run.launcher.vmm.m.bus, run.launcher.vmm.guest_mem
    magic, length, certs_gpa, certs_len = struct.unpack("<QQQQ", bus.read_bytes(GUEST_BASE + gpa, 32))
    if magic != OUTBOX_MAGIC or length != snp_report.REPORT_LEN or certs_gpa + certs_len > mem:
        return b"", b""
    return (bus.read_bytes(GUEST_BASE + gpa + 32, length),
            bus.read_bytes(GUEST_BASE + certs_gpa, certs_len))


def field_lines(report: bytes) -> list:
    out = []
    for name, value in snp_report.parse(report).items():
        if name == "signature":
            value = f"R {value[:72].rstrip(bytes(1)).hex()[:32]}... S {value[72:144].rstrip(bytes(1)).hex()[:32]}..."
        elif isinstance(value, bytes):
            value = value.hex()
        else:
            value = f"{value:#x}"
        out.append(f"{name:18} {value}")
    return out


def run(kernel: str, machine, say=print, timeout: float | None = None) -> DemoResult:
    """Launch, run and check; ``say`` gets svmsim's lines (the guest's go to
    the machine's serial output)."""
    vmm = Vmm(machine, guest_mem=GUEST_MEM)
    snp = launch_snp(vmm, kernel)
    updates = sum(1 for name, _ in snp.launcher.psp.log if name == "SNP_LAUNCH_UPDATE")
    say(f"AMD-SP: SNP_LAUNCH_START, {updates} x SNP_LAUNCH_UPDATE (image, CPUID page, secrets page, "
        f"VMSA), SNP_LAUNCH_FINISH; ASID {snp.launcher.asid}, policy {snp.launcher.policy:#x}")
    say(f"launch digest (the firmware's, chained page by page): {snp.launch_digest.hex()}")
    result = vmm.run(timeout=timeout)
    out = DemoResult(snp, result.reason)
    say(f"guest run ended: {result.reason}; GHCB requests {result.ghcb}")
    out.report, out.certs = handed_out(snp, outbox_gpa(kernel))
    if not out.report:
        say("the guest handed out no report")
        return out
    say("the report the guest handed out (SNP ABI ATTESTATION_REPORT):")
    for line in field_lines(out.report):
        say(f"  {line}")
    fields = snp_report.parse(out.report)
    out.checks.append(("MEASUREMENT is the launch digest", fields["measurement"] == snp.launch_digest))
    out.checks.append(("REPORT_DATA is what the guest asked for", fields["report_data"] == REPORT_DATA))
    out.checks.extend(snp_verify.verify(out.report, out.certs).checks)
    if shutil.which("openssl"):
        seen = {what for what, _ in out.checks}
        out.checks.extend(c for c in snp_verify.openssl_verify(out.report, out.certs).checks
                          if c[0] not in seen)
    else:
        say("openssl is not installed: svmsim's own checks only")
    say("the relying party's checks:")
    for what, ok in out.checks:
        say(f"  {'ok    ' if ok else 'FAILED'} {what}")
    return out
