"""Checkpoints: weights plus everything later stages need (model config, preprocessing, landmark schema)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from core import preprocess, schema
from core.files import atomic_write_bytes

from .model import MobileNetL, ModelConfig

FORMAT = "mobilenet_l-checkpoint-v1"


def save(path: Path, model: torch.nn.Module, format: str = FORMAT, **extra) -> None:
    """Atomically write a checkpoint that loads with torch.load(weights_only=True).

    ``model`` needs a ``config`` with ``to_dict()``; ``format`` names the network family (FAN* has its own).
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {
        "format": format,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": model.config.to_dict(),
        "preprocess": preprocess.describe(),
        "schema": schema.describe(),
        **extra,
    }
    _write(path, state)


def update(path: Path, format: str = FORMAT, **changes) -> None:
    """Atomically rewrite entries of a checkpoint's record, keeping its weights."""
    state = load(path, format)
    state.update(changes)
    _write(path, state)


def _write(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load(path: Path, format: str = FORMAT) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != format:
        raise ValueError(f"{path}: not a {format} checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    if state["preprocess"]["version"] != preprocess.PREPROCESS_VERSION:
        raise ValueError(f"{path}: trained with preprocessing {state['preprocess']['version']!r}, "
                         f"this code has {preprocess.PREPROCESS_VERSION!r}")
    return state


def load_model(path: Path) -> MobileNetL:
    """Rebuild the network of a checkpoint, in eval mode."""
    state = load(path)
    model = MobileNetL(ModelConfig(**state["config"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the model config: {e}") from e
    return model.eval()
