"""What the report compiles: each preset's launch shapes and every family's specs at them.

Shapes are derived once from the presets in ``hrm_fast/presets.py`` (every preset not in
``CPU_PRESETS``), so a new preset is compiled without editing a kernel file or this one. Each
family module in ``hrm_fast.kernels`` exposes ``aot_specs(shape, target) -> list[AotSpec]``.
"""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass
from typing import Any

from hrm_fast.config import RunConfig
from hrm_fast.kernels.aot import LaunchShape
from hrm_fast.presets import CPU_PRESETS, from_name
from hrm_fast.presets import PRESETS as CONFIG_PRESETS

FAMILIES = ("attention", "rms_norm", "swiglu", "arc_loss", "augment", "board_augment")
PRESETS = tuple(name for name in CONFIG_PRESETS if name not in CPU_PRESETS)
# Head dim 128 is in no preset: attention is also compiled at the paper shape with 4 heads
# (--num-heads 4), listed with the paper preset.
EXTRA_HEADS = {"paper": (4,)}


def launch_shape(cfg: RunConfig, extra_heads: tuple[int, ...] = ()) -> LaunchShape:
    """The shapes the trainer launches the kernels at for this config."""
    m = cfg.model
    return LaunchShape(
        batch=cfg.train.batch_size,
        seq_len=cfg.seq_len + m.puzzle_emb_len,
        hidden=m.hidden_size,
        heads=m.num_heads,
        intermediate=m.intermediate_size,
        vocab=m.vocab_size,
        canvas=cfg.data.canvas,
        extra_heads=extra_heads,
    )


def preset_shape(name: str) -> LaunchShape:
    return launch_shape(from_name(name), EXTRA_HEADS.get(name, ()))


PRESET_SHAPES = {name: preset_shape(name) for name in PRESETS}


def jit_function(fn):
    """The triton.JITFunction behind an AotSpec.fn (unwraps autotune/heuristics wrappers)."""
    from triton.runtime.jit import JITFunction

    seen = 0
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn") and seen < 8:
        fn = fn.fn
        seen += 1
    if not isinstance(fn, JITFunction):
        raise TypeError(f"AotSpec.fn is not a triton.jit kernel: {type(fn).__name__}")
    return fn


def constexprs_json(spec) -> dict:
    return {k: _jsonable(v) for k, v in spec.constexprs.items()}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return repr(v)


@dataclass
class SpecEntry:
    family: str
    preset: str
    index: int  # position in aot_specs(shape, target); -1 for an error row
    spec: Any = None  # AotSpec, or None for an error row
    error: str | None = None
    target: str = "nvidia"  # target family (hrm_fast.kernels.aot.TARGET_FAMILIES)


def load_specs(family: str, preset: str, target: str = "nvidia") -> list:
    """The family's aot_specs at the preset's launch shape for a target family (not empty)."""
    mod = importlib.import_module(f"hrm_fast.kernels.{family}")
    if not hasattr(mod, "aot_specs"):
        raise AttributeError(f"hrm_fast.kernels.{family} has no aot_specs(shape, target)")
    shape = PRESET_SHAPES[preset] if preset in PRESET_SHAPES else preset_shape(preset)
    specs = list(mod.aot_specs(shape, target))
    if not specs:
        raise ValueError(f"hrm_fast.kernels.{family}.aot_specs({preset!r}) returned no specs")
    return specs


def short_error(exc: BaseException, lines: int = 6) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    if len(text) > lines:
        text = text[:2] + ["..."] + text[-(lines - 3) :]
    return " | ".join(t.strip() for t in text if t.strip())


def collect_specs(presets=PRESETS, families=FAMILIES, targets=("nvidia",)) -> list[SpecEntry]:
    """Every family's specs at every preset's shape for every target family; a missing module
    or a failing aot_specs is an error row, never skipped."""
    entries: list[SpecEntry] = []
    for target in targets:
        for family in families:
            for preset in presets:
                try:
                    specs = load_specs(family, preset, target)
                except Exception as exc:  # noqa: BLE001 - reported as a row, never skipped
                    entries.append(
                        SpecEntry(family, preset, -1, error=short_error(exc), target=target)
                    )
                    continue
                for i, spec in enumerate(specs):
                    entries.append(SpecEntry(family, preset, i, spec=spec, target=target))
    return entries
