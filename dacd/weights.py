"""Is a safetensors file whole? A cheap check (header and size only, no tensors read) so that a
truncated or overwritten weights file is reported by name, with the fix, instead of surfacing
as a loader's "Unable to load weights" from deep inside diffusers or peft."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import struct
from pathlib import Path

from .defaults import LAYOUT

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


def model_fingerprint(model: str | Path, skip: tuple[str, ...] = ()) -> str:
    """A model folder's content (and its base's, when dacd_config.json names a relative base that
    exists): 16 hex digits that change when any weight or config file changes. Files whose name
    matches a pattern of `skip` (fnmatch; e.g. calibration curves) are left out."""
    h, folder = hashlib.sha256(), Path(model)
    folders = [folder]
    cfg = folder / LAYOUT.dacd_config
    if cfg.is_file():
        base = json.loads(cfg.read_text()).get("base", "")
        if base and (folder / base).is_dir():
            folders.append(folder / base)
    for f in folders:
        for file in sorted(p for p in f.rglob("*") if p.is_file() and p.suffix not in (".md", ".png")
                           and not any(fnmatch.fnmatchcase(p.name, pat) for pat in skip)):
            h.update(str(file.relative_to(f)).encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:16]
