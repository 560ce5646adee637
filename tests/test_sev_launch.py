"""An SEV guest launched end to end (issue 5, items 5-7): the reference VMM
drives the AMD-SP's firmware API (LAUNCH_START .. ACTIVATE), the guest owner
verifies the measurement and injects a secret, the guest runs encrypted."""
import io
import subprocess
import sys

import guestbuild as gb
from svmsim.machine import Machine
from svmsim.sev.crypto import GuestOwner
from svmsim.vmm import Vmm
from svmsim.vmm import launch_sev
from svmsim.vmm.vmm import GUEST_BASE

SECRET = b"the disk key is 42\0"


def launch(secret=SECRET, tamper=False):
    out = io.BytesIO()
    m = Machine(mem_size="128M", serial_out=out)
    vmm = Vmm(m, asid=5)
    info = vmm.load_kernel(str(gb.build_guest("sev_guest", kind="asm")), "")
    owner = GuestOwner(policy=1)
    if tamper:                                 # the owner expects another image
        real = owner.verify_measurement
        owner.verify_measurement = lambda blob, a, b, c, digest: real(blob, a, b, c, digest[::-1])
    result = launch_sev(vmm, owner, secret, 0x200000,
                        regions=[(info.load_addr, info.load_end - info.load_addr)])
    return m, vmm, result, out


def test_sev_guest_runs_encrypted_and_gets_the_secret():
    m, vmm, launch_result, out = launch()
    assert launch_result.verified
    r = vmm.run()
    text = out.getvalue().decode()
    assert r.reason == "isa-debug-exit: guest wrote 0x0"
    assert "SEV_STATUS.SEV = 1, my memory is encrypted" in text
    assert "secret from the guest owner: the disk key is 42\n" in text
    assert "private page at 0x300000 reads: only the guest can read this line" in text
    # Outside the guest: ciphertext only (hypervisor, DMA, a debugger reading DRAM).
    dram = m.bus.ram.buf[:m.bus.ram.size]
    assert b"only the guest can read" not in dram
    assert SECRET[:12] not in dram
    assert b"sev guest: secret" not in m.bus.read_bytes(GUEST_BASE + 0x100000, 0x1000)
    # ... except the page the guest mapped with C = 0 after turning paging on.
    assert "shared page at 0x600000 reads: hello host, this page is shared" in text
    assert m.bus.read_bytes(GUEST_BASE + 0x600000, 31) == b"hello host, this page is shared"


def test_wrong_measurement_means_no_secret():
    m, vmm, launch_result, out = launch(tamper=True)
    assert not launch_result.verified
    vmm.run()
    text = out.getvalue().decode(errors="replace")
    # No LAUNCH_SECRET: the guest reads never-written memory through its key -> garbage.
    assert "secret from the guest owner: " in text and "the disk key" not in text


def test_demo_sev_command():
    p = subprocess.run([sys.executable, "-m", "svmsim", "demo", "sev"], capture_output=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-400:]
    err = p.stderr.decode()
    assert "verified, secret injected" in err and "DRAM holds the secret in plaintext: no" in err
    assert b"secret from the guest owner: disk key" in p.stdout
