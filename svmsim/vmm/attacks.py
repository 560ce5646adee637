"""The malicious-hypervisor gallery (issue 10 item 9; ``svmsim demo attacks``).

One guest, ``tests/guests/attack_target.S``, launched through the AMD-SP by
the reference VMM as an SEV, SEV-ES or SEV-SNP guest, and a hypervisor that
turns against it.  The hypervisor does what the published attacks on SEV do,
with its own instructions (``hostcode``), its nested page tables, RMPUPDATE,
DMA, its VMCB and what it answers the guest:

* remap: swap the nested mappings of two private pages, so the guest hands
  out its secret page when asked for its public one (SEVered, Morbitzer et
  al., EuroSec 2018);
* replay: write the old ciphertext of the guest's PIN-attempts counter back
  after every wrong guess (Li et al., "CROSSLINE", and the replay attacks
  AMD's SEV-SNP white paper lists);
* inject: have the guest encrypt attacker-chosen bytes (a "network packet")
  and map that page where the guest runs its plugin (SEVerity, Morbitzer et
  al., 2021);
* page state: take a private page from the guest and give it back changed
  (SEV: overwrite it; SEV-SNP: RMPUPDATE to the hypervisor and back);
* VMSA: read the guest's registers at an exit and move its RIP to the code
  that reveals its secret (plain SEV keeps them in the VMCB);
* CPUID: tell the guest a false C-bit position, so its "private" mappings
  are shared (the hypervisor answers CPUID for SEV and SEV-ES guests).

Against SEV (and SEV-ES, except for the VMSA) each attack gets what the
literature reports.  Against SEV-SNP each is stopped where the manual says:
#VMEXIT(NPF) with the RMP bits (table 15-37), #PF with the RMP bit for a host
write, a blocked DMA write, #VC(404h) in the guest for a page no longer
validated (15.36.6), VMEXIT_INVALID naming the VMSA rule (table 15-39),
and the firmware's CPUID-page check (INVALID_PARAM).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from ..cpu.cpuid import cpuid
from ..memory.dma import DmaPort
from ..sev.api import SevPolicy
from ..sev.crypto import GuestOwner
from ..svm.exits import ExitCode, exit_name, from_vmcb
from ..svm.vmsa import GPR_NAMES
from .hostcode import HostCode
from .sev_launch import launch_sev
from .snp_kernel import SnpKernelLauncher, nested_table, loaded_regions, map_4k, vmsa_from_vmcb
from .snp_launch import cpuid_table
from .vcpu_reset import vcpu_type
from .vmm import GUEST_BASE, HOST_STUB, QUANTUM, Vmm

MODES = {"sev": "SEV", "seves": "SEV-ES", "snp": "SEV-SNP"}
GUEST_MEM = 8 << 20
MACHINE_MEM = "64M"
MAILBOX = 0x600000
REQ, STATUS, ARG, OUT, FAULT = (MAILBOX + o for o in (0, 4, 0x10, 0x100, 0x800))
PUBLIC, PIN, RECEIVE, PLUGIN, KEY = 1, 2, 3, 4, 5
FAULT_MAGIC = 0x544C4146                   # "FALT"
GHCB_CPUID_REQ, GHCB_CPUID_RESP = 0x004, 0x005
CBIT_LIE = 42                              # an address bit below the reduced width (43)
RBP = GPR_NAMES.index("RBP")
STEP_BUDGET = 2_000_000


class GuestStopped(Exception):
    """The guest stopped serving: what the processor, the firmware or the
    guest said, in words and as ``facts`` (exit code and EXITINFOs, the rule
    of a VMEXIT_INVALID, or the guest's own fault record)."""

    def __init__(self, text: str, **facts):
        super().__init__(text)
        self.facts = facts


@dataclass
class Outcome:
    attack: str
    mode: str
    achieved: bool               # the hypervisor got what it was after
    what: str                    # what happened, one or two sentences
    steps: list = field(default_factory=list)   # what the hypervisor did and saw
    stop: dict = field(default_factory=dict)    # GuestStopped.facts when the guest stopped

    def line(self) -> str:
        verdict = "ACHIEVED" if self.achieved else "STOPPED"
        return f"{MODES[self.mode]:8} {verdict:9} {self.what}"


class Hypervisor:
    """The reference VMM with the tools of a malicious hypervisor, running
    ``kernel`` as a guest of ``mode`` (sev, seves, snp)."""

    def __init__(self, kernel: str, mode: str, cbit_lie: int | None = None):
        from ..machine import Machine
        self.mode, self.kernel, self.cbit_lie = mode, kernel, cbit_lie
        self.m = Machine(mem_size=MACHINE_MEM)
        self.vmm = vmm = Vmm(self.m, guest_mem=GUEST_MEM, asid=5 if mode == "sev" else 1)
        self.symbols = _symbols(kernel)
        self.es = mode != "sev"
        self.gprs = [0] * 16
        self.cpuid_refused = ""           # SNP: what the firmware corrected in the CPUID page
        if mode == "snp":
            self._launch_snp()
        else:
            self._launch_sev()
        self.host = HostCode(vmm)
        if cbit_lie is not None and mode != "snp":
            self._alias_guest_ram(cbit_lie)

    # ---------------------------------------------------------------- launch
    def _launch_sev(self):
        vmm = self.vmm
        info = vmm.load_kernel(self.kernel)
        map_4k(vmm)
        self.gprs = [0] * 16
        self.gprs[3] = info.regs.get("ebx", 0)
        policy = SevPolicy.NODBG | (SevPolicy.ES if self.es else 0)
        vmsas = []
        if self.es:
            vmsa = GUEST_BASE + vmm.guest_mem                  # host RAM after the guest's
            self.m.bus.write_bytes(vmsa, vmsa_from_vmcb(vmm.vmcb, {"rbx": self.gprs[3]},
                                                        vcpu_type("EPYC-v4").signature))
            vmsas.append(vmsa)
        launch = launch_sev(vmm, GuestOwner(policy), regions=loaded_regions(info), vmsas=vmsas)
        if not launch.verified:
            raise GuestStopped("the guest owner could not verify the launch measurement")

    def _launch_snp(self):
        launcher = SnpKernelLauncher(self.vmm, self.kernel, cpuid=self._cpuid_page,
                                     accept_corrected_cpuid=True)
        self.launcher = launcher
        self.cpuid_refused = launcher.run().cpuid_refused

    def _cpuid_page(self) -> bytes:
        """QEMU's CPUID page, with the hypervisor's lie about the C-bit if any."""
        from ..sev import snp_cpuid
        entries = []
        for e in snp_cpuid.unpack_table(cpuid_table(self.m, vcpu_type("EPYC-v4").signature)):
            eax_in, ecx_in, _, _, a, b, c, d, _ = e
            if eax_in == 0x8000001F and self.cbit_lie is not None:
                b = b & ~0x3F | self.cbit_lie
            entries.append((eax_in, ecx_in, a, b, c, d))
        return snp_cpuid.pack_table(entries)

    def _alias_guest_ram(self, bit: int):
        """Map gPA (1 << bit) + x to guest RAM x: where the guest's lied-to
        "C-bit" sends its accesses."""
        for gpa in range(0, GUEST_MEM, 1 << 21):
            self.vmm._map(self.vmm.n_cr3, (1 << bit) | gpa, GUEST_BASE + gpa, 1 << 21)

    # ---------------------------------------------------------------- running
    def boot(self) -> "Hypervisor":
        self.resume()
        return self

    def request(self, op: int, arg: bytes = b"") -> bytes:
        """One request through the mailbox; the guest's OUT (256 bytes)."""
        bus = self.m.bus
        bus.write_bytes(GUEST_BASE + ARG, arg.ljust(64, b"\0")[:64])
        bus.write_bytes(GUEST_BASE + OUT, bytes(256))
        bus.write(GUEST_BASE + REQ, 4, op)
        self.resume()
        return bus.read_bytes(GUEST_BASE + OUT, 256)

    def resume(self) -> None:
        """VMRUN until the guest is ready for a request (HLT with STATUS = 1);
        GuestStopped with the reason for anything else."""
        v, bus = self.vmm.vmcb, self.m.bus
        bus.write(GUEST_BASE + STATUS, 4, 0)
        while True:
            code = self.vmrun()
            if code == ExitCode.HLT:
                if not self.es:
                    v["RIP"] = v["NRIP"]
                if bus.read(GUEST_BASE + FAULT, 4) == FAULT_MAGIC:
                    raise self.guest_fault()
                if bus.read(GUEST_BASE + STATUS, 4) == 1:
                    return
                raise GuestStopped("the guest halted without finishing its request")
            if code == ExitCode.CPUID and not self.es:
                self._answer_cpuid()
            elif code == ExitCode.VMGEXIT:
                self._answer_ghcb_msr()
            else:
                raise self.stopped_by_exit(code)

    def vmrun(self) -> int:
        """The VMM's host stub (VMRUN) until the #VMEXIT; the exit code.  A
        plain SEV guest's GPRs stay in the CPU at #VMEXIT: the VMM keeps
        them (as KVM does) across its own host code."""
        cpu, m, vmm = self.vmm.cpu, self.m, self.vmm
        if not self.es:
            for i in (1, 2, 3, 5, 6, 7, *range(8, 16)):
                cpu.regs[i] = self.gprs[i]
        cpu.rip, cpu.halted = HOST_STUB, False
        done = 0
        while not cpu.halted and not m.stopping and done < STEP_BUDGET:
            n = m.engine.run(cpu, QUANTUM)
            done += n
            vmm._tick()
            if n == 0 and not cpu.pending:
                break
        if not cpu.halted:
            raise GuestStopped(f"the guest ran {done} instructions without an exit")
        if not self.es:
            self.gprs = list(cpu.regs)
        return from_vmcb(vmm.vmcb["EXITCODE"])

    def _cpuid_answer(self, leaf: int, sub: int) -> tuple:
        a, b, c, d = cpuid(self.vmm.cpu, leaf, sub)
        if leaf == 0x8000001F and self.cbit_lie is not None:
            b = b & ~0x3F | self.cbit_lie
        return a, b, c, d

    def _answer_cpuid(self):
        v = self.vmm.vmcb
        a, b, c, d = self._cpuid_answer(v["RAX"] & 0xFFFFFFFF, self.gprs[1] & 0xFFFFFFFF)
        v["RAX"], self.gprs[3], self.gprs[1], self.gprs[2] = a, b, c, d
        v["RIP"] = v["NRIP"]

    def _answer_ghcb_msr(self):
        """The GHCB MSR protocol's CPUID request (GHCB spec 56421, 2.3.1):
        function in 63:32, register in 31:30; the answer in 63:32."""
        v = self.vmm.vmcb
        msr = v["GHCB_GPA"]
        if msr & 0xFFF != GHCB_CPUID_REQ:
            raise GuestStopped(f"VMGEXIT with GHCB MSR {msr:#x}: not a request this VMM serves")
        value = self._cpuid_answer(msr >> 32, 0)[msr >> 30 & 3]
        v["GHCB_GPA"] = value << 32 | GHCB_CPUID_RESP

    # ---------------------------------------------------------------- what stopped it
    def guest_fault(self) -> GuestStopped:
        bus = self.m.bus
        vec, err, cr2, eip = (bus.read(GUEST_BASE + FAULT + o, 4) for o in (4, 8, 12, 16))
        name = {29: "#VC", 14: "#PF", 13: "#GP", 6: "#UD"}.get(vec, f"exception {vec}")
        why = " (PAGE_NOT_VALIDATED: the page is no longer validated)" if vec == 29 and err == 0x404 else ""
        return GuestStopped(f"the guest took {name} error code {err:#x}{why} at EIP {eip:#x}, CR2 "
                            f"{cr2:#x}, reported it in its mailbox and stopped",
                            guest_fault=(vec, err, cr2, eip))

    def stopped_by_exit(self, code: int) -> GuestStopped:
        v = self.vmm.vmcb
        info1, info2 = v["EXITINFO1"], v["EXITINFO2"]
        if code == ExitCode.INVALID:
            r = self.vmm.cpu.svm.invalid[-1]
            return GuestStopped(f"VMRUN: #VMEXIT(VMEXIT_INVALID) [{r.rule}]: {r.message}",
                                exit="INVALID", rule=r.rule)
        text = f"#VMEXIT({exit_name(code)}) EXITINFO1 {info1:#x}"
        if code == ExitCode.NPF:
            text = f"#VMEXIT(NPF) gPA {info2:#x}, EXITINFO1 {info1:#x} ({npf_bits(info1)})"
            if info1 >> 31 & 1:
                text += f"; {self.rmp_view(info2)}"
        return GuestStopped(text, exit=exit_name(code), info1=info1, info2=info2)

    def rmp_view(self, gpa: int) -> str:
        """What the RMP (readable by the hypervisor) says of the page behind ``gpa``."""
        spa = self.spa(gpa & ~0xFFF)
        e = self.m.rmp.read(spa)
        if not e.assigned:
            return f"the RMP gives page {spa:#x} to the hypervisor"
        return f"the RMP gives page {spa:#x} to {e.owner} at gPA {e.gpa:#x}"

    # ---------------------------------------------------------------- the hypervisor's tools
    def sym(self, name: str) -> int:
        return self.symbols[name]

    def spa(self, gpa: int) -> int:
        """Where the nested tables put ``gpa`` now."""
        return self.m.bus.read(self._pte(gpa), 8) & 0x000FFFFFFFFFF000

    def _pte(self, gpa: int) -> int:
        return nested_table(self.m.bus, self.vmm.n_cr3, gpa) + (gpa >> 12 & 0x1FF) * 8

    def remap(self, gpa: int, spa: int) -> None:
        """Point the nested mapping of the 4 KiB page ``gpa`` at ``spa`` (the
        nested tables are the hypervisor's own memory); flush the guest's TLB."""
        self.m.bus.write(self._pte(gpa), 8, spa | 7)
        self.vmm.vmcb["TLB_CONTROL"] = 1

    def read(self, gpa: int, n: int) -> bytes:
        """What the hypervisor reads at the guest page: DRAM, ciphertext if private."""
        return self.m.bus.read_bytes(self.spa(gpa) + (gpa & 0xFFF), n)

    def write(self, gpa: int, data: bytes):
        """Its own write to the guest page (REP MOVSB); the fault, if any."""
        return self.host.write(self.spa(gpa) + (gpa & 0xFFF), data)

    def dma_write(self, gpa: int, data: bytes) -> bool:
        """A bus-master device writes the guest page; False if the platform blocked it."""
        events = []
        listen = events.append
        self.m.listeners.append(listen)
        try:
            DmaPort(self.m, "a DMA device the hypervisor controls").write_bytes(
                self.spa(gpa) + (gpa & 0xFFF), data)
        finally:
            self.m.listeners.remove(listen)
        return not any(e["type"] == "dma_blocked" for e in events)


def npf_bits(info1: int) -> str:
    names = ((0, "P"), (1, "RW"), (2, "US"), (3, "RSV"), (4, "ID"), (31, "RMP"), (32, "final gPA"),
             (33, "guest table"), (34, "ENC"), (35, "SIZEM"), (36, "VMPL"))
    return ", ".join(n for b, n in names if info1 >> b & 1)


def _symbols(path: str) -> dict:
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: s.entry.st_value for s in symtab.iter_symbols() if s.name}


