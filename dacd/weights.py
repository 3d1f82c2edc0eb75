"""Is a safetensors file whole? A cheap check (header and size only, no tensors read) so that a
truncated or overwritten weights file is reported by name, with the fix, instead of surfacing
as a loader's "Unable to load weights" from deep inside diffusers or peft."""

from __future__ import annotations

import json
import struct
from pathlib import Path

RESTORE_HINT = ("restore it (git checkout / git lfs pull for the shipped checkpoint) or rebuild it "
                "(make checkpoints, or the train/ script that wrote it)")


class DamagedWeightsError(ValueError):
    """A weights file that cannot be whole: truncated, overwritten or not safetensors at all."""


def check_safetensors(path: str | Path) -> Path:
    """`path` if it is a complete safetensors file, else DamagedWeightsError naming it and the fix."""
    path = Path(path)
    size = path.stat().st_size

    def damaged(why: str) -> DamagedWeightsError:
        return DamagedWeightsError(f"weights file {path} is damaged ({why}): {RESTORE_HINT}.")

    if size < 8:
        raise damaged(f"{size} bytes, too short for a safetensors header")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise damaged(f"its header claims {header_len} bytes but the file has {size}; truncated?")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise damaged("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise damaged(f"{size} bytes where its header needs {expected}; truncated")
    return path


def check_folder(folder: str | Path) -> None:
    """Check every safetensors file under `folder` (recursively)."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        check_safetensors(path)
