"""Issue 13, findings 5 and 6: the AMD-SP's buffers, reached from guest code
through the PSP mailbox, and SEV key slots that hold no key."""
import pytest

from svmsim.fuzz import kernels as K
from svmsim.sev.api import SevCmd, SevStatus, pack_buffer
from test_reliability import MIB, boot


# -- finding 5: AMD-SP buffers, from guest code through the mailbox -------------------------
def _mailbox_statuses(commands, mem="64M"):
    r, out, _ = boot(K.mailbox_kernel(commands), mem, max_insns=1_000_000, timeout=60)
    assert r.status == 1, r.reason
    return [int(line, 16) for line in out.split()]


RESP = 1 << 31
MAILBOX = K.PSP_MMIO + K.CMDRESP


@pytest.mark.parametrize("buffer", [MAILBOX, K.PSP_MMIO + K.CMDBUFF_LO, K.PSP_MMIO])
def test_buffer_in_the_mailbox_itself(buffer):
    """Finding 5: a parameter buffer that is the mailbox's own register made
    the firmware write into CMDRESP, recursing until RecursionError."""
    got = _mailbox_statuses([(SevCmd.PLATFORM_STATUS, buffer), (SevCmd.INIT, pack_buffer("init")),
                             (SevCmd.PLATFORM_STATUS, buffer)])
    assert got == [RESP | SevStatus.INVALID_ADDRESS, RESP | SevStatus.SUCCESS,
                   RESP | SevStatus.INVALID_ADDRESS]


def test_buffers_outside_ram_and_huge_lengths():
    """Finding 5: LAUNCH_UPDATE_DATA 4 MiB past the end of RAM returned
    SUCCESS; a length near 2^31 ran for minutes inside one MMIO write."""
    ram = 64 * MIB
    handle = 1        # the first LAUNCH_START's handle
    got = _mailbox_statuses([
        (SevCmd.INIT, pack_buffer("init")),
        (SevCmd.LAUNCH_START, pack_buffer("launch_start", policy=0)),
        (SevCmd.LAUNCH_UPDATE_DATA, pack_buffer("update", handle=handle, address=ram + 4 * MIB, len=4096)),
        (SevCmd.LAUNCH_UPDATE_DATA, pack_buffer("update", handle=handle, address=ram - 4096, len=8192)),
        (SevCmd.LAUNCH_UPDATE_DATA, pack_buffer("update", handle=handle, address=0x200000, len=0x7FFFFFF0)),
        (SevCmd.LAUNCH_UPDATE_DATA, pack_buffer("update", handle=handle, address=MAILBOX & ~15, len=16)),
        (SevCmd.LAUNCH_UPDATE_DATA, pack_buffer("update", handle=handle, address=0x200000, len=4096)),
        (SevCmd.GET_ID, pack_buffer("addr_len", address=ram - 8, len=128)),
    ])
    assert got == [RESP | s for s in (SevStatus.SUCCESS, SevStatus.SUCCESS, SevStatus.INVALID_ADDRESS,
                                      SevStatus.INVALID_ADDRESS, SevStatus.INVALID_LENGTH,
                                      SevStatus.INVALID_ADDRESS, SevStatus.SUCCESS,
                                      SevStatus.INVALID_ADDRESS)]


# -- finding 6: an SEV guest whose ASID has no key ---------------------------------------------
def test_empty_key_slot_is_not_a_known_key():
    """Finding 6: an empty slot acted as the all-zero AES key, so a hypervisor
    could pre-encrypt code or secrets for a guest never ACTIVATEd."""
    from svmsim.memory.encryption import EncryptionEngine
    e = EncryptionEngine(15)
    ram = bytearray(64)
    rd = lambda spa, n: bytes(ram[spa:spa + n])                                   # noqa: E731
    plain = b"attacker's code!"
    ram[16:32] = EncryptionEngine.encrypt(bytes(16), 16, plain)
    seen = {e.read(rd, 16, 16, asid) for asid in (1, 2)}
    assert plain not in seen and len(seen) == 2               # garbage, and a different key per slot
    e.load_key(1, bytes(range(16)))
    e.unload_key(1)                                           # DEACTIVATE
    assert e.read(rd, 16, 16, 1) not in seen | {plain}         # a fresh key after each unload


def test_vmrun_of_an_sev_guest_without_a_key_runs_no_injected_code():
    """The full attack: the hypervisor encrypts guest code and a 'secret' with
    the zero key and runs the guest on an ASID the AMD-SP never activated (or
    deactivated).  The guest's fetches decrypt with an unknown key: the
    injected code does not run (it would halt with RAX = 0x5EC2E7)."""
    from test_sev_hw import sev_rig
    from svmsim.svm.exits import ExitCode
    for asid in (5, 9):                                       # SEV (non-ES) ASIDs: 5..15
        r = sev_rig("mov eax, 0x5EC2E7\nhlt", asid=asid, key=bytes(16))
        r.m.mem_engine.unload_key(asid)                     # as after DEACTIVATE; never ACTIVATEd
        try:
            r.run(max_insns=2000)
        except Exception:
            pass                                             # garbage code: any architectural end
        assert not (r.vmcb["EXITCODE"] == ExitCode.HLT and r.vmcb["RAX"] & 0xFFFFFFFF == 0x5EC2E7)
        assert any("no key loaded" in n for n in r.m.notes)
