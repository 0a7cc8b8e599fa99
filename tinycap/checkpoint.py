"""Model checkpoints as plain dicts {"model", "config", "vocab_sha", ...} (guide and MicroCap)."""

from dataclasses import asdict
from pathlib import Path

import torch

from tinycap.errors import TinyCapError


def checkpoint(model, vocab, **extra):
    """Plain-dict checkpoint; `vocab` (tinycap.vocab.Vocab) is fingerprinted to catch mismatches."""
    return {"model": model.state_dict(), "config": asdict(model.cfg), "vocab_sha": vocab.sha, **extra}


def load(path, config_cls, model_cls, kind, vocab=None):
    """Rebuild `model_cls(config_cls(**config))` from `path` -> (model in eval mode, the checkpoint dict).

    With `vocab`, a checkpoint built on another vocabulary is refused. Every failure is one line."""
    path = Path(path)
    if not path.is_file():
        raise TinyCapError(path, "file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = config_cls(**ckpt["config"])
    except Exception as e:  # unreadable file, not a dict, wrong config keys
        raise TinyCapError(
            path, f"not a {kind} checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if vocab is not None:
        vocab.check(ckpt.get("vocab_sha"), cfg.vocab_size, path)
    model = model_cls(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except Exception as e:  # wrong keys or shapes
        raise TinyCapError(path, f"{kind} weights do not fit the config ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return model.eval(), ckpt
