"""Checkpoints: atomic writes, discovery, and rebuilding a model from one.

A checkpoint is one ``torch.save`` file ``DIR/checkpoints/step_{step:09d}.pt`` holding
``{"version", "step", "config", "model", "optimizer", "ema", "carry", "rng", "world_size",
"held_out", "dataset"}`` (built by ``hrm_fast.trainer.state.make_payload``; ``ema``: the
averaged network weights as a plain {name: tensor} dict, or None; ``held_out``: the held-out
score's state, ``hrm_fast.trainer.heldout``, absent or None when off):
tensors and plain Python data only (dicts, lists, tuples, str, numbers, bools, None). It is written
to a temporary file in the same folder, fsynced, then renamed over the final name, so a crash or a
full disk mid-write leaves every earlier checkpoint intact.

Loading is weights-only (``torch.load(weights_only=True)``): a file whose pickle names any other
Python global, the way a ``__reduce__`` payload that would run code does, is refused without
executing anything. Version-1 files were plain data already, so they load unchanged.
"""

from __future__ import annotations

import errno
import pickle
import re
from pathlib import Path

import torch

from hrm_fast.config import RunConfig
from hrm_fast.errors import UserError
from hrm_fast.files import atomic_write, os_reason

VERSION = 1
_NAME = re.compile(r"^step_(\d{9})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:09d}.pt"


BEST_NAME = "best.pt"


def best_path(run_dir: Path) -> Path:
    """``RUN/best.pt``: the checkpoint with the best held-out score (``--eval-every``), a normal
    checkpoint outside ``checkpoints/`` so pruning never removes it."""
    return Path(run_dir) / BEST_NAME


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, rename: OSError on failure, old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f) -> None:
        sink = _KeepsWriteError(f)
        try:
            torch.save(obj, sink)
        except RuntimeError as e:
            if sink.error is not None:  # torch's zip writer reports a full disk as a bare
                raise sink.error from None  # RuntimeError ("unexpected pos"): give the OS error
            if isinstance(e.__context__, KeyboardInterrupt):  # a second Ctrl-C mid-save: the
                raise KeyboardInterrupt from None  # writer's cleanup failed, the stop did not
            raise

    atomic_write(path, write)


class _KeepsWriteError:
    """A file wrapper that remembers the OSError of a failed write (ENOSPC, EIO)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def prune(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its latest checkpoint)."""
    p = Path(path)
    if p.is_dir():
        ckpts = list_checkpoints(p)
        if not ckpts:
            raise UserError(f"{p}: no checkpoints (expected {checkpoint_dir(p)}/step_*.pt)")
        return ckpts[-1]
    if not p.exists():
        if p.name == BEST_NAME and checkpoint_dir(p.parent).is_dir():
            raise UserError(
                f"{p}: no such file: training writes it at its first held-out evaluation "
                "(--eval-every N)"
            )
        raise UserError(f"{p}: no such checkpoint file or run directory")
    return p


class RefusedFile(UserError):
    """A torch file whose pickle references code, not just tensors and plain data."""


# How torch names a refused global: "GLOBAL module.name was not an allowed global".
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+) was not")


