"""Official ``hrm_act_v1`` checkpoints (sapientinc/HRM) in and out of hrm-fast.

The official trainer saves ``torch.compile(ACTLossHead(model)).state_dict()``, so its keys read
``_orig_mod.model.inner.H_level.layers.0.self_attn.qkv_proj.weight``. Our parameter and buffer
names equal the official ones below ``inner.``, so conversion is: strip the wrapper prefixes,
check every key and shape strictly, cast to fp32 master weights, load.

Shapes give hidden size, layer counts, vocab, puzzle-embedding width and SwiGLU width; the head
count, cycle counts and ACT depth leave no trace in the weights, so they come from overrides
with the official ARC defaults (8 heads, 2 H and 2 L cycles, 16 ACT steps).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import torch

from hrm_fast.arch import expected_shapes
from hrm_fast.config import ModelConfig, RunConfig
from hrm_fast.errors import UserError, WriteFailed
from hrm_fast.files import os_reason, prepare_dir

# Wrappers the official code puts around the model: torch.compile, ACTLossHead, DDP.
_PREFIXES = ("_orig_mod.", "model.", "module.")
# Not recoverable from shapes: the official ARC config (config/arch/hrm_v1.yaml).
OFFICIAL_DEFAULTS = {"num_heads": 8, "H_cycles": 2, "L_cycles": 2, "halt_max_steps": 16}
# TRM's ARC run (config/arch/trm.yaml with its README's H_cycles=3 L_cycles=4).
OFFICIAL_TRM_DEFAULTS = {
    "num_heads": 8, "H_cycles": 3, "L_cycles": 4, "halt_max_steps": 16, "puzzle_emb_tokens": 16,
}  # fmt: skip
_LAYER_KEY = re.compile(r"^inner\.([HL])_level\.layers\.(\d+)\.")
_LAYER_PARAMS = (
    "self_attn.qkv_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_up_proj.weight",
    "mlp.down_proj.weight",
)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _read(sd_or_path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict and a name for messages."""
    if isinstance(sd_or_path, (str, Path)):
        from hrm_fast.checkpoint import read_weights_only

        p = Path(sd_or_path)
        if p.is_dir():
            raise UserError(f"{p}: is a directory, expected a state dict file")
        if not p.is_file():
            raise UserError(f"{p}: no such file")
        obj = read_weights_only(p)  # refuses pickled code; one line on any failure
        src = str(p)
    else:
        obj, src = sd_or_path, "state dict"
    # Some tools wrap the weights once more; hrm-fast checkpoints keep them under "model". An
    # EMA copy beside them (TRM's EMAHelper shadow: parameters only) replaces those entries.
    ema = None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        ema = obj.get("ema") if isinstance(obj.get("ema"), dict) else None
        for k in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if ema and isinstance(obj, dict):
        obj = {**{_strip(str(k)): v for k, v in obj.items()},
               **{_strip(str(k)): v for k, v in ema.items()}}  # fmt: skip
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{src}: expected a non-empty dict of tensors (an hrm_act_v1 state dict)")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{src}: entry {k!r} is a {type(v).__name__}, not a tensor")
        name = _strip(str(k))
        if name in out:
            raise UserError(
                f"{src}: key {k!r} duplicates {name!r} once wrapper prefixes are removed"
            )
        out[name] = v
    return out, src