def _u32(data: bytes, at: int = 0) -> int:
    return struct.unpack_from("<I", data, at)[0]


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("ascii", "replace")


# ---------------------------------------------------------------- the attacks
def attack_remap(kernel: str, mode: str) -> Outcome:
    """Swap the nested mappings of the guest's public and secret pages, then
    ask for the public page."""
    hv = Hypervisor(kernel, mode).boot()
    pub, sec = hv.sym("public_page"), hv.sym("secret_page")
    steps = [f"PUBLIC request: {_text(hv.request(PUBLIC))!r}"]
    spa_pub, spa_sec = hv.spa(pub), hv.spa(sec)
    hv.remap(pub, spa_sec)
    hv.remap(sec, spa_pub)
    steps.append(f"nested tables: gPA {pub:#x} -> {spa_sec:#x}, gPA {sec:#x} -> {spa_pub:#x}")
    try:
        out = hv.request(PUBLIC)
    except GuestStopped as e:
        return Outcome("remap", mode, False, str(e), steps, e.facts)
    got = _text(out[16:])
    return Outcome("remap", mode, got.startswith("TOP SECRET"),
                   f"asked for its public page, the guest sent its secret page: PIN {_u32(out):#x}, "
                   f"{got!r}", steps)


def attack_replay(kernel: str, mode: str) -> Outcome:
    """Brute-force the guest's PIN, writing the attempts counter's old
    ciphertext back after every wrong guess (by the CPU, then by DMA)."""
    hv = Hypervisor(kernel, mode).boot()
    page = hv.sym("attempts_page")
    saved = hv.read(page, 16)
    steps = [f"ciphertext of the attempts counter (3 left): {saved.hex()}"]
    stop: dict = {}
    for guess in range(0x4700, 0x4800):
        out = hv.request(PIN, guess.to_bytes(4, "little"))
        if _u32(out) == 0:
            return Outcome("replay", mode, True,
                           f"guess {guess - 0x4700 + 1} ({guess:#x}) was right, and the guest still had "
                           f"{_u32(out, 4)} attempts: {_text(out[16:])!r}", steps)
        if _u32(out) == 2:
            return Outcome("replay", mode, False,
                           f"the hypervisor's replay write was {stop['host_fault']}, its DMA write "
                           f"blocked; after {guess - 0x4700} wrong guesses the guest locked itself",
                           steps, stop)
        fault = hv.write(page, saved)
        if fault and not stop:
            stop = {"host_fault": fault, "dma_landed": hv.dma_write(page, saved)}
            steps.append(f"replay by the CPU: {fault}: {fault.detail}")
            steps.append("replay by DMA: " + ("landed" if stop["dma_landed"] else
                                              "blocked (the page is not hypervisor-owned)"))
    return Outcome("replay", mode, False, "256 guesses and no answer", steps)


