"""The ISA-era devices of QEMU's pc machine, at their usual ports."""
from .console import StdoutConsole
from .uart16550 import Uart16550
from .debug_exit import DebugExit
from .pic8259 import Pic8259
from .pit8254 import Pit8254, SystemControlPortB
from .cmos_rtc import CmosRtc
from .fw_cfg import FwCfg
from .misc_ports import SystemControlPortA, PostCodePort, ResetControlRegister


def attach(machine) -> None:
    cfg = machine.config
    machine.pic = Pic8259(machine)
    machine.uart = Uart16550(machine, out=cfg.serial_out or StdoutConsole(), inp=cfg.serial_in)
    machine.debug_exit = DebugExit(machine)
    machine.pit = Pit8254(machine)
    machine.port_b = SystemControlPortB(machine, machine.pit)
    machine.rtc = CmosRtc(machine)
    machine.fw_cfg = FwCfg(machine, cmdline=cfg.append, ncpus=cfg.smp)
    devices = [machine.pic, machine.uart, machine.debug_exit, machine.pit, machine.port_b,
               machine.rtc, machine.fw_cfg, SystemControlPortA(machine), PostCodePort(machine),
               ResetControlRegister(machine)]
    for dev in devices:
        dev.register(machine)
