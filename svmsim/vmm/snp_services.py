"""What the reference VMM does for a running SEV-SNP guest when it asks (GHCB
spec 56421, section 4; KVM's arch/x86/kvm/svm/sev.c does the same for its
guests): change the state of its pages, pass its messages to the AMD-SP,
give a vCPU (or a VMPL of one) a VMSA the guest built, and switch a vCPU to
another VMPL.  The GHCB server (``ghcb_server``) decodes the requests; these
are the operations behind them.

Guest memory is host RAM at ``GUEST_BASE + gPA``, one system page per guest
page, so a page keeps its frame when it changes state (KVM's guest_memfd
gives private and shared pages different frames; the RMP checks are the same).

* Page state (4.1.6): to private, RMPUPDATE the frame to the guest at its gPA
  (it is then assigned and unvalidated: the guest must PVALIDATE it,
  15.36.6); to shared, RMPUPDATE it back to the hypervisor.  A 2 MiB request
  on a 2 MiB-aligned range none of whose pages is assigned becomes one 2 MiB
  RMP entry and a 2 MiB nested page (with ``large_pages``); otherwise 512
  4 KiB entries, and the guest's 2 MiB PVALIDATE then fails with
  FAIL_SIZEMISMATCH and it validates page by page (15.36.11).  A 4 KiB change
  inside a 2 MiB private page first PSMASHes it and splits the nested page.
  A page already in the requested state is left alone: a repeated request
  must not unvalidate it.
* Guest requests (4.1.8): ``snp_guest_request.SnpGuestRequests``.
* AP creation (4.1.9): the VMSA page the guest names becomes the VMSA of the
  vCPU with that APIC ID at the VMPL in SW_EXITINFO1[23:16] (Linux's SVSM
  support puts the VMPL there; 0 without one).  VMRUN checks the page
  (guest-owned, VMSA flag set by the guest's RMPADJUST: table 15-39).
* Run VMPL (4.1.13): the vCPU continues with the VMSA of the target VMPL; each
  VMPL keeps its own GHCB MSR value (VMCB 0A0h), saved and restored here.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..memory.rmp import PAGE, PAGES_2M
from ..sev.ghcb import PSC_MAX_ENTRIES, ApCreation, PscOp
from . import snp_host
from .vmm import GUEST_BASE

_2M = PAGE * PAGES_2M
PSC_PRIVATE, PSC_SHARED, PSC_PSMASH, PSC_UNSMASH = PscOp.PRIVATE, PscOp.SHARED, PscOp.PSMASH, PscOp.UNSMASH
PSC_ERROR_GENERIC = 0x100 << 32                 # KVM's VMGEXIT_PSC_ERROR_* (SW_EXITINFO2)
PSC_ERROR_INVALID_HDR = 1 << 32 | 1
PSC_ERROR_INVALID_ENTRY = 1 << 32 | 2
AP_CREATE_ON_INIT, AP_CREATE, AP_DESTROY = ApCreation.CREATE_ON_INIT, ApCreation.CREATE, ApCreation.DESTROY


class SnpRequestError(Exception):
    """A request the VMM refuses (the GHCB answer says so)."""


@dataclass
class VcpuSnp:
    """A vCPU's SNP state in the VMM: a VMSA (system-physical) per VMPL,
    the VMPL it runs at, each VMPL's GHCB MSR value while it does not run."""
    vmsas: dict = field(default_factory=dict)
    vmpl: int = 0
    ghcb_msr: dict = field(default_factory=dict)