# 32-bit code the hypervisor sends as a "network packet": copy the secret to OUT.
def _shellcode(secret: int) -> bytes:
    return (b"\xbe" + (secret + 16).to_bytes(4, "little") + b"\xbf" + OUT.to_bytes(4, "little")
            + b"\xb9\x0c\x00\x00\x00" + b"\xf3\xa5" + b"\xc3")    # mov esi; mov edi; mov ecx, 12; rep movsd; ret


def attack_inject(kernel: str, mode: str) -> Outcome:
    """Have the guest encrypt the hypervisor's code into its receive buffer,
    then map that page where the guest's plugin lives and call the plugin."""
    hv = Hypervisor(kernel, mode).boot()
    plugin, rx = hv.sym("plugin"), hv.sym("rx_page")
    steps = [f"PLUGIN request: {_text(hv.request(PLUGIN))!r}"]
    hv.request(RECEIVE, _shellcode(hv.sym("secret_page")))
    steps.append(f"RECEIVE of a 'packet' holding code: the guest encrypted it at gPA {rx:#x}")
    hv.remap(plugin, hv.spa(rx))
    steps.append(f"nested tables: the plugin's gPA {plugin:#x} -> the receive buffer's page {hv.spa(rx):#x}")
    try:
        out = hv.request(PLUGIN)
    except GuestStopped as e:
        return Outcome("inject", mode, False, str(e), steps, e.facts)
    got = _text(out)
    return Outcome("inject", mode, got.startswith("TOP SECRET"),
                   f"the guest ran the hypervisor's code as its plugin, which returned {got!r}", steps)