def read_weights_only(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with every failure as one line naming the file.

    Nothing in the file is executed: weights-only unpickling builds tensors and plain data and
    refuses any other global (``RefusedFile``) before calling it.
    """
    p = Path(path)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = _GLOBAL.search(text)
        if m:  # a well-formed reference to code; random bytes rarely spell one
            raise RefusedFile(
                f"{p}: refused: its pickle references {m.group(1)}, not only tensors and plain "
                "data, and loading it could run code (hrm-fast loads weights only)"
            ) from None
        if "Weights only load failed" in text:  # not PyTorch's advice: it suggests unsafe loading
            raise UserError(
                f"{p}: not a weights-only torch file (its pickle holds something other than "
                "tensors and plain data)"
            ) from None
        raise UserError(f"{p}: not a torch file (damaged pickle: {_first_line(e)})") from None
    except EOFError:
        raise UserError(f"{p}: empty or truncated file, not a torch checkpoint") from None
    except OSError as e:
        if e.errno == errno.EINVAL:  # PyTorchFileReader on a cut-off zip archive
            raise UserError(f"{p}: truncated or damaged torch file") from None
        raise UserError(f"{p}: cannot read: {os_reason(e)}") from None
    except Exception:  # torch's own messages here are internals ("hasRecord", a KeyError)
        raise UserError(f"{p}: not a torch file (damaged, or not written by torch.save)") from None


def _first_line(e: BaseException, limit: int = 100) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensor_dict(x) -> bool:
    return isinstance(x, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in x.items()
    )


def _check_payload(p: Path, payload) -> None:
    """A loaded object is an hrm-fast checkpoint of a version this code reads."""
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        hint = ""
        if _tensor_dict(payload) and payload:
            hint = " (a bare state dict: convert an official one with hrm-fast convert)"
        raise UserError(f"{p}: not an hrm-fast checkpoint (no 'model' and 'config'){hint}")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{p}: not an hrm-fast checkpoint (format version {version!r})")
    if version > VERSION:
        raise UserError(
            f"{p}: checkpoint format {version} is newer than this hrm-fast reads ({VERSION}); "
            "update hrm-fast"
        )
    step = payload.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise UserError(f"{p}: damaged checkpoint: 'step' is {step!r}")
    if not _tensor_dict(payload["model"]) or not payload["model"]:
        raise UserError(f"{p}: damaged checkpoint: 'model' is not a dict of tensors")
    for key in ("carry", "rng"):
        if payload.get(key) is not None and not _tensor_dict(payload[key]):
            raise UserError(f"{p}: damaged checkpoint: '{key}' is not a dict of tensors")
    opt = payload.get("optimizer")
    if opt is not None and not (isinstance(opt, dict) and {"state", "param_groups"} <= set(opt)):
        raise UserError(f"{p}: damaged checkpoint: 'optimizer' is not an optimizer state")
    if not isinstance(payload.get("dataset", {}), dict):
        raise UserError(f"{p}: damaged checkpoint: 'dataset' is not a dict")
    try:
        RunConfig.from_dict(payload["config"]).validate()
    except (TypeError, ValueError) as e:
        raise UserError(f"{p}: damaged checkpoint: config: {e}") from None


def load(path: str | Path, map_location="cpu") -> dict:
    p = resolve(path)
    payload = read_weights_only(p, map_location)
    _check_payload(p, payload)
    payload["path"] = str(p)
    return payload


def load_latest(run_dir: Path, map_location="cpu", on_skip=None) -> dict | None:
    """The newest checkpoint that loads; None when there is none.

    A damaged newest one (say, cut short by a crash) falls back to the one before, reported
    through ``on_skip(message)``. A refused one (code in its pickle) is an error, never skipped:
    it means someone else wrote into the run. When none loads, the newest one's error is raised.
    """
    ckpts = list_checkpoints(run_dir)
    first_error = None
    for p in reversed(ckpts):
        try:
            return load(p, map_location)
        except RefusedFile:
            raise
        except UserError as e:
            first_error = first_error or e
            if on_skip is not None:
                on_skip(f"skipping {e}")
    if first_error is not None:
        raise first_error
    return None


def first_non_finite(state: dict) -> str | None:
    """The first key of a state dict holding NaN or inf, or None."""
    for k, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            return k
    return None


def refuse_non_finite(payload: dict) -> None:
    """A diverged run's weights score as an ordinary (bad) model; say what they are instead."""
    key = first_non_finite(payload["model"])
    if key is None and isinstance(payload.get("ema"), dict):
        key = first_non_finite(payload["ema"])
    if key is not None:
        raise UserError(
            f"{payload['path']}: the weights hold NaN or inf (key {key!r}): the run diverged; "
            "use an earlier checkpoint"
        )


def model_from_checkpoint(
    path, device="cpu", backend="reference", dtype=torch.float32, attention="kernel"
):
    """Rebuild the model (HRM or TRM) in a checkpoint (a path, or a payload ``load`` read),
    with its EMA weights where it has them. Returns (model in eval mode, RunConfig, payload)."""
    from hrm_fast.arch import build_model, expected_shapes

    payload = path if isinstance(path, dict) else load(path, map_location="cpu")
    cfg = RunConfig.from_dict(payload["config"])
    # The table's own shape, not a count stored beside it: a wrong count cannot allocate.
    table = payload["model"].get("inner.puzzle_emb.weights")
    n_ids = int(table.shape[0]) if table is not None and table.ndim == 2 else 1
    # Shapes before allocation: a config claiming a huge model must not get to build it.
    for key, shape in expected_shapes(cfg.model, n_ids, cfg.seq_len).items():
        t = payload["model"].get(key)
        if t is None or tuple(t.shape) != shape:
            got = "missing" if t is None else f"shape {tuple(t.shape)}"
            raise UserError(
                f"{payload['path']}: model state does not match its config "
                f"(key {key!r}: {got}, the config gives {shape})"
            )
    try:
        model = build_model(
            cfg.model,
            seq_len=cfg.seq_len,
            num_puzzle_ids=n_ids,
            batch_size=cfg.train.batch_size,
            backend=backend,
            forward_dtype=dtype,
            attention=attention,
        )
        missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        raise UserError(
            f"{payload['path']}: model state does not match its config ({_first_line(e)})"
        ) from None
    missing = [k for k in missing if not k.endswith(("local_weights", "local_ids"))]
    if missing or unexpected:
        raise UserError(
            f"{payload['path']}: model state does not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if payload.get("ema") is not None:
        from hrm_fast.ema import load_ema_weights

        try:
            load_ema_weights(model, payload["ema"])
        except KeyError as e:
            raise UserError(f"{payload['path']}: {e.args[0]}") from None
    return model.to(device).eval(), cfg, payload


def default_out(ckpt_path: Path) -> Path:
    """The run directory of a checkpoint: the parent of its ``checkpoints/`` folder."""
    parent = ckpt_path.parent
    return parent.parent if parent.name == "checkpoints" else parent