class SnpServices:
    def __init__(self, vmm, asid: int, large_pages: bool = True):
        self.vmm, self.m, self.asid, self.large_pages = vmm, vmm.m, asid, large_pages
        self.vcpus: dict = {}                   # vCPU index -> VcpuSnp
        self.log: list = []                     # ("private"/"shared", gPA, size) in order

    def vcpu(self, index: int) -> VcpuSnp:
        return self.vcpus.setdefault(index, VcpuSnp())

    # ---------------------------------------------------------------- page state
    def page_state(self, gpa: int, op: int, size: int = PAGE) -> None:
        """One page (4 KiB or 2 MiB) to private or shared; SnpRequestError
        if the VMM refuses."""
        if op not in (PSC_PRIVATE, PSC_SHARED) or size not in (PAGE, _2M) or gpa % size \
                or gpa + size > self.vmm.guest_mem:
            raise SnpRequestError(f"page state change of {size:#x} bytes at gPA {gpa:#x} (op {op})")
        self.log.append(("private" if op == PSC_PRIVATE else "shared", gpa, size))
        if size == _2M and op == PSC_PRIVATE and self.large_pages and self._unassigned_2m(gpa):
            snp_host.rmpupdate(self.m, GUEST_BASE + gpa, gpa, assigned=True, asid=self.asid, size=1)
            self._nested_2m(gpa)
            return
        for sub in range(gpa, gpa + size, PAGE):
            self._page_4k(sub, op)

    def _page_4k(self, gpa: int, op: int) -> None:
        spa, rmp = GUEST_BASE + gpa, self.m.rmp
        head, base = rmp.governing(spa)
        if head.assigned and head.page_size:               # inside a 2 MiB private page
            snp_host.psmash(self.m, base)
            self._nested_4k(gpa & ~(_2M - 1))
        e = rmp.read(spa)
        mine = e.assigned and e.asid == self.asid and e.gpa == gpa and not e.immutable
        if op == PSC_PRIVATE and not mine:
            snp_host.rmpupdate(self.m, spa, gpa, assigned=True, asid=self.asid)
        elif op == PSC_SHARED and e.assigned:
            if e.immutable or e.asid != self.asid:
                raise SnpRequestError(f"gPA {gpa:#x} is not the guest's to share ({e.owner})")
            snp_host.rmpupdate(self.m, spa)

    def _unassigned_2m(self, gpa: int) -> bool:
        return self.m.rmp.hypervisor_owned(GUEST_BASE + gpa, _2M)

    def _pd_entry(self, gpa: int) -> int:
        """Address of the nested page-directory entry that maps ``gpa``."""
        bus, table = self.m.bus, self.vmm.n_cr3
        for level in (4, 3):
            table = bus.read(table + (gpa >> (12 + 9 * (level - 1)) & 0x1FF) * 8, 8) & 0x000FFFFFFFFFF000
        return table + (gpa >> 21 & 0x1FF) * 8

    def _nested_2m(self, gpa: int) -> None:
        self.m.bus.write(self._pd_entry(gpa), 8, GUEST_BASE + gpa | 0x87)     # P RW US PS
        self._flush_tlbs()

    def _nested_4k(self, gpa: int) -> None:
        bus, pde = self.m.bus, self._pd_entry(gpa)
        if not bus.read(pde, 8) & 0x80:
            return
        table = self.vmm._alloc()
        bus.write_bytes(table, b"".join((GUEST_BASE + gpa + i * PAGE | 7).to_bytes(8, "little")
                                        for i in range(PAGES_2M)))
        bus.write(pde, 8, table | 7)
        self._flush_tlbs()

    def _flush_tlbs(self) -> None:
        """The nested tables changed: every vCPU flushes its guest TLB at its
        next VMRUN (TLB_CONTROL = 1)."""
        for v in self.vmm.vcpus:
            v.vmcb["TLB_CONTROL"] = 1

    def nested_size(self, gpa: int) -> int:
        """The nested page size that maps ``gpa`` now."""
        return _2M if self.m.bus.read(self._pd_entry(gpa), 8) & 0x80 else PAGE

    def psc_descriptor(self, desc: bytearray) -> int:
        """The GHCB PSC NAE's descriptor (struct snp_psc_desc: u16 cur_entry,
        u16 end_entry, u32 reserved, then 64-bit entries cur_page 11:0, GFN
        51:12, operation 55:52, page size 56), processed from cur_entry to
        end_entry as KVM does; the entries and cur_entry are updated in
        ``desc``.  Returns SW_EXITINFO2 (0 on success)."""
        cur, end = struct.unpack_from("<HH", desc)
        if end >= PSC_MAX_ENTRIES or 8 + 8 * (end + 1) > len(desc):
            return PSC_ERROR_INVALID_HDR
        for i in range(cur, end + 1):
            raw = struct.unpack_from("<Q", desc, 8 + 8 * i)[0]
            cur_page, gfn, op, huge = raw & 0xFFF, raw >> 12 & ((1 << 40) - 1), raw >> 52 & 0xF, raw >> 56 & 1
            npages = PAGES_2M if huge else 1
            if cur_page > npages or gfn % npages:
                return PSC_ERROR_INVALID_ENTRY
            try:
                if op in (PSC_PRIVATE, PSC_SHARED):
                    if cur_page == 0:
                        self.page_state(gfn << 12, op, npages * PAGE)
                    else:                            # a partly done 2 MiB entry: the rest by 4 KiB
                        for n in range(cur_page, npages):
                            self.page_state(gfn + n << 12, op)
                elif op == PSC_PSMASH and huge:
                    head = self.m.rmp.read(GUEST_BASE + (gfn << 12))
                    if head.assigned and head.page_size:
                        snp_host.psmash(self.m, GUEST_BASE + (gfn << 12))
                        self._nested_4k(gfn << 12)
            except SnpRequestError:
                return PSC_ERROR_GENERIC
            struct.pack_into("<Q", desc, 8 + 8 * i, raw & ~0xFFF | npages)
            struct.pack_into("<H", desc, 0, i + 1)
        return 0

    # ---------------------------------------------------------------- AP creation, VMPLs
    def ap_creation(self, vcpu_index: int, request: int, vmpl: int, vmsa_gpa: int) -> int | None:
        """Record the guest's VMSA for (vCPU, VMPL); the SPA the vCPU should
        run now (request AP_CREATE at the VMPL it runs at), else None."""
        v = self.vcpu(vcpu_index)
        if request == AP_DESTROY:
            v.vmsas.pop(vmpl, None)
            return None
        if request not in (AP_CREATE_ON_INIT, AP_CREATE) or vmpl > 3:
            raise SnpRequestError(f"AP creation request {request} for VMPL {vmpl}")
        if vmsa_gpa % PAGE or vmsa_gpa % _2M == 0 or vmsa_gpa + PAGE > self.vmm.guest_mem:
            # KVM refuses a 2 MiB-aligned VMSA (an SNP erratum: a large page over a VMSA).
            raise SnpRequestError(f"AP VMSA at gPA {vmsa_gpa:#x}")
        v.vmsas[vmpl] = GUEST_BASE + vmsa_gpa
        return v.vmsas[vmpl] if request == AP_CREATE and vmpl == v.vmpl else None

    def run_vmpl(self, vcpu_index: int, vmcb, target: int) -> None:
        """Switch the vCPU's VMCB to the VMSA of VMPL ``target``, keeping the
        GHCB MSR of the VMPL that stops (VMCB 0A0h, after its answer) and
        restoring the target's."""
        v = self.vcpu(vcpu_index)
        if target not in v.vmsas:
            raise SnpRequestError(f"vCPU {vcpu_index} has no VMSA for VMPL {target}")
        v.ghcb_msr[v.vmpl] = vmcb["GHCB_GPA"]
        v.vmpl = target
        vmcb["VMSA_PA"] = v.vmsas[target]
        vmcb["GHCB_GPA"] = v.ghcb_msr.get(target, 0)
