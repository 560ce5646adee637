"""A reference hypervisor written in Python (issue 5, item 5).

``Vmm`` plays the part KVM's userspace plays: it owns a region of host RAM
as the guest's memory, builds nested page tables and a VMCB, and runs the
guest by executing real VMRUN instructions on svmsim's CPU from a three-
instruction host stub (``mov rax, vmcb; vmrun; hlt``), handling each
#VMEXIT in Python.  See ``svmsim.vmm.vmm``.
"""
from .vmm import Vmm, GuestExit
from .sev_launch import launch_sev, SevLaunch
from .sev_es import launch_es, EsLaunch, GhcbServer

__all__ = ["Vmm", "GuestExit", "launch_sev", "SevLaunch", "launch_es", "EsLaunch", "GhcbServer"]
