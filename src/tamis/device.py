"""Where a selector's GEMMs run: numpy on the CPU, or torch (on the CPU or a CUDA GPU).

torch stays optional here: it is imported only when a device name needs it (``auto`` asks
it whether there is a GPU; without torch installed, ``auto`` is the CPU).
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, torch or cuda[:N]"
_DEVICE = re.compile(r"auto|cpu|torch|cuda(:\d+)?")


class DeviceError(ValueError):
    """A device name that is not one of DEVICE_CHOICES, or one this machine cannot use."""


def check_device_name(device: str) -> None:
    """A DeviceError unless ``device`` is one of auto, cpu, torch, cuda, cuda:N."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise DeviceError(f"device {device!r}: expected {DEVICE_CHOICES}")


def resolve_device(device: str, what: str, fallback: str = "cpu") -> str:
    """The device ``what`` runs on, from a configured name; logs the choice.

    ``auto``: ``cuda`` when torch sees a GPU, else ``fallback`` (``cpu`` = numpy, or
    ``torch`` = torch on the CPU). ``cpu``, ``torch`` and ``cuda[:N]`` are kept as they are;
    a CUDA device torch cannot see, or any other name, is a DeviceError naming ``what``.
    """
    try:
        check_device_name(device)
    except DeviceError as err:
        raise DeviceError(f"{what}: {err}") from None
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else fallback
        except ImportError:  # the numpy path needs nothing else
            device = fallback
    elif device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DeviceError(f"{what}: device {device!r}: torch sees no CUDA GPU")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"{what}: device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)"
            )
    log.info("%s on %s", what, device)
    return device