def attack_page_state(kernel: str, mode: str) -> Outcome:
    """Take the attempts page from the guest, change it, give it back."""
    hv = Hypervisor(kernel, mode).boot()
    page = hv.sym("attempts_page")
    spa, steps = hv.spa(page), []
    if mode == "snp":
        rc = hv.host.rmpupdate(spa)
        steps.append(f"RMPUPDATE {spa:#x} to the hypervisor: {rc}")
        steps.append(f"host write: {hv.write(page, bytes(16)) or 'landed'}")
        rc = hv.host.rmpupdate(spa, page, assigned=True, asid=hv.vmm.asid)
        steps.append(f"RMPUPDATE {spa:#x} back to the guest at gPA {page:#x}: {rc}")
    else:
        steps.append(f"host write of 16 zero bytes: {hv.write(page, bytes(16)) or 'landed'}")
    try:
        out = hv.request(PIN, b"\0\0\0\0")
    except GuestStopped as e:
        return Outcome("page-state", mode, False, str(e), steps, e.facts)
    left = _u32(out, 4)
    return Outcome("page-state", mode, left > 3,
                   f"the guest never noticed: its attempts counter now reads {left} "
                   f"(it had 3)", steps)


def attack_vmsa(kernel: str, mode: str) -> Outcome:
    """At an exit, read the guest's registers, then set its RIP to the code
    that reveals its secret."""
    hv = Hypervisor(kernel, mode).boot()
    v, pin_ok = hv.vmm.vmcb, hv.sym("pin_ok")
    if not hv.es:
        pin = hv.gprs[RBP]
        steps = [f"guest registers at #VMEXIT(HLT): RIP {v['RIP']:#x}, EBP {pin:#x} (its PIN)"]
        v["RIP"] = pin_ok
        steps.append(f"VMCB RIP := {pin_ok:#x} (pin_ok)")
        out = hv.request(0)
        return Outcome("vmsa", mode, _u32(out) == 0 and pin == 0x4711,
                       f"read the PIN {pin:#x} from the guest's registers and, with RIP moved, "
                       f"the guest gave out {_text(out[16:])!r}", steps)
    vmsa = v["VMSA_PA"]
    raw = hv.m.bus.read_bytes(vmsa + 0x178, 8)
    steps = [f"the VMCB holds no guest registers; VMSA RIP field reads {raw.hex()} (ciphertext)"]
    forged = bytes([raw[0] ^ 1]) + raw[1:]
    fault = hv.host.write(vmsa + 0x178, forged)
    steps.append(f"host write to the VMSA: {fault or 'landed'}")
    if fault and mode == "snp":
        steps.append(f"RMPUPDATE of the VMSA page to the hypervisor: {hv.host.rmpupdate(vmsa)}")
        steps.append(f"host write: {hv.host.write(vmsa + 0x178, forged) or 'landed'}")
        rc = hv.host.rmpupdate(vmsa, 0xFFFFFFFFF000, assigned=True, asid=hv.vmm.asid)
        steps.append(f"RMPUPDATE back to the guest: {rc}")
    try:
        hv.request(0)
    except GuestStopped as e:
        return Outcome("vmsa", mode, False, str(e), steps, e.facts)
    return Outcome("vmsa", mode, True, "the guest ran on from a state the hypervisor changed", steps)


