"""The reference VMM's SEV-ES side: launching an SEV-ES guest and its GHCB
server (AMD pub. 56421, "SEV-ES Guest-Hypervisor Communication Block
Standardization", protocol version 2; APM vol 2, 15.35).

An SEV-ES guest's registers live in its encrypted VMSA (15.35.8), so the
hypervisor sees only automatic exits (table 15-33) and VMGEXIT.  At VMGEXIT
the GHCB MSR's value (VMCB 0A0h) is either an MSR-protocol request (bits
11:0 non-zero) or the guest-physical address of a GHCB page the guest shares
(C-bit clear), holding a NAE event: SW_EXITCODE, SW_EXITINFO1/2, SW_SCRATCH
and the registers the event needs, each marked in the valid bitmap.  The
server reads only fields whose valid bit is set, clears the bitmap, writes
its results with their valid bits and SW_EXITINFO1 = 0 (OK), 1 (raise the
exception in SW_EXITINFO2) or 2 (malformed input, reason in SW_EXITINFO2),
and resumes the guest (the hardware advanced RIP past VMGEXIT).

Dispatch is by table: ``GhcbServer.NAE`` maps SW_EXITCODE to a method name,
``GhcbServer.MSR_PROTOCOL`` maps MSR-protocol request codes to one; a
subclass extends them (``NAE = {**GhcbServer.NAE, code: "_handler"}``), as
the SEV-SNP server does for page state changes, AP creation and guest
requests.  A handler raises ``Malformed`` for input it refuses (the guest
then terminates, as the spec says it must) or ``Stop`` to end the run; the
guest never meets a Python exception of the server's, and neither does the
caller of ``Vmm.run``.

``launch_es`` loads a Multiboot kernel, builds one VMSA per vCPU (the BSP's
with the Multiboot entry state, each AP's with the x86 reset state at the
address in the kernel's SEV-ES reset block, as QEMU does for OVMF), launches
it through the AMD-SP (LAUNCH_UPDATE_DATA of the image, LAUNCH_UPDATE_VMSA of
each VMSA, LAUNCH_MEASURE checked by the guest owner, LAUNCH_FINISH,
ACTIVATE) and attaches a ``GhcbServer``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..sev import ghcb as G
from ..sev.ghcb import GhcbView, MsrProto, NaeExit, Response, GhcbError
from ..svm.exits import ExitCode, exit_name, decode_ioio, from_vmcb
from ..svm.intercepts import set_intercept
from .vmm import GUEST_BASE, PASSTHROUGH, GuestExit, Vcpu

PAGE = 0x1000
GP_VECTOR = 13
EVENT_EXCEPTION = 3 << 8 | 1 << 31        # EVENTINJ: type exception, valid (APM 15.20)
EVENT_ERROR_VALID = 1 << 11
MMIO_RSVD = 1 << 51                        # a reserved nested-PTE bit: MMIO is a #VC (KVM's mmio mask)
KVM_ENOSYS, KVM_EPERM = 1000, 1            # KVM's hypercall errors (include/uapi/linux/kvm_para.h)
KVM_HC_VAPIC_POLL_IRQ = 1
MSR_APIC_BASE, MSR_TSC_AUX = 0x1B, 0xC0000103
MSR_PERF_CTR0 = 0xC0010004
SEV_ES_RESET_GUID = bytes.fromhex("de71f7007e1acb4f890e68c77e2fb44e")   # 00f771de-1a7e-4fcb-890e-68c77e2fb44e

#: The intercepts whose NAE events the server handles (CPUID and port I/O
#: raise #VC whatever the intercepts say, APM 15.36.23).
ES_INTERCEPTS = (ExitCode.VMRUN, ExitCode.HLT, ExitCode.SHUTDOWN, ExitCode.MSR, ExitCode.VMMCALL,
                 ExitCode.RDTSC, ExitCode.RDTSCP, ExitCode.RDPMC, ExitCode.WBINVD, ExitCode.INVD,
                 ExitCode.MONITOR, ExitCode.MWAIT, ExitCode.DR7_READ, ExitCode.DR7_WRITE,
                 ExitCode.CPUID, ExitCode.IOIO)


class Malformed(Exception):
    """Input the server refuses: SW_EXITINFO1 = 2, SW_EXITINFO2 = ``error``."""

    def __init__(self, error: GhcbError, text: str):
        super().__init__(text)
        self.error = error


class RaiseException(Exception):
    """The server asks the guest to raise an exception at the instruction
    (SW_EXITINFO1 = 1, SW_EXITINFO2 = the event in EVENTINJ format)."""

    def __init__(self, vector: int, error_code: int | None = None):
        super().__init__(f"vector {vector}")
        self.event = vector | EVENT_EXCEPTION
        if error_code is not None:
            self.event |= EVENT_ERROR_VALID | (error_code & 0xFFFFFFFF) << 32


class Stop(Exception):
    """End the guest's run with this reason (a termination request, a GHCB
    the server cannot even answer)."""


@dataclass
class Request:
    """One NAE event as the server read it from the GHCB."""
    vcpu: Vcpu
    gpa: int                     # the GHCB page's gPA
    page: bytearray              # its contents (written back after the handler)
    ghcb: GhcbView               # fields of ``page``
    code: int
    info1: int
    info2: int
    inputs: dict = field(default_factory=dict)   # the valid save-area fields, by name
    outputs: dict = field(default_factory=dict)  # fields the server returns

    def need(self, *names: str) -> list:
        """The values of fields the event requires; MISSING_INPUT if the guest
        did not mark one valid (GHCB spec, table of NAE events)."""
        missing = [n for n in names if n not in self.inputs]
        if missing:
            raise Malformed(GhcbError.MISSING_INPUT,
                            f"{G.nae_name(self.code)} without {', '.join(missing)} in the valid bitmap")
        return [self.inputs[n] for n in names]


@dataclass
class EsLaunch:
    """What ``launch_es`` produced."""
    handle: int
    asid: int
    measurement: bytes           # LAUNCH_MEASURE: MEASURE || MNONCE
    verified: bool
    vmsa_spas: list
    ap_eip: int | None
    server: "GhcbServer"
    info: object = None          # the Multiboot loader's BootInfo


class GhcbServer:
    """The GHCB protocol's hypervisor side for the reference VMM ``vmm``;
    ``vmm.es`` once attached.  ``requests`` counts what the guest asked for,
    by name (NAE events by their exit-code names, MSR-protocol requests as
    ``MSR_PROTOCOL:<name>``); ``malformed`` lists the requests refused."""

    #: SW_EXITCODE -> handler method name.
    NAE = {
        ExitCode.CPUID: "_cpuid",
        ExitCode.IOIO: "_ioio",
        ExitCode.MSR: "_msr",
        ExitCode.VMMCALL: "_vmmcall",
        NaeExit.MMIO_READ: "_mmio",
        NaeExit.MMIO_WRITE: "_mmio",
        ExitCode.RDTSC: "_rdtsc",
        ExitCode.RDTSCP: "_rdtsc",
        ExitCode.RDPMC: "_rdpmc",
        ExitCode.WBINVD: "_nop",
        ExitCode.INVD: "_nop",
        ExitCode.MONITOR: "_monitor",
        ExitCode.MWAIT: "_mwait",
        ExitCode.DR7_READ: "_read_dr7",
        ExitCode.DR7_WRITE: "_write_dr7",
        NaeExit.AP_HLT_LOOP: "_ap_hlt_loop",
        NaeExit.AP_JUMP_TABLE: "_ap_jump_table",
        NaeExit.HV_FEATURES: "_hv_features",
        NaeExit.TERM_REQUEST: "_term_request",
        NaeExit.UNSUPPORTED: "_unsupported",
    }
    #: MSR-protocol request code (GHCB MSR bits 11:0) -> handler method name.
    MSR_PROTOCOL = {
        MsrProto.SEV_INFO_REQ: "_msr_sev_info",
        MsrProto.CPUID_REQ: "_msr_cpuid",
        MsrProto.AP_RESET_HOLD_REQ: "_msr_ap_reset_hold",
        MsrProto.PREF_GPA_REQ: "_msr_pref_gpa",
        MsrProto.REG_GPA_REQ: "_msr_reg_gpa",
        MsrProto.HV_FEATURES_REQ: "_msr_hv_features",
        MsrProto.TERM_REQ: "_msr_term",
    }
    #: HV_FEATURES (GHCB spec 2.3.9): none for SEV-ES (bit 0 is "SEV-SNP").
    HV_FEATURES = 0
    #: MSRs the VMM intercepts through the MSRPM for an ES guest (besides
    #: those outside its ranges, which always exit).
    INTERCEPTED_MSRS = (MSR_APIC_BASE, MSR_TSC_AUX)

    def __init__(self, vmm):
        self.vmm, self.m = vmm, vmm.m
        self.requests: dict = {}
        self.malformed: list = []        # (vCPU, exit name, GhcbError name, text)
        self.ap_jump_table = 0
        self.terminated: tuple | None = None   # (reason set, reason code) of a TERMINATE
        self.log: list = []              # (vCPU index, request, what the server did)
        self.log_limit = 10000

    # ------------------------------------------------------------ set-up
    def attach(self, vmsa_spas) -> None:
        """Make ``vmm`` run SEV-ES guests through this server: every vCPU's
        VMCB with SEV, SEV-ES, LBR virtualization and its VMSA (APM 15.35.2),
        the NAE intercepts, memory encryption and SmmLock on every CPU, and
        host stubs that VMSAVE the host state #VMEXIT reloads (15.35.9)."""
        from ..cpu import msr
        vmm = self.vmm
        vmm.es = self
        for v, spa in zip(vmm.vcpus, vmsa_spas):
            v.es, v.vmsa_pa = True, spa
            cpu, g = v.cpu, v.vmcb
            msr.wrmsr(cpu, 0xC0010010, msr.rdmsr(cpu, 0xC0010010) | 1 << 23)   # SYSCFG.MemEncryptionModEn
            cpu.msr[0xC0010015] = cpu.msr.get(0xC0010015, 0) | 1                # HWCR.SmmLock
            g["SEV_ENABLE"] = g["SEV_ES_ENABLE"] = g["LBR_VIRTUALIZATION_ENABLE"] = 1
            g["VMSA_PA"], g["GUEST_ASID"], g["TLB_CONTROL"] = spa, vmm.asid, 1
            g["GHCB_GPA"] = 0
            for code in ES_INTERCEPTS:
                set_intercept(g, code)
            waiting = v.state == "wait-sipi"
            vmm._host_setup(v, self.stub_prologue(v))
            cpu.wait_for_sipi = waiting
        from .vmm import MSRPM_PA
        from ..svm.intercepts import msrpm_position
        for index in self.INTERCEPTED_MSRS:
            off, bit = msrpm_position(index)
            b = self.m.bus.read(MSRPM_PA + off, 1)
            self.m.bus.write(MSRPM_PA + off, 1, b | 3 << bit)

    def stub_prologue(self, v: Vcpu) -> bytes:
        """Host code before VMRUN: VMSAVE into the host save area, whose
        expanded (VMSA-format) half #VMEXIT reloads for an SEV-ES guest
        (15.35.9; KVM does the same VMSAVE before entering an ES guest)."""
        return bytes.fromhex("48b8") + v.hsave_pa.to_bytes(8, "little") + bytes.fromhex("0f01db")

    HOLD_CODE_OFFSET = 0x800        # in the vCPU's stub page: STGI; HLT

    def park(self, v: Vcpu) -> None:
        """The vCPU entered AP reset hold: its CPU waits in the host for the
        guest's INIT-SIPI (its APIC is passed through).  #VMEXIT left GIF = 0,
        which holds INIT pending (APM 15.17), so the host first executes STGI
        (interrupts stay off: host RFLAGS.IF = 0), then HLT."""
        cpu, m = v.cpu, self.m
        code = v.stub_pa + self.HOLD_CODE_OFFSET
        m.bus.write_bytes(code, bytes.fromhex("0f01dcf4"))        # STGI; HLT
        cpu.rip, cpu.halted = code, False
        current, m.current_cpu = m.current_cpu, cpu
        try:
            m.engine.run(cpu, 2)
        finally:
            m.current_cpu = current

    def sipi(self, v: Vcpu) -> None:
        """The AP's CPU got INIT-SIPI: a vCPU that never ran starts from its
        launched VMSA; one in AP reset hold returns from it with a non-zero
        result (GHCB spec 4.1.9 / 2.3.4), and carries on from its VMSA."""
        if v.state == "held":
            if v.hold == "msr":
                v.vmcb["GHCB_GPA"] = G.msr_request(MsrProto.AP_RESET_HOLD_RESP, 1)
            else:
                gpa = v.vmcb["GHCB_GPA"]
                page = bytearray(self._read_guest(gpa, PAGE))
                g = GhcbView(page)
                g["SW_EXIT_INFO_2"] = 1
                g.set_valid("SW_EXIT_INFO_2")
                self._write_guest(gpa, bytes(page))
            self._note(v, "AP reset hold", "released by INIT-SIPI")
        v.hold = ""
        v.state = "running"

    # ------------------------------------------------------------ exits
    def handle_exit(self, vcpu: Vcpu):
        """One #VMEXIT of an SEV-ES vCPU: None to resume it, else the reason
        the run ends."""
        vmm, v = self.vmm, vcpu.vmcb
        code = from_vmcb(v["EXITCODE"])
        vmm.count_exit(code)
        v["TLB_CONTROL"] = 0
        try:
            if code == ExitCode.VMGEXIT:
                msr_value = v["GHCB_GPA"]
                if G.msr_code(msr_value):
                    reason = self._msr_protocol(vcpu, msr_value)
                else:
                    reason = self._ghcb_request(vcpu, msr_value)
                if reason is None and vcpu.state == "held":
                    self.park(vcpu)
                return reason
            if code == ExitCode.HLT:            # automatic; the hardware advanced RIP
                vcpu.state = "halted" if v["GUEST_INTERRUPT_MASK"] else "stopped"
                return None
            if code == ExitCode.NPF:
                return self._npf(vcpu, v["EXITINFO1"], v["EXITINFO2"])
            if code == ExitCode.INVALID:
                return f"VMRUN failed: {vcpu.cpu.svm.invalid[-1]}"
            if code == ExitCode.SHUTDOWN:
                return "the SEV-ES guest shut down (triple fault)"
            return f"guest exit {exit_name(code)} ({int(code):#x}) info1={v['EXITINFO1']:#x} " \
                   f"info2={v['EXITINFO2']:#x} (an SEV-ES guest: no RIP to show)"
        except Stop as s:
            return str(s)

    def _npf(self, vcpu, info1, gpa):
        """An automatic #NPF: a gPA outside guest RAM is MMIO; map its page with
        a reserved bit so the guest's next access is a #VC(NPF) it turns
        into an MMIO NAE event (KVM's MMIO SPTEs for SEV-ES guests)."""
        page = gpa & ~(PAGE - 1)
        if page < self.vmm.guest_mem or any(lo <= page < hi for lo, hi in PASSTHROUGH) \
                or info1 & 1 << 3:
            return f"guest exit NPF gPA {gpa:#x} info1={info1:#x}"
        self.vmm._map(self.vmm.n_cr3, page, page | MMIO_RSVD, PAGE)
        vcpu.vmcb["TLB_CONTROL"] = 1
        self._note(vcpu, "NPF", f"gPA {page:#x} is MMIO: mapped with a reserved bit")
        return None

    # ------------------------------------------------------------ MSR protocol
    def _msr_protocol(self, vcpu, value):
        code = G.msr_code(value)
        name = self.MSR_PROTOCOL.get(code)
        try:
            label = MsrProto(code).name.removesuffix("_REQ")
        except ValueError:
            label = f"{code:#x}"
        self._count(f"MSR_PROTOCOL:{label}")
        if name is None:
            raise Stop(f"the guest sent GHCB MSR {value:#x}: not a request of the MSR protocol "
                       f"(GHCB spec 2.3); the guest is stopped")
        return getattr(self, name)(vcpu, value)

    def _reply_msr(self, vcpu, code, data, what):
        vcpu.vmcb["GHCB_GPA"] = G.msr_request(code, data)
        self._note(vcpu, "MSR protocol " + MsrProto(code).name.removesuffix("_RESP"), what)

    def cbit(self, vcpu) -> int:
        from ..cpu.cpuid import cpuid
        return cpuid(vcpu.cpu, 0x8000001F)[1] & 0x3F

    def _msr_sev_info(self, vcpu, value):
        vcpu.vmcb["GHCB_GPA"] = G.sev_info(self.cbit(vcpu))
        self._note(vcpu, "MSR protocol SEV_INFO", f"protocol {G.PROTOCOL_MIN}-{G.PROTOCOL_MAX}, C-bit {self.cbit(vcpu)}")

    def _msr_cpuid(self, vcpu, value):
        fn, reg = value >> 32, value >> 30 & 3
        result = self.vmm.cpuid(vcpu.cpu, fn, 0)[reg]
        self._reply_msr(vcpu, MsrProto.CPUID_RESP, result << 20, f"CPUID {fn:#x} {'abcd'[reg]}: {result:#x}")

    def _msr_ap_reset_hold(self, vcpu, value):
        vcpu.state, vcpu.hold = "held", "msr"
        vcpu.vmcb["GHCB_GPA"] = G.msr_request(MsrProto.AP_RESET_HOLD_RESP, 0)
        self._note(vcpu, "MSR protocol AP_RESET_HOLD", "held until INIT-SIPI")

    def _msr_pref_gpa(self, vcpu, value):
        self._reply_msr(vcpu, MsrProto.PREF_GPA_RESP, G.GPA_NONE, "no preferred GHCB gPA")

    def _msr_reg_gpa(self, vcpu, value):
        gfn = G.msr_data(value)
        if (gfn + 1) * PAGE <= self.vmm.guest_mem:
            vcpu.ghcb_registered = gfn * PAGE
            self._reply_msr(vcpu, MsrProto.REG_GPA_RESP, gfn, f"GHCB registered at {gfn * PAGE:#x}")
        else:
            self._reply_msr(vcpu, MsrProto.REG_GPA_RESP, G.GPA_NONE, f"GFN {gfn:#x} is not guest RAM")

    def _msr_hv_features(self, vcpu, value):
        self._reply_msr(vcpu, MsrProto.HV_FEATURES_RESP, self.HV_FEATURES, f"features {self.HV_FEATURES:#x}")

    def _msr_term(self, vcpu, value):
        reason_set, reason = value >> 12 & 0xF, value >> 16 & 0xFF
        raise Stop(self._terminate(vcpu, reason_set, reason))

    def _terminate(self, vcpu, reason_set, reason) -> str:
        self.terminated = (reason_set, reason)
        vcpu.state = "stopped"
        name = ""
        if reason_set == 0:
            try:
                name = f" ({G.TermReason(reason).name})"
            except ValueError:
                pass
        text = f"the SEV-ES guest asked to terminate: reason set {reason_set}, code {reason}{name}"
        if self.malformed:
            text += f"; after the server refused: {self.malformed[-1][3]}"
        self._note(vcpu, "TERMINATE", text)
        return text

    # ------------------------------------------------------------ GHCB page
    def check_ghcb_gpa(self, vcpu, gpa) -> None:
        """A GHCB the server can use: a whole page of guest RAM (and the one
        registered, if the guest registered one)."""
        if gpa & (PAGE - 1) or gpa + PAGE > self.vmm.guest_mem:
            raise Stop(f"VMGEXIT with the GHCB at gPA {gpa:#x}: not a page of guest RAM; "
                       "the server cannot answer, the guest is stopped")
        if vcpu.ghcb_registered is not None and gpa != vcpu.ghcb_registered:
            raise Stop(f"VMGEXIT with the GHCB at gPA {gpa:#x}, not the registered "
                       f"{vcpu.ghcb_registered:#x}; the guest is stopped")

    def _ghcb_request(self, vcpu, gpa):
        self.check_ghcb_gpa(vcpu, gpa)
        page = bytearray(self._read_guest(gpa, PAGE))
        g = GhcbView(page)
        inputs = {f.name: g[f.name] for f in G.VALIDATED if g.is_valid(f.name)}
        code = inputs.get("SW_EXIT_CODE", g["SW_EXIT_CODE"])
        r = Request(vcpu, gpa, page, g, code, inputs.get("SW_EXIT_INFO_1", 0),
                    inputs.get("SW_EXIT_INFO_2", 0), inputs)
        self._count(G.nae_name(code) if "SW_EXIT_CODE" in inputs else "MALFORMED")
        stop = None
        try:
            self._validate(r)
            handler = self.NAE.get(code)
            if handler is None:
                raise Malformed(GhcbError.INVALID_EVENT,
                                f"SW_EXITCODE {code:#x} is not an event this server handles")
            stop = getattr(self, handler)(r)
            self._respond(r, Response.OK, r.outputs.pop("SW_EXIT_INFO_2", None))
        except Malformed as e:
            self.malformed.append((vcpu.index, G.nae_name(code), e.error.name, str(e)))
            r.outputs = {}
            self._respond(r, Response.MALFORMED_INPUT, int(e.error))
            self._note(vcpu, G.nae_name(code), f"malformed ({e.error.name}): {e}")
        except RaiseException as e:
            r.outputs = {}
            self._respond(r, Response.ISSUE_EXCEPTION, e.event)
            self._note(vcpu, G.nae_name(code), f"exception {e} for the guest")
        except Stop as s:
            stop = str(s)
        self._write_guest(gpa, bytes(page))
        return stop

    def _validate(self, r: Request) -> None:
        """GHCB spec 2.2: the standard format (usage 0), a protocol version the
        server negotiated, SW_EXITCODE/INFO1/INFO2 valid."""
        g = r.ghcb
        if g["USAGE"] != 0:
            raise Malformed(GhcbError.INVALID_USAGE, f"GHCB usage {g['USAGE']:#x} is not the standard format 0")
        version = g["PROTOCOL_VERSION"]
        if not G.PROTOCOL_MIN <= version <= G.PROTOCOL_MAX:
            raise Malformed(GhcbError.INVALID_INPUT, f"GHCB protocol version {version} is not "
                            f"{G.PROTOCOL_MIN}..{G.PROTOCOL_MAX}")
        r.need("SW_EXIT_CODE", "SW_EXIT_INFO_1", "SW_EXIT_INFO_2")

    def _respond(self, r: Request, result: int, info2: int | None) -> None:
        """Clear the valid bitmap, then write the results with their bits."""
        g = r.ghcb
        g["VALID_BITMAP_0"] = g["VALID_BITMAP_1"] = 0
        outputs = dict(r.outputs)
        outputs["SW_EXIT_INFO_1"] = result
        if info2 is not None:
            outputs["SW_EXIT_INFO_2"] = info2
        for name, value in outputs.items():
            g[name] = value & (1 << G.BY_NAME[name].width) - 1
            g.set_valid(name)

    # -- scratch area (string I/O, MMIO)
    def scratch(self, r: Request, length: int) -> tuple[int, int]:
        """(gPA, length) of SW_SCRATCH's buffer: inside the GHCB's shared
        buffer or elsewhere in guest RAM (GHCB spec 2.2.2); else INVALID_SCRATCH_AREA."""
        (gpa,) = r.need("SW_SCRATCH")
        start, end = r.gpa + G.SHARED_BUFFER, r.gpa + G.SHARED_BUFFER + G.SHARED_BUFFER_SIZE
        in_ghcb = start <= gpa and gpa + length <= end
        elsewhere = (gpa + length <= self.vmm.guest_mem and
                     (gpa + length <= r.gpa or gpa >= r.gpa + PAGE))
        if length <= 0 or not (in_ghcb or elsewhere):
            raise Malformed(GhcbError.INVALID_SCRATCH_AREA,
                            f"scratch area {gpa:#x}+{length:#x} is neither in the GHCB's shared "
                            "buffer nor in guest RAM")
        return gpa, length

    def _scratch_read(self, r, gpa, n) -> bytes:
        if r.gpa <= gpa < r.gpa + PAGE:
            off = gpa - r.gpa
            return bytes(r.page[off:off + n])
        return self._read_guest(gpa, n)

    def _scratch_write(self, r, gpa, data: bytes) -> None:
        if r.gpa <= gpa < r.gpa + PAGE:
            off = gpa - r.gpa
            r.page[off:off + len(data)] = data
        else:
            self._write_guest(gpa, data)

    # ------------------------------------------------------------ NAE events
    def _cpuid(self, r: Request):
        rax, rcx = r.need("RAX", "RCX")
        leaf, sub = rax & 0xFFFFFFFF, rcx & 0xFFFFFFFF
        if leaf == 0xD:
            r.need("XCR0")
        a, b, c, d = self.vmm.cpuid(r.vcpu.cpu, leaf, sub)
        r.outputs.update(RAX=a, RBX=b, RCX=c, RDX=d)
        self._note(r.vcpu, "CPUID", f"leaf {leaf:#x}.{sub:#x} -> {a:#x} {b:#x} {c:#x} {d:#x}")

    def _ioio(self, r: Request):
        f = decode_ioio(r.info1)
        size = f["size"]
        if size is None:
            raise Malformed(GhcbError.INVALID_INPUT, f"IOIO info1 {r.info1:#x} gives no operand size")
        port, mask = f["port"], (1 << 8 * size) - 1
        if not f["string"]:
            if f["in"]:
                value = self.vmm.port_read(port, size) & mask
                r.outputs["RAX"] = value
                self._note(r.vcpu, "IOIO", f"IN port {port:#x} -> {value:#x}")
            else:
                (rax,) = r.need("RAX")
                self.vmm.port_write(port, size, rax & mask)
                self._note(r.vcpu, "IOIO", f"OUT port {port:#x} <- {rax & mask:#x}")
            return None
        count = r.info2
        gpa, _ = self.scratch(r, count * size) if count else (0, 0)
        if f["in"]:
            data = b"".join(self.vmm.port_read(port, size).to_bytes(size, "little") for _ in range(count))
            self._scratch_write(r, gpa, data)
        else:
            data = self._scratch_read(r, gpa, count * size)
            for i in range(count):
                self.vmm.port_write(port, size, int.from_bytes(data[i * size:(i + 1) * size], "little"))
        self._note(r.vcpu, "IOIO", f"{'INS' if f['in'] else 'OUTS'} port {port:#x} x{count} "
                   f"through scratch {gpa:#x}")
        return None

    def _msr(self, r: Request):
        (rcx,) = r.need("RCX")
        index = rcx & 0xFFFFFFFF
        if r.info1 not in (0, 1):
            raise Malformed(GhcbError.INVALID_INPUT, f"MSR info1 {r.info1:#x} is neither 0 (read) nor 1 (write)")
        if r.info1:
            rax, rdx = r.need("RAX", "RDX")
            value = (rdx & 0xFFFFFFFF) << 32 | rax & 0xFFFFFFFF
            self.msr_write(r.vcpu, index, value)
            self._note(r.vcpu, "MSR", f"WRMSR {index:#x} <- {value:#x}")
        else:
            value = self.msr_read(r.vcpu, index)
            r.outputs.update(RAX=value & 0xFFFFFFFF, RDX=value >> 32)
            self._note(r.vcpu, "MSR", f"RDMSR {index:#x} -> {value:#x}")

    def msr_read(self, vcpu, index: int) -> int:
        """The reference VMM's MSRs for an ES guest: TSC_AUX is the vCPU's
        (the VMM's copy, for RDTSCP), APIC_BASE the CPU's (its APIC is passed
        through); any other MSR that exits is #GP, as KVM answers an MSR it
        does not know."""
        from ..cpu import msr
        if index == MSR_TSC_AUX:
            return vcpu.tsc_aux
        if index == MSR_APIC_BASE:
            return msr.rdmsr(vcpu.cpu, index)
        raise RaiseException(GP_VECTOR, 0)

    def msr_write(self, vcpu, index: int, value: int) -> None:
        from ..cpu import msr
        if index == MSR_TSC_AUX and not value >> 32:
            vcpu.tsc_aux = value
        elif index == MSR_APIC_BASE and value == msr.rdmsr(vcpu.cpu, index):
            pass                                       # relocating the passed-through APIC: no
        else:
            raise RaiseException(GP_VECTOR, 0)

    def _vmmcall(self, r: Request):
        """KVM's hypercall convention (RAX = number): only KVM_HC_VAPIC_POLL_IRQ
        (1, returns 0); others return -KVM_ENOSYS; CPL > 0 gets -KVM_EPERM."""
        rax, cpl = r.need("RAX", "CPL")
        if cpl:
            result = -KVM_EPERM
        elif rax == KVM_HC_VAPIC_POLL_IRQ:
            result = 0
        else:
            result = -KVM_ENOSYS
        r.outputs["RAX"] = result & (1 << 64) - 1
        self._note(r.vcpu, "VMMCALL", f"hypercall {rax:#x} at CPL {cpl} -> {result}")

    def _mmio(self, r: Request):
        gpa, length = r.info1, r.info2
        if length not in (1, 2, 4, 8):
            raise Malformed(GhcbError.INVALID_INPUT, f"MMIO length {length} is not 1, 2, 4 or 8")
        if gpa < self.vmm.guest_mem or self.m.bus.ram_offset(gpa) is not None \
                or self.m.bus.ram_offset(gpa + length - 1) is not None:
            raise Malformed(GhcbError.INVALID_INPUT, f"MMIO at gPA {gpa:#x}: that is RAM")
        buf, _ = self.scratch(r, length)
        if r.code == NaeExit.MMIO_READ:
            value = self.m.bus.read(gpa, length)
            self._scratch_write(r, buf, value.to_bytes(length, "little"))
            self._note(r.vcpu, "MMIO_READ", f"{length} bytes at {gpa:#x} -> {value:#x}")
        else:
            value = int.from_bytes(self._scratch_read(r, buf, length), "little")
            self.m.bus.write(gpa, length, value)
            self._note(r.vcpu, "MMIO_WRITE", f"{length} bytes at {gpa:#x} <- {value:#x}")

    def guest_tsc(self, vcpu) -> int:
        from ..cpu import msr
        return (msr.tsc_value(vcpu.cpu) + vcpu.vmcb["TSC_OFFSET"]) & (1 << 64) - 1

    def _rdtsc(self, r: Request):
        tsc = self.guest_tsc(r.vcpu)
        r.outputs.update(RAX=tsc & 0xFFFFFFFF, RDX=tsc >> 32)
        if r.code == ExitCode.RDTSCP:
            r.outputs["RCX"] = r.vcpu.tsc_aux
        self._note(r.vcpu, exit_name(r.code), f"{tsc:#x}")

    def _rdpmc(self, r: Request):
        """RDPMC of a legacy counter (ECX 0-3: PERF_CTR0-3, APM vol 2, 13.2),
        the vCPU's CPU's; another index is #GP(0)."""
        from ..cpu import msr
        (rcx,) = r.need("RCX")
        index = rcx & 0xFFFFFFFF
        if index > 3:
            raise RaiseException(GP_VECTOR, 0)
        value = msr.rdmsr(r.vcpu.cpu, MSR_PERF_CTR0 + index) & (1 << 48) - 1
        r.outputs.update(RAX=value & 0xFFFFFFFF, RDX=value >> 32)
        self._note(r.vcpu, "RDPMC", f"counter {index} -> {value:#x}")

    def _nop(self, r: Request):
        """WBINVD, INVD: svmsim models no caches to write back or drop."""
        self._note(r.vcpu, exit_name(r.code), "done (no caches are modelled)")

    def _monitor(self, r: Request):
        r.need("RAX", "RCX", "RDX")
        self._note(r.vcpu, "MONITOR", "treated as a NOP, as KVM does")

    def _mwait(self, r: Request):
        r.need("RAX", "RCX")
        self._note(r.vcpu, "MWAIT", "treated as a NOP, as KVM does")

    def _read_dr7(self, r: Request):
        r.outputs["RAX"] = r.vcpu.dr7
        self._note(r.vcpu, "READ_DR7", f"{r.vcpu.dr7:#x}")

    def _write_dr7(self, r: Request):
        (rax,) = r.need("RAX")
        if rax >> 32:
            raise RaiseException(GP_VECTOR, 0)          # MOV DR7: bits 63:32 must be zero
        r.vcpu.dr7 = rax | 0x400                        # bit 10 reads as one
        self._note(r.vcpu, "WRITE_DR7", f"{r.vcpu.dr7:#x}")

    def _ap_hlt_loop(self, r: Request):
        """AP reset hold: the vCPU waits for INIT-SIPI; ``sipi`` then sets
        SW_EXITINFO2 non-zero."""
        r.vcpu.state, r.vcpu.hold = "held", "nae"
        r.outputs["SW_EXIT_INFO_2"] = 0
        self._note(r.vcpu, "AP_HLT_LOOP", "held until INIT-SIPI")

    def _ap_jump_table(self, r: Request):
        if r.info1 == 0:
            self.ap_jump_table = r.info2
            self._note(r.vcpu, "AP_JUMP_TABLE", f"set to {r.info2:#x}")
        elif r.info1 == 1:
            r.outputs["SW_EXIT_INFO_2"] = self.ap_jump_table
            self._note(r.vcpu, "AP_JUMP_TABLE", f"get: {self.ap_jump_table:#x}")
        else:
            raise Malformed(GhcbError.INVALID_INPUT, f"AP_JUMP_TABLE info1 {r.info1} is neither 0 (set) nor 1 (get)")

    def _hv_features(self, r: Request):
        r.outputs["SW_EXIT_INFO_2"] = self.HV_FEATURES

    def _term_request(self, r: Request):
        raise Stop(self._terminate(r.vcpu, r.info1 & 0xF, r.info1 >> 4 & 0xFF))

    def _unsupported(self, r: Request):
        raise Stop(f"the SEV-ES guest met an event it cannot handle: {G.nae_name(r.info1)} "
                   f"({r.info1:#x}), reported with GHCB UNSUPPORTED_EVENT")

    # ------------------------------------------------------------ helpers
    def _read_guest(self, gpa: int, n: int) -> bytes:
        return self.m.bus.read_bytes(GUEST_BASE + gpa, n)

    def _write_guest(self, gpa: int, data: bytes) -> None:
        self.m.bus.write_bytes(GUEST_BASE + gpa, data)

    def _count(self, name: str) -> None:
        self.requests[name] = self.requests.get(name, 0) + 1

    def _note(self, vcpu, what: str, text: str) -> None:
        """Log what the server did; ``ghcb`` trace events for ``--trace vmexit``."""
        if len(self.log) < self.log_limit:
            self.log.append((vcpu.index, what, text))
        if self.m.listeners:
            self.m.emit({"type": "ghcb", "cpu": vcpu.cpu.index, "vcpu": vcpu.index,
                         "request": what, "detail": text})


