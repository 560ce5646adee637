"""CPU models as flat data (placeholder until the system-instruction work lands)."""
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass
class Profile:
    name: str
    reset_edx: int
    vendor: str = "AuthenticAMD"
    cpuid: dict = field(default_factory=dict)


PROFILES = {"epyc": Profile("epyc", 0x00A00F11)}


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown CPU profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None
