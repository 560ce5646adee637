"""Instructions formatted for people: iced-x86's Intel formatter, with branch
targets and the address itself symbolized from the kernel's ELF symbols."""
import iced_x86

from . import memory

_FORMATTER = None


def formatter():
    global _FORMATTER
    if _FORMATTER is None:
        f = iced_x86.Formatter(iced_x86.FormatterSyntax.INTEL)
        f.space_after_operand_separator = True
        f.hex_prefix, f.hex_suffix = "0x", ""
        _FORMATTER = f
    return _FORMATTER


def format_insn(insn, symbols=None) -> str:
    text = formatter().format(insn)
    if symbols is None:
        return text
    target = None
    if insn.is_jmp_short_or_near or insn.is_call_near or insn.is_jcc_short_or_near:
        target = insn.near_branch_target
    elif insn.is_ip_rel_memory_operand:
        target = insn.ip_rel_memory_address
    sym = symbols.describe(target) if target is not None else ""
    return f"{text} {sym}" if sym else text


def decode(code: bytes, address: int, bits: int, count: int):
    """Up to ``count`` iced instructions from ``code`` at ``address``."""
    dec = iced_x86.Decoder(bits, code, iced_x86.DecoderOptions.AMD, ip=address)
    out = []
    for insn in dec:
        if len(out) == count or insn.code == iced_x86.Code.INVALID and dec.last_error == \
                iced_x86.DecoderError.NO_MORE_BYTES:
            break
        out.append(insn)
    return out


def disassemble(cpu, address: int, count: int = 1, bits: int = None, context=None) -> list:
    """``count`` formatted lines from linear ``address`` (as the CPU sees
    memory): ``0x101234 <f+0x14>: mov rax, [rbx]``; unreadable memory gives
    one line saying why."""
    symbols = cpu.machine.symbols
    bits = bits or cpu.bits
    code = b""
    for n in (count * 15, 15, 1):
        try:
            code = memory.read_virtual(cpu, address, n, context)
            break
        except memory.DebugMemoryError as e:
            err = str(e)
    if not code:
        return [f"{address:#x}: ({err})"]
    lines = []
    for insn in decode(code, address, bits, count):
        sym = symbols.describe(insn.ip)
        text = "(bad)" if insn.code == iced_x86.Code.INVALID else format_insn(insn, symbols)
        lines.append(f"{insn.ip:#x}{' ' + sym if sym else ''}: {text}")
    return lines