# ---------------------------------------------------------------- launch
def kernel_ap_reset_eip(path: str) -> int | None:
    """The AP reset address in a kernel's SEV-ES reset block (OVMF's SEV-ES
    reset block GUID, then the 32-bit EIP), found in its loadable segments
    as QEMU finds OVMF's; None if it has none."""
    from elftools.elf.elffile import ELFFile
    from elftools.common.exceptions import ELFError
    from ..errors import LoadError
    try:
        with open(path, "rb") as f:
            data = b"".join(seg.data() for seg in ELFFile(f).iter_segments() if seg["p_type"] == "PT_LOAD")
    except (OSError, ELFError) as e:
        raise LoadError(f"{path}: cannot read its ELF segments: {e}") from None
    at = data.find(SEV_ES_RESET_GUID)
    if at < 0 or at + 20 > len(data):
        return None
    return int.from_bytes(data[at + 16:at + 20], "little")


def launch_es(vmm, kernel: str, append: str = "", owner=None, vcpu_type_name: str = "EPYC-v4",
              server_class=GhcbServer) -> EsLaunch:
    """Load ``kernel`` into ``vmm`` and launch it as an SEV-ES guest with one
    VMSA per vCPU; ``vmm.run()`` then runs it through a ``server_class``."""
    from ..sev.api import SevPolicy
    from ..sev.crypto import GuestOwner
    from .sev_launch import launch_sev
    from .snp_kernel import loaded_regions, vmsa_from_vmcb
    from .vcpu_reset import reset_vmsa, vcpu_type
    info = vmm.load_kernel(kernel, append)
    signature = vcpu_type(vcpu_type_name).signature
    ap_eip = kernel_ap_reset_eip(kernel)
    if len(vmm.vcpus) > 1 and ap_eip is None:
        raise GuestExit(f"{kernel}: no SEV-ES reset block: its APs cannot start")
    bus, spas = vmm.m.bus, []
    for v in vmm.vcpus:
        page = vmsa_from_vmcb(vmm.vmcb, vmm.gprs, signature) if v.index == 0 \
            else reset_vmsa(ap_eip, signature)
        bus.write_bytes(v.vmsa_pa, page)
        spas.append(v.vmsa_pa)
    owner = owner or GuestOwner(SevPolicy.NODBG | SevPolicy.ES)
    launch = launch_sev(vmm, owner, regions=loaded_regions(info), vmsas=spas)
    if not launch.verified:
        raise GuestExit("the guest owner could not verify the launch measurement")
    server = server_class(vmm)
    server.attach(spas)
    return EsLaunch(launch.handle, launch.asid, launch.measurement, launch.verified, spas, ap_eip,
                    server, info)


__all__ = ["GhcbServer", "EsLaunch", "launch_es", "kernel_ap_reset_eip", "Malformed",
           "RaiseException", "Stop", "Request", "ES_INTERCEPTS"]
