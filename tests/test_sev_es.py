"""SEV-ES (APM vol 2, 15.35): the VMSA layout, its integrity, the world
switch through the encrypted VMSA, automatic and non-automatic exits (#VC),
VMGEXIT and the GHCB MSR (issue 9)."""
from svmsim.memory.encryption import EncryptionEngine
from svmsim.svm import vmsa


def test_vmsa_layout_is_the_expanded_save_area():
    """Appendix B table B-4 (Linux struct sev_es_save_area, 1648 bytes): no
    field overlaps another, GPRs at their fixed offsets, FPU area at 400h."""
    fields = sorted(vmsa.FIELDS, key=lambda f: f.offset)
    for a, b in zip(fields, fields[1:]):
        assert a.end <= b.offset, (a.name, b.name)
    at = {f.name: f.offset for f in vmsa.FIELDS}
    assert (at["RAX"], at["RSP"], at["RCX"], at["RBX"], at["R15"]) == (0x1F8, 0x1D8, 0x308, 0x318, 0x378)
    assert (at["SEV_FEATURES"], at["XCR0"], at["MXCSR"]) == (0x3B0, 0x3E8, 0x408)
    assert vmsa.YMM_HI_REGS + 16 * 16 == vmsa.VMSA_SIZE == 1648


def test_vmsa_seal_detects_any_change():
    """The integrity checksum (15.35.8) covers the whole page and its address."""
    eng = EncryptionEngine(15)
    page = bytes(range(256)) * 16
    eng.seal_vmsa(0x5000, page)
    assert eng.vmsa_intact(0x5000, page)
    assert not eng.vmsa_intact(0x5000, page[:-1] + b"\x00")
    assert not eng.vmsa_intact(0x6000, page)
    eng.unseal_vmsa(0x5000)
    assert not eng.vmsa_intact(0x5000, page)
