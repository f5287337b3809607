"""Training checkpoints: written atomically (temporary directory, fsync, rename, then the ``latest`` pointer),
with every RNG state in a form ``torch.load(weights_only=True)`` reads back."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagegpt.checkpoint import CheckpointError, atomic_write_text, save_torch

__all__ = ["STATE_FILE", "latest_checkpoint", "write_checkpoint", "read_state", "rng_state", "set_rng_state"]

STATE_FILE = "trainer_state.pt"
STATE_KEYS = ("step", "optimizer", "rng", "batches", "world_size", "elapsed_s")


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory (plain tensors and numbers: nothing is unpickled as code).

    Raises :class:`~imagegpt.checkpoint.CheckpointError` naming the file when it is truncated, corrupt or no
    training state."""
    path = Path(checkpoint) / STATE_FILE
    hint = (f"delete {Path(checkpoint)} (and {Path(checkpoint).parent / 'latest'}) to resume from the checkpoint "
            "before it")  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated zip, pickle that is not plain data, garbage
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable training state ({type(e).__name__}: {first[:200]}); it "
                              f"may be truncated or corrupt: {hint}") from None  # fmt: skip
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is no training state (missing {', '.join(missing)}): {hint}")
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG as tensors, lists and numbers, so that torch.load(weights_only=True) reads it back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss": gauss}}  # fmt: skip


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))  # fmt: skip
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # directories cannot be fsynced everywhere (Windows); the files were
        pass
    finally:
        os.close(fd)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (what ``checkpoints/latest`` names), or None."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise CheckpointError(f"{pointer} is not UTF-8 text: it should hold a checkpoint name (step-0000500); "
                                  "delete it to resume from the newest complete checkpoint") from None  # fmt: skip
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise CheckpointError(f"{pointer} should hold a checkpoint name (step-0000500), got {name[:80]!r}; "
                                  "delete it to resume from the newest complete checkpoint")  # fmt: skip
        path = root / name
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete")
        return path
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return done[-1] if done else None  # a crash between the rename and the pointer: the renamed one is complete


def write_checkpoint(root: Path, step: int, model: torch.nn.Module, state: dict, files: list[Path],
                      keep_last: int) -> Path:  # fmt: skip
    """Build the checkpoint in a temporary directory, fsync it, rename it into place, then move ``latest``."""
    name = f"step-{step:07d}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        model.save_pretrained(tmp)
        for f in files:
            shutil.copy2(f, tmp / f.name)
        save_torch(state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); a checkpoint is an ordinary directory
        final = root / name
        if final.exists():  # a stale one from an abandoned run: it is not `latest`, so replacing it is safe
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", name + "\n")
    if keep_last:
        for old in sorted(root.glob("step-*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final
