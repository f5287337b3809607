"""Checkpoints in transformers' layout: ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``).

Our state dict is transformers' (same names, GPT-2 ``Conv1D`` projections with weight (in, out)), so tensors go
to and from files as they are; state dicts of the old ``nn.Linear`` layout are recognised and converted
(:mod:`imagegpt.layout`). Files are written atomically (temporary name, then rename), and loading never unpickles
code (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imagegpt.atomic import atomic_write as _atomic_write
from imagegpt.atomic import atomic_write_text
from imagegpt.config import ImageGPTConfig
from imagegpt.generation_config import GENERATION_CONFIG_NAME, GenerationConfig
from imagegpt.hub import resolve_file
from imagegpt.hooks import ModelHooksMixin
from imagegpt.layout import from_hf_state_dict, from_linear_layout, to_hf_state_dict
from imagegpt.layers import init_module_weights

logger = logging.getLogger(__name__)

__all__ = [
    "PreTrainedMixin",
    "CheckpointError",
    "to_hf_state_dict",
    "from_hf_state_dict",
    "load_weights",
    "atomic_write_text",
    "save_torch",
]

PREFIX = "transformer."
HEAD_KEYS = ("lm_head.", "score.")  # task heads: may be absent (freshly initialized) or left unused

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model. A ValueError, and a RuntimeError as the size
    mismatches transformers (and torch's ``load_state_dict``) raise."""


class _Writer:
    """A plain file-like object for torch.save: given a real file, torch writes through its descriptor and turns
    an OSError (a full disk) into "unexpected pos"; through this, the OSError itself reaches the caller."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e  # torch may bury it under a RuntimeError while closing the archive
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, except that write errors (ENOSPC ...) arrive as the OSError they are."""
    with open(path, "wb") as f:
        writer = _Writer(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError for truncated/corrupt files
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}); is it truncated?") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be read as plain tensors ({type(e).__name__}: {e}). It may be truncated, or pickle "
            "code, which is never executed here; convert it to safetensors."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> dict[str, torch.Tensor]:
    """Read the raw (transformers-layout) state dict of a local directory or Hub id, sharded or not."""
    for filename in WEIGHT_FILES:
        path = resolve_file(name_or_path, filename, required=False, **hub_kwargs)
        if path is None:
            continue
        if not filename.endswith(".index.json"):
            return _read_file(path)
        try:
            index = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{path} is not a valid shard index ({e})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index.values())):
            state.update(_read_file(resolve_file(name_or_path, shard, **hub_kwargs)))
        return state
    raise CheckpointError(f"no weights in {name_or_path}: expected one of {', '.join(WEIGHT_FILES)}")