def _need(sd: dict, key: str, src: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        raise UserError(f"{src}: missing key {key!r}")
    t = sd[key]
    if t.ndim != ndim:
        raise UserError(f"{src}: key {key!r} has shape {tuple(t.shape)}, expected {ndim} dims")
    return t


def _num_layers(sd: dict, level: str) -> int:
    ids = {int(m.group(2)) for k in sd if (m := _LAYER_KEY.match(k)) and m.group(1) == level}
    return max(ids) + 1 if ids else 0


def infer_model_config(state_dict, **overrides) -> ModelConfig:
    """ModelConfig of an official state dict: shapes, then ``overrides`` (None = not given).

    Overrides may name any ModelConfig field; one that contradicts a shape is an error.
    """
    sd, src = _read(state_dict)
    return _infer(sd, src, overrides)


def _given_options(overrides: dict) -> dict:
    """The model options a user gave (None = not given); an unknown name is an error."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise UserError(f"unknown model option {unknown[0]!r}; known: {', '.join(sorted(fields))}")
    return given


def _agreed(src: str, given: dict, inferred: dict) -> dict:
    """The given options with the ones read from the weights; a contradiction is an error."""
    for k, v in inferred.items():
        if k in given and given[k] != v:
            raise UserError(
                f"{src}: --{k.replace('_', '-')} {given[k]} contradicts the weights ({v})"
            )
    return {**given, **inferred}


def _puzzle_emb_ndim(sd: dict) -> int:
    pe = sd.get("inner.puzzle_emb.weights")
    return int(pe.shape[1]) if pe is not None and pe.ndim == 2 else 0


def _infer(sd: dict, src: str, overrides: dict) -> ModelConfig:
    emb = _need(sd, "inner.embed_tokens.embedding_weight", src, 2)
    vocab, hidden = emb.shape
    if hidden < 1 or vocab < 1:
        raise UserError(
            f"{src}: key 'inner.embed_tokens.embedding_weight' has shape {tuple(emb.shape)}: "
            "hidden size and vocabulary must be >= 1"
        )
    n_h, n_l = _num_layers(sd, "H"), _num_layers(sd, "L")
    given = _given_options(overrides)
    if n_h == 0 and n_l > 0:  # one network: TRM
        return _infer_trm(sd, src, given, int(vocab), int(hidden), n_l)
    if n_h == 0 or n_l == 0:
        level = "H" if n_h == 0 else "L"
        raise UserError(
            f"{src}: missing key 'inner.{level}_level.layers.0.self_attn.qkv_proj.weight'"
        )
    gate_up = _need(sd, "inner.H_level.layers.0.mlp.gate_up_proj.weight", src, 2)
    inter = gate_up.shape[0] // 2
    inferred = {
        "hidden_size": int(hidden),
        "vocab_size": int(vocab),
        "H_layers": n_h,
        "L_layers": n_l,
        "puzzle_emb_ndim": _puzzle_emb_ndim(sd),
    }
    kwargs = {**OFFICIAL_DEFAULTS, **_agreed(src, given, inferred)}

    # expansion -> intermediate is many-to-one; keep a given/default value that reproduces the
    # width, else the exact ratio (which always rounds back to it).
    if "expansion" not in given:
        kwargs["expansion"] = ModelConfig.expansion
    cfg = ModelConfig(**kwargs)
    if cfg.intermediate_size != inter:
        if "expansion" in given:
            raise UserError(
                f"{src}: --expansion {given['expansion']} gives SwiGLU width "
                f"{cfg.intermediate_size}, the weights have {inter}"
            )
        cfg.expansion = inter * 3 / (2 * hidden)
        if cfg.intermediate_size != inter:
            raise UserError(
                f"{src}: SwiGLU width {inter} (key 'inner.H_level.layers.0.mlp.gate_up_proj."
                f"weight') is not an HRM width for hidden size {hidden}"
            )
    for k in ("H_cycles", "L_cycles", "halt_max_steps"):
        if getattr(cfg, k) < 1:
            raise UserError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(cfg, k)}")
    if cfg.num_heads <= 0 or hidden % cfg.num_heads:
        raise UserError(f"{src}: --num-heads {cfg.num_heads} does not divide hidden size {hidden}")
    return cfg


def _checked_fp32(sd: dict, cfg: ModelConfig, src: str, seq_len: int = 900) -> tuple[dict, int]:
    pe = sd.get("inner.puzzle_emb.weights")
    n_ids = int(pe.shape[0]) if pe is not None and pe.ndim == 2 else 1
    want = expected_shapes(cfg, n_ids, seq_len)
    for k in sd:
        if k not in want:
            hint = (
                " (learned position encodings: hrm-fast supports RoPE only)"
                if "embed_pos" in k
                else ""
            )
            raise UserError(f"{src}: unexpected key {k!r} for this model config{hint}")
    out = {}
    for k, shape in want.items():
        if k not in sd:
            raise UserError(f"{src}: missing key {k!r}")
        t = sd[k]
        if tuple(t.shape) != shape:
            raise UserError(f"{src}: key {k!r} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point():
            raise UserError(f"{src}: key {k!r} has dtype {t.dtype}, expected a float tensor")
        t = t.detach().to("cpu", torch.float32)
        if not torch.isfinite(t).all():
            raise UserError(f"{src}: key {k!r} holds NaN or inf values")
        out[k] = t
    return out, n_ids


def _infer_trm(sd: dict, src: str, given: dict, vocab: int, hidden: int, n_l: int):
    """TRM: only ``L_level`` exists; ``mlp_t`` shows as its token-mixing SwiGLU's keys."""
    mlp_t = "inner.L_level.layers.0.mlp_t.gate_up_proj.weight" in sd
    gate_up = _need(sd, "inner.L_level.layers.0.mlp.gate_up_proj.weight", src, 2)
    inter = gate_up.shape[0] // 2
    pe_ndim = _puzzle_emb_ndim(sd)
    inferred = {"arch": "trm", "hidden_size": hidden, "vocab_size": vocab, "H_layers": 0,
                "L_layers": n_l, "puzzle_emb_ndim": pe_ndim, "mlp_t": mlp_t}  # fmt: skip
    cfg = ModelConfig(**{**OFFICIAL_TRM_DEFAULTS, **_agreed(src, given, inferred)})
    if "expansion" not in given and cfg.intermediate_size != inter:
        cfg.expansion = inter * 3 / (2 * hidden)
    if cfg.intermediate_size != inter:
        raise UserError(
            f"{src}: SwiGLU width {inter} (key 'inner.L_level.layers.0.mlp.gate_up_proj.weight')"
            f" does not match --expansion {cfg.expansion} at hidden size {hidden}"
        )
    if cfg.num_heads <= 0 or hidden % cfg.num_heads:
        raise UserError(f"{src}: --num-heads {cfg.num_heads} does not divide hidden size {hidden}")
    if pe_ndim > cfg.puzzle_emb_len * hidden:
        raise UserError(f"{src}: --puzzle-emb-tokens {cfg.puzzle_emb_tokens} cannot hold {pe_ndim}")
    return cfg


def load_official_state_dict(
    sd_or_path,
    model_cfg: ModelConfig | None = None,
    seq_len: int = 900,
    *,
    batch_size: int = 1,
    backend: str = "reference",
    forward_dtype: torch.dtype = torch.float32,
    **overrides,
):
    """An ``HRM`` or ``TRM`` (CPU, fp32 master weights, eval mode) holding an official state
    dict (TRM when it has no ``H_level``).

    ``model_cfg`` skips inference (its shapes are still checked); otherwise the config comes from
    ``infer_model_config(sd, **overrides)``. ``batch_size`` sizes the puzzle-embedding scratch
    rows used in training mode. Any missing, unexpected or mis-shaped key is a UserError.
    """
    sd, src = _read(sd_or_path)
    if model_cfg is None:
        model_cfg = _infer(sd, src, overrides)
    elif any(v is not None for v in overrides.values()):
        raise UserError("give either model_cfg or model overrides, not both")
    return _build(sd, src, model_cfg, seq_len, batch_size, backend, forward_dtype)


def _build(sd, src, model_cfg, seq_len, batch_size=1, backend="reference", forward_dtype=None):
    from hrm_fast.arch import build_model

    forward_dtype = forward_dtype or torch.float32
    weights, n_ids = _checked_fp32(sd, model_cfg, src, seq_len)
    model = build_model(
        model_cfg, seq_len, n_ids, batch_size, backend=backend, forward_dtype=forward_dtype
    )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith(("local_weights", "local_ids"))]
    if missing or unexpected:  # the shape table and the model disagree: a bug, not bad input
        raise RuntimeError(f"model/state mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def to_official_state_dict(
    model, prefix: str = "_orig_mod.model.", init_dtype: torch.dtype | None = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Our model's state in official names, as the official trainer saves it.

    The official model keeps ``H_init``/``L_init`` in its forward dtype (bf16) and its evaluate.py
    loads with ``assign=True``, so they are cast to ``init_dtype`` (None keeps fp32); everything
    else is fp32 as there. The bf16 cast rounds ours -> official, official -> ours is exact.
    """
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith(("local_weights", "local_ids")):
            continue
        v = v.detach().to("cpu", torch.float32).clone()
        if init_dtype is not None and k in ("inner.H_init", "inner.L_init"):
            v = v.to(init_dtype)
        out[prefix + k] = v
    return out


# The official builders' boards: canvas side and vocabulary (PAD + tokens).
BOARD_KINDS = {"sudoku": (9, 11), "maze": (30, 6)}


def convert_to_checkpoint(
    src, out_dir, *, seq_len: int | None = None, kind: str = "arc", source: str | None = None,
    **overrides,
) -> Path:  # fmt: skip
    """Write an official state dict as an hrm-fast step-0 checkpoint in ``out_dir``.

    ``seq_len`` (default 900) must be a square: the canvas side is stored in the run config.
    ``kind`` "sudoku" / "maze" converts a board checkpoint (vocab 11 / 6, canvas 9 / 30); its
    data is ``source`` (``sudoku:PATH.csv``, ...; default the generated set), which eval reads.
    Returns the checkpoint path (``out_dir/checkpoints/step_000000000.pt``).
    """
    from hrm_fast import checkpoint
    from hrm_fast.trainer.state import make_payload

    sd, name = _read(src)
    cfg = RunConfig(model=_infer(sd, name, overrides))
    vocab = cfg.model.vocab_size
    if kind in BOARD_KINDS:
        canvas, want = BOARD_KINDS[kind]
        if vocab != want:
            raise UserError(f"{name}: vocabulary {vocab}, but {kind} boards use {want} tokens")
        cfg.data.source = source or f"{kind}-gen"
        cfg.data.canvas = canvas
        if seq_len is not None and seq_len != canvas * canvas:
            raise UserError(f"--seq-len {seq_len}: {kind} boards have {canvas * canvas} cells")
        seq_len = None
    elif kind != "arc":
        raise UserError(f"--kind {kind!r}: expected arc, sudoku or maze")
    elif vocab < 12:
        raise UserError(
            f"{name}: vocabulary {vocab} is too small for ARC (12); for an official Sudoku "
            "(11) or maze (6) checkpoint pass --kind sudoku or --kind maze"
        )
    try:  # what loading will check: refuse now rather than write a checkpoint it calls damaged
        cfg.validate(tuple(k for k, v in overrides.items() if v is not None))
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None
    if seq_len is not None:
        canvas = math.isqrt(seq_len)
        if canvas * canvas != seq_len or canvas <= 0:
            raise UserError(f"--seq-len {seq_len} is not a square canvas (ARC uses 900 = 30x30)")
        cfg.data.canvas = canvas
    out = prepare_dir(Path(out_dir), "--out")
    if checkpoint.list_checkpoints(out):
        raise UserError(f"--out {out}: already holds checkpoints; choose a new directory")
    model = _build(sd, name, cfg.model, cfg.seq_len)
    n_ids = model.inner.puzzle_emb.weights.shape[0] if cfg.model.puzzle_emb_ndim > 0 else 1
    payload = make_payload(
        step=0,
        config=cfg.to_dict(),
        model={k: v for k, v in model.state_dict().items()},
        dataset={"num_puzzle_ids": int(n_ids), "converted_from": name, "kind": kind},
    )
    path = checkpoint.checkpoint_path(out, 0)
    try:
        checkpoint.atomic_save(payload, path)
    except OSError as e:
        raise WriteFailed(f"{path}: cannot write: {os_reason(e)}") from None
    return path
