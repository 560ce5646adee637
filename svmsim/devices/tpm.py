"""A TPM 1.2 behind the TCG PC Client TIS interface at FED4_0000h, far
enough for SKINIT (APM vol 2, 15.27.4-15.27.6): the locality-4 hash
sequence and reading PCRs back.

Layout (TCG PC Client Specific TPM Interface Specification 1.2/1.3): one
4 KiB page per locality at FED4_0000h + 1000h * locality.  Registers of
localities 0-3: TPM_ACCESS (00h), TPM_STS (18h, burst count 23:8),
TPM_DATA_FIFO (24h), TPM_INTF_CAPABILITY (14h), TPM_DID_VID (F00h),
TPM_RID (F04h).  Locality 4 is "reserved for the trusted hardware": the
chipset forwards it only for the processor's special cycles, so software
accesses to FED4_4000h read all ones and write nothing; SKINIT drives its
TPM_HASH_START (28h), TPM_HASH_DATA (24h) and TPM_HASH_END (20h) through
``hash_start``/``hash_data``/``hash_end``.

TPM 1.2 semantics (TPM Main Part 1, "_TPM_HASH_START/_DATA/_END"): PCRs
17-22 reset to all ones at power-on; HASH_START resets them to zero;
HASH_END extends PCR 17 with the SHA-1 of the data received:
PCR17 = SHA-1(0^20 || SHA-1(data)).  The command interface answers
TPM_PCRRead (ordinal 15h); any other ordinal returns TPM_BAD_ORDINAL (0Ah).
DID_VID reads 0001:1014, as QEMU's tpm-tis.
"""
import hashlib
import struct

BASE, SIZE = 0xFED40000, 0x5000
ACCESS, INT_ENABLE, INTF_CAPABILITY, STS, DATA_FIFO, DID_VID, RID = 0x00, 0x08, 0x14, 0x18, 0x24, 0xF00, 0xF04
HASH_END, HASH_DATA, HASH_START = 0x20, 0x24, 0x28          # locality 4 only
ACC_ESTABLISHMENT, ACC_REQUEST_USE, ACC_ACTIVE, ACC_VALID = 0x01, 0x02, 0x20, 0x80
STS_VALID, STS_COMMAND_READY, STS_GO, STS_DATA_AVAIL, STS_EXPECT = 0x80, 0x40, 0x20, 0x10, 0x08
BURST = 64
NUM_PCRS = 24
TPM_TAG_RQU_COMMAND, TPM_TAG_RSP_COMMAND = 0x00C1, 0x00C4
TPM_ORD_PCR_READ = 0x15
TPM_BADINDEX, TPM_BAD_ORDINAL, TPM_BAD_PARAM_SIZE = 0x02, 0x0A, 0x19


class Tpm:
    def __init__(self, machine):
        self.machine = machine
        self.pcrs = [bytes(20)] * 17 + [b"\xFF" * 20] * 6 + [bytes(20)]
        self.established = False          # a locality-4 HASH_START happened
        self.active = None                # the active locality (0-3) or None
        self.command = bytearray()
        self.response = b""
        self.ready = False
        self.hash_buffer = None

    def register(self, machine=None):
        (machine or self.machine).bus.add_mmio(BASE, SIZE, self, "tpm")

    # ------------------------------------------------------------ SKINIT's special cycles
    def hash_start(self) -> None:
        self.pcrs[17:23] = [bytes(20)] * 6
        self.established = True
        self.hash_buffer = hashlib.sha1()

    def hash_data(self, data: bytes) -> None:
        if self.hash_buffer is not None:
            self.hash_buffer.update(data)

    def hash_end(self) -> None:
        if self.hash_buffer is not None:
            self.extend(17, self.hash_buffer.digest())
            self.hash_buffer = None

    def extend(self, index: int, digest: bytes) -> None:
        self.pcrs[index] = hashlib.sha1(self.pcrs[index] + digest).digest()

    # ------------------------------------------------------------ TIS registers
    def mmio_read(self, offset, size):
        locality, reg = offset >> 12, offset & 0xFFF
        if locality == 4:
            return (1 << (8 * size)) - 1
        if reg == ACCESS:
            value = ACC_VALID | (0 if self.established else ACC_ESTABLISHMENT)
            value |= ACC_ACTIVE if self.active == locality else 0
        elif STS <= reg < STS + 4:
            value = self._sts(locality) >> (8 * (reg - STS))
        elif DATA_FIFO <= reg < DATA_FIFO + 4:
            return self._fifo_read(locality, size)
        elif reg == INTF_CAPABILITY:
            value = 0                     # no interrupts, legacy byte transfers
        elif reg == DID_VID:
            value = 0x00011014
        elif reg == RID:
            value = 0x01
        else:
            value = 0
        return value & ((1 << (8 * size)) - 1)

    def mmio_write(self, offset, size, value):
        locality, reg = offset >> 12, offset & 0xFFF
        if locality == 4:
            self.machine.note("TPM: software access to locality 4 (FED4_4000h) ignored: only the "
                              "processor's SKINIT cycles reach it")
            return
        if reg == ACCESS:
            if value & ACC_REQUEST_USE and self.active is None:
                self.active = locality
            elif value & ACC_ACTIVE and self.active == locality:
                self.active = None        # relinquish
        elif reg == STS and self.active == locality:
            if value & STS_COMMAND_READY:
                self.command, self.response, self.ready = bytearray(), b"", True
            elif value & STS_GO and self._complete():
                self.response = self._execute(bytes(self.command))
                self.command = bytearray()
        elif DATA_FIFO <= reg < DATA_FIFO + 4 and self.active == locality and self.ready:
            self.command += value.to_bytes(size, "little")

    def _sts(self, locality):
        if self.active != locality:
            return 0xFF
        sts = STS_VALID
        if self.response:
            sts |= STS_DATA_AVAIL | min(BURST, len(self.response)) << 8
        else:
            sts |= (STS_COMMAND_READY if self.ready and not self.command else 0) | BURST << 8
            if self.command and not self._complete():
                sts |= STS_EXPECT
        return sts

    def _complete(self):
        return len(self.command) >= 6 and len(self.command) >= struct.unpack_from(">I", self.command, 2)[0]

    def _fifo_read(self, locality, size):
        if self.active != locality or not self.response:
            return (1 << (8 * size)) - 1
        data, self.response = self.response[:size], self.response[size:]
        return int.from_bytes(data.ljust(size, b"\xFF"), "little")

    # ------------------------------------------------------------ commands
    def _execute(self, cmd: bytes) -> bytes:
        tag, size, ordinal = struct.unpack_from(">HII", cmd)
        if tag != TPM_TAG_RQU_COMMAND or size != len(cmd):
            return struct.pack(">HII", TPM_TAG_RSP_COMMAND, 10, TPM_BAD_PARAM_SIZE)
        if ordinal != TPM_ORD_PCR_READ:
            return struct.pack(">HII", TPM_TAG_RSP_COMMAND, 10, TPM_BAD_ORDINAL)
        if size != 14:
            return struct.pack(">HII", TPM_TAG_RSP_COMMAND, 10, TPM_BAD_PARAM_SIZE)
        index = struct.unpack_from(">I", cmd, 10)[0]
        if index >= NUM_PCRS:
            return struct.pack(">HII", TPM_TAG_RSP_COMMAND, 10, TPM_BADINDEX)
        return struct.pack(">HII", TPM_TAG_RSP_COMMAND, 30, 0) + self.pcrs[index]