def _resolve_dtype(torch_dtype: Any, state: dict[str, torch.Tensor]) -> torch.dtype | None:
    if torch_dtype is None:
        return None
    if torch_dtype == "auto":
        floats = [v.dtype for v in state.values() if v.dtype.is_floating_point]
        return floats[0] if floats else None
    if isinstance(torch_dtype, str):
        value = getattr(torch, torch_dtype.removeprefix("torch."), None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown torch_dtype {torch_dtype!r}; use e.g. 'float32', 'bfloat16' or 'auto'")
        return value
    return torch_dtype


# Models this large are built on the meta device before loading: initializing ~20 M parameters costs about as much
# as the meta device's one-off start-up (it imports torch._dynamo, ~1 s), and bigger ones much more.
META_BUILD_MIN_PARAMS = 20_000_000


def _approx_params(config: ImageGPTConfig) -> int:
    """Parameter count of the transformer body (embeddings + blocks), enough to choose how to build it."""
    e, layers = config.n_embd, config.n_layer
    return config.vocab_size * e * 2 + config.n_positions * e + layers * (4 * e * e + 2 * e * config.inner_dim)


class PreTrainedMixin(ModelHooksMixin):
    """``from_pretrained`` / ``save_pretrained`` shared by the three model classes (other hooks: ModelHooksMixin)."""

    config: ImageGPTConfig

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        output_loading_info: bool = False,
        attn_implementation: str | None = None,
        config: ImageGPTConfig | None = None,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        strict: bool = True,
        ignore_mismatched_sizes: bool = False,
        cache_dir: str | os.PathLike | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **config_overrides: Any,
    ):
        """Load a model saved by ours or by transformers, from a directory or a Hub id.

        ``config_overrides`` (e.g. ``num_labels=10``, ``resid_pdrop=0.0``) replace fields of the stored config.
        A task head the checkpoint lacks (a classifier from a causal-LM checkpoint) is freshly initialized, with a
        warning. Other missing, unexpected or mis-shaped weights raise :class:`CheckpointError` listing them;
        ``strict=False`` turns that into a warning (missing ones are initialized), and
        ``ignore_mismatched_sizes=True`` re-initializes mis-shaped ones.

        As transformers: ``name_or_path=None`` with ``config=`` and ``state_dict=`` (ours, which is transformers',
        or our old ``nn.Linear`` layout) builds the model from those; ``output_loading_info=True`` also returns
        ``{"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}``; ``attn_implementation`` is
        "sdpa" or "eager".
        """
        name_or_path = pretrained_model_name_or_path
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("You are using `from_pretrained` with a meta device context manager: it loads real "
                               "weights, so call it outside `with torch.device('meta')`")  # fmt: skip
        hub = {"cache_dir": cache_dir, "revision": revision, "token": token, "local_files_only": local_files_only}
        if name_or_path is None and (config is None or state_dict is None):
            raise ValueError("from_pretrained(None, ...) needs both config= and state_dict=")
        if config is None:
            config = ImageGPTConfig.from_pretrained(name_or_path, **hub, **config_overrides)
        elif config_overrides:
            config = config.copy(**config_overrides)
        state = from_hf_state_dict(state_dict if state_dict is not None else load_weights(name_or_path, **hub))
        target_dtype = _resolve_dtype(dtype if dtype is not None else torch_dtype, state)
        if _approx_params(config) >= META_BUILD_MIN_PARAMS:
            with torch.device("meta"):  # no time spent initializing weights that are about to be replaced
                model = cls(config)
        else:  # small models initialize in milliseconds; the meta device's first use imports torch._dynamo (~1 s)
            with torch.random.fork_rng(devices=[]):  # as on the meta device: the caller's random draws unchanged
                model = cls(config)
        info = model._load_checkpoint_state(state, strict, ignore_mismatched_sizes, str(name_or_path or "state_dict"))
        if target_dtype is not None:
            model = model.to(target_dtype)
        if device is not None:
            model = model.to(device)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
            model.config._attn_implementation = attn_implementation
        if name_or_path is not None and getattr(model, "generation_config", None) is not None:
            path = resolve_file(name_or_path, GENERATION_CONFIG_NAME, required=False, **hub)
            if path is not None:
                model.generation_config = GenerationConfig.from_pretrained(path.parent)
        model.eval()
        return (model, info) if output_loading_info else model

    def _load_checkpoint_state(self, state, strict, ignore_mismatched_sizes, source) -> None:
        expected = dict(self.state_dict(keep_vars=True))
        has_prefix = any(k.startswith(PREFIX) for k in expected)
        if has_prefix and not any(k.startswith(PREFIX) for k in state):
            state = {(k if k.startswith(HEAD_KEYS) else PREFIX + k): v for k, v in state.items()}
        elif not has_prefix:  # the bare model: drop the prefix and any task head
            state = {k.removeprefix(PREFIX): v for k, v in state.items() if not k.startswith(HEAD_KEYS)}
        state, converted = from_linear_layout(state, {k: v.shape for k, v in expected.items()})
        if converted:
            logger.info("%s holds projection weights in the old nn.Linear layout (out, in): transposed", source)
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]
        state_shapes = {k: state[k].shape for k in mismatched}
        for key in mismatched:
            del state[key]
        head_missing = [k for k in missing if k.startswith(HEAD_KEYS)]
        head_unexpected = [k for k in unexpected if k.startswith(HEAD_KEYS)]
        missing = [k for k in missing if k not in head_missing]
        unexpected = [k for k in unexpected if k not in head_unexpected]
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched and not ignore_mismatched_sizes:
            problems.append(f"mis-shaped keys: {'; '.join(shapes)} (ignore_mismatched_sizes=True re-initializes)")
        if problems:
            message = f"checkpoint {source} does not fit {type(self).__name__}: " + " | ".join(problems)
            if strict:
                raise CheckpointError(message + " (strict=False loads anyway)")
            logger.warning(message)
        if head_unexpected:
            logger.info("checkpoint weights not used by %s: %s", type(self).__name__, ", ".join(head_unexpected))
        fresh = missing + head_missing + mismatched
        if head_missing or (mismatched and ignore_mismatched_sizes):
            reinit = [f"{k}: Reinit due to size mismatch - ckpt: {tuple(state_shapes[k])} vs model: "
                      f"{tuple(expected[k].shape)}" for k in mismatched]  # transformers' words, for log readers
            logger.warning("newly initialized (train them before use): %s", ", ".join(head_missing + reinit))
        self.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
        self._materialize(fresh)
        return {"missing_keys": set(missing + head_missing), "unexpected_keys": set(unexpected + head_unexpected),
                "mismatched_keys": {(k, tuple(state_shapes[k]), tuple(expected[k].shape)) for k in mismatched},
                "error_msgs": problems}  # fmt: skip

    def _materialize(self, names: list[str]) -> None:
        """Give the parameters still on the meta device real storage and transformers' initialization."""
        device = next((p.device for p in self.parameters() if p.device.type != "meta"), torch.device("cpu"))
        dtype = next((p.dtype for p in self.parameters() if p.device.type != "meta"), torch.float32)
        for name in names:
            module_name, _, attr = name.rpartition(".")
            module = self.get_submodule(module_name)
            old = getattr(module, attr)
            setattr(module, attr, nn.Parameter(torch.empty(old.shape, device=device, dtype=dtype)))
        for module_name in sorted({n.rpartition(".")[0] for n in names}):
            module = self.get_submodule(module_name)
            init_module_weights(module, self.config, name=module_name)

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) as transformers does."""
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        state = to_hf_state_dict({k: v.detach().cpu() for k, v in self.state_dict().items()})
        if safe_serialization:
            from safetensors.torch import save

            # serialized in memory, written by Python: a full disk is an OSError (safetensors' own writer
            # reports it as a SafetensorError string)
            _atomic_write(directory / "model.safetensors", lambda p: p.write_bytes(save(state, {"format": "pt"})))
        else:
            _atomic_write(directory / "pytorch_model.bin", lambda p: save_torch(state, p))
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.save_pretrained(directory)
        config = self.config.to_dict()
        config["architectures"] = [type(self).__name__]
        atomic_write_text(directory / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")

    def init_weights(self) -> None:
        """(Re-)initialize every weight with transformers' scheme."""
        init_module_weights(self, self.config)