def attack_cpuid(kernel: str, mode: str) -> Outcome:
    """Tell the guest its C-bit is bit 42 (and map those aliases to its RAM),
    then read the session key it keeps in "private" memory."""
    hv = Hypervisor(kernel, mode, cbit_lie=CBIT_LIE)
    steps = [f"CPUID 8000_001F EBX[5:0] := {CBIT_LIE} (really {cpuid(hv.vmm.cpu, 0x8000001F)[1] & 0x3F})"]
    stop = {}
    if hv.cpuid_refused:
        failed = [status for name, status in hv.launcher.psp.log if status != "SUCCESS"]
        stop = {"firmware": failed}
        steps.append(f"the AMD-SP: {hv.cpuid_refused}; the VMM launched the corrected page")
    hv.boot()
    key = hv.read(hv.sym("key_page"), 16)
    fingerprint = _u32(hv.request(KEY))
    stolen = 0
    for i in range(4):
        stolen ^= _u32(key, 4 * i)
    steps.append(f"DRAM at the guest's key: {key.hex()}; the guest's key fingerprint {fingerprint:#010x}")
    if stolen == fingerprint:
        return Outcome("cpuid", mode, True,
                       f"the guest mapped its memory as shared: its session key {key.hex()} is "
                       "plaintext in DRAM", steps)
    what = "the guest read its true C-bit"
    if hv.cpuid_refused:
        what = f"{hv.cpuid_refused}; {what} from the corrected page"
    return Outcome("cpuid", mode, False, f"{what}: DRAM holds ciphertext of its key", steps, stop)


ATTACKS = {"remap": attack_remap, "replay": attack_replay, "inject": attack_inject,
           "page-state": attack_page_state, "vmsa": attack_vmsa, "cpuid": attack_cpuid}
TITLES = {
    "remap": "remap two private pages in the nested tables (SEVered)",
    "replay": "replay old ciphertext of the PIN-attempts counter",
    "inject": "inject code as ciphertext the guest made, mapped over its plugin (SEVerity)",
    "page-state": "change a private page behind the guest's back",
    "vmsa": "read the guest's registers and move its RIP",
    "cpuid": "lie about the C-bit position in CPUID",
}


def gallery(kernel: str, modes=tuple(MODES), attacks=tuple(ATTACKS)):
    """Every attack against every mode: Outcomes, in order."""
    for name in attacks:
        for mode in modes:
            yield ATTACKS[name](kernel, mode)
