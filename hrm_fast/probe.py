"""Input-sensitivity probe: does the model's answer depend on the puzzle it is shown?

The run this project exists for trained for days on a model whose output ignored its input (see
docs/seed-run.md): loss fell while every grid got the same answer. The probe feeds K pairs of
*different* inputs through the full ACT unroll in eval mode and measures

* ``frac_differ``: the fraction of pairs whose predicted grids (argmax per cell) differ;
* ``mean_tv``: the total-variation distance ``0.5 * ||p_a - p_b||_1`` between the two output
  distributions, averaged over cells, then over pairs.

Both are taken where the answer is (``answer_cells``): the cells either member's input or
the label marks as a grid colour, not the padding around it, so a 3x3 answer on a 30x30
canvas counts as much as a full one.

Where the pairs come from training data (a sampler), their labels give a third number:

* ``input_gain``: how much lower (in nats, softmax cross-entropy per labelled cell) the
  first member's answer scores with its own input than with the second member's. A model that
  has learnt from its input gains; an input-invariant model gains nothing, and neither does
  one whose output moves with its input in a way unrelated to the answer (TV cannot tell that
  model from a healthy one; docs/safeguards.md). A fresh model gains nothing either, so this
  is reported, not a pass/fail criterion.

Both members of a pair get the SAME puzzle identifier (the first member's). HRM gives each
(task, augmentation) its own learnt puzzle embedding, so a model can "solve" training examples
from the identifier alone and ignore the grid; with distinct identifiers such a model would
still pass. With a shared identifier only the tokens differ, so only token dependence counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from hrm_fast.errors import UserError
from hrm_fast.loss import IGNORE, softmax_cross_entropy

PAD, EOS, COLOUR0 = 0, 1, 2


@dataclass
class ProbeReport:
    step: int | None
    pairs: int
    frac_differ: float
    mean_tv: float
    min_differ: float
    min_tv: float
    passed: bool
    input_gain: float | None = None  # nats; None when the pairs have no labels

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        at = f" at step {self.step}" if self.step is not None else ""
        return (
            f"input-sensitivity probe {verdict}{at}: {self.pairs} input pairs, "
            f"predicted grids differ in {self.frac_differ:.0%} (need >= {self.min_differ:.0%}), "
            f"mean TV distance {self.mean_tv:.4g} (need >= {self.min_tv:.4g})"
            + ("" if self.input_gain is None else f"; input gain {self.input_gain:.3g} nats")
        )


def random_canvas_inputs(
    k: int, canvas: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``k`` valid random ARC input canvases, int32 ``[k, canvas*canvas]`` on the CPU.

    Each has a random h x w grid (1..canvas) of random colours at the top-left, EOS on the row
    below it and the column right of it (where inside the canvas), PAD everywhere else, the
    corner included: HRM's build_arc_dataset encoding.
    """
    g = generator
    h = torch.randint(1, canvas + 1, (k, 1, 1), generator=g)
    w = torch.randint(1, canvas + 1, (k, 1, 1), generator=g)
    colours = torch.randint(0, 10, (k, canvas, canvas), generator=g)
    r = torch.arange(canvas).view(1, -1, 1)
    c = torch.arange(canvas).view(1, 1, -1)
    inside = (r < h) & (c < w)
    eos = ((r == h) & (c < w)) | ((c == w) & (r < h))
    out = torch.where(inside, colours + COLOUR0, torch.where(eos, EOS, PAD))
    return out.view(k, canvas * canvas).to(torch.int32)


def _thresholds(cfg) -> tuple[float, float]:
    t = getattr(cfg, "train", cfg)
    if t is None:
        from hrm_fast.config import TrainConfig

        t = TrainConfig()
    return float(t.probe_min_differ), float(t.probe_min_tv)


@torch.no_grad()
def _final_logits(model, inputs: torch.Tensor, puzzle_ids: torch.Tensor) -> torch.Tensor:
    """Logits after the full ACT unroll (eval mode never halts before halt_max_steps)."""
    batch = {"inputs": inputs, "puzzle_identifiers": puzzle_ids}
    carry = model.initial_carry(batch)
    out = None
    for _ in range(model.cfg.halt_max_steps):
        carry, out = model(carry, batch)
    return out["logits"].float()


def probe_input_sensitivity(
    model,
    inputs_a: torch.Tensor,
    inputs_b: torch.Tensor,
    puzzle_ids: torch.Tensor | None,
    cfg=None,
    *,
    min_differ: float | None = None,
    min_tv: float | None = None,
    step: int | None = None,
    chunk_pairs: int = 32,
    labels_a: torch.Tensor | None = None,
) -> ProbeReport:
    """Probe ``model`` on pairs ``(inputs_a[i], inputs_b[i])``, int32 ``[K, S]`` each.

    ``puzzle_ids`` (int32 ``[K]``, None = all 0) is given to BOTH members of pair i.
    ``labels_a`` (``[K, S]``, -100 = not scored), the answers to ``inputs_a``, adds
    ``input_gain``.
    Thresholds: ``min_differ``/``min_tv`` if given, else ``cfg`` (a RunConfig or TrainConfig;
    None = TrainConfig defaults). The model runs in eval mode under no_grad; its previous
    mode is restored.
    """
    if inputs_a.shape != inputs_b.shape or inputs_a.ndim != 2:
        raise ValueError(
            f"inputs must be two [K, S] tensors, got {inputs_a.shape}, {inputs_b.shape}"
        )
    k = inputs_a.shape[0]
    if k == 0:
        raise ValueError("the probe needs at least one input pair")
    if bool((inputs_a.cpu() == inputs_b.cpu()).all(-1).any()):
        raise ValueError("every probe pair must have two different inputs")
    d_min, tv_min = _thresholds(cfg)
    d_min = d_min if min_differ is None else float(min_differ)
    tv_min = tv_min if min_tv is None else float(min_tv)

    device = next(model.parameters()).device
    if puzzle_ids is None:
        puzzle_ids = torch.zeros(k, dtype=torch.int32)
    was_training = model.training
    model.eval()
    differ, tv, gain = [], [], []
    try:
        for s in range(0, k, chunk_pairs):  # a and b of a chunk in one batch
            a, b = inputs_a[s : s + chunk_pairs], inputs_b[s : s + chunk_pairs]
            ids = puzzle_ids[s : s + chunk_pairs].to(device, torch.int32)
            n = a.shape[0]
            x = torch.cat((a, b)).to(device, torch.int32)
            logits = _final_logits(model, x, torch.cat((ids, ids)))
            la, lb = logits[:n], logits[n:]
            pred_a, pred_b = la.argmax(-1), lb.argmax(-1)
            y = None if labels_a is None else labels_a[s : s + chunk_pairs].to(device)
            where = answer_cells(a.to(device), b.to(device), y)
            differ.append(((pred_a != pred_b) & where).any(-1).cpu())
            cell_tv = 0.5 * (la.softmax(-1) - lb.softmax(-1)).abs().sum(-1)
            tv.append(((cell_tv * where).sum(-1) / where.sum(-1).clamp(min=1)).cpu())
            if labels_a is not None:
                y = labels_a[s : s + chunk_pairs].to(device, torch.long)
                gain.append((_answer_ce(lb, y) - _answer_ce(la, y)).cpu())
    finally:
        model.train(was_training)
    frac_differ = torch.cat(differ).float().mean().item()
    mean_tv = torch.cat(tv).double().mean().item()
    input_gain = torch.cat(gain).double().nanmean().item() if gain else None
    passed = math.isfinite(mean_tv) and frac_differ >= d_min and mean_tv >= tv_min
    return ProbeReport(step, k, frac_differ, mean_tv, d_min, tv_min, bool(passed), input_gain)


def answer_cells(inputs_a, inputs_b, labels=None) -> torch.Tensor:
    """Where the answer is: cells that either input or the label marks as a grid colour.
    Padding (PAD or EOS in all of them) is left out, so a small grid on a big canvas is
    measured as densely as a big one. Not the predictions: a fresh model predicts colours
    everywhere."""
    where = (inputs_a >= COLOUR0) | (inputs_b >= COLOUR0)
    if labels is not None:
        where |= labels >= COLOUR0
    return where


def _answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy per example ``[n]``, averaged over its labelled cells (NaN when
    it has none)."""
    return softmax_cross_entropy(logits, labels).sum(-1) / (labels != IGNORE).sum(-1)


# --------------------------------------------------------------------------- pair sources


def _as_draw(source, canvas: int, num_ids: int, g: torch.Generator) -> Callable[[int], tuple]:
    """A function n -> (inputs [n, S] int32 CPU, puzzle_ids [n] int32 CPU, labels or None)."""
    if source is None:

        def draw(n):
            ids = torch.randint(0, max(num_ids, 1), (n,), generator=g, dtype=torch.int32)
            return random_canvas_inputs(n, canvas, g), ids, None

        return draw
    if isinstance(source, dict):  # a fixed batch: every draw returns all of it
        return lambda n: (source["inputs"], source["puzzle_identifiers"], source.get("labels"))
    sample = getattr(source, "sample", None) or source
    if not callable(sample):
        raise TypeError(
            f"probe source must be None, a batch dict, a sampler or a callable, got {source!r}"
        )

    def draw(n):
        batch = sample(n)
        return batch["inputs"], batch["puzzle_identifiers"], batch.get("labels")

    return draw


def _pairs(draw, k: int, attempts: int = 4):
    """K pairs of different inputs, the first members' puzzle ids and labels (or None); the
    second members come from a separate pool of draws."""
    inputs, ids, labels = draw(2 * k)
    inputs, ids = inputs.cpu().to(torch.int32), ids.cpu().to(torch.int32).view(-1)
    if inputs.shape[0] < 2:
        raise UserError("the probe needs a source with at least two examples")
    k_a = min(k, inputs.shape[0] - 1)
    a, a_ids, pool = inputs[:k_a], ids[:k_a], inputs[k_a:]
    a_labels = None if labels is None else labels[:k_a].cpu()
    b = torch.empty_like(a)
    todo = list(range(k_a))
    used: set[int] = set()
    for _ in range(attempts):
        same = (a[:, None, :] == pool[None, :, :]).all(-1)  # [k_a, pool]
        left = []
        for i in todo:  # greedy: the first unused pool entry that differs from a[i]
            j = next((j for j in range(pool.shape[0]) if j not in used and not same[i, j]), None)
            if j is None:
                left.append(i)
            else:
                used.add(j)
                b[i] = pool[j]
        todo = left
        if not todo:
            return a, b, a_ids, a_labels
        more = draw(2 * len(todo))[0]
        pool = torch.cat((pool, more.cpu().to(torch.int32)))
    raise UserError(
        f"input-sensitivity probe: could not find {k_a} pairs of different inputs "
        f"({len(todo)} examples have no different partner); is the dataset degenerate?"
    )


def run_probe(
    model,
    source=None,
    k_pairs: int = 16,
    min_differ: float | None = None,
    min_tv: float | None = None,
    device=None,
    generator_seed: int = 0,
    *,
    canvas: int | None = None,
    step: int | None = None,
) -> ProbeReport:
    """Probe on ``k_pairs`` pairs of different inputs drawn from ``source``:

    * None: random valid ARC canvases (``random_canvas_inputs``), random puzzle ids;
    * a sampler with ``.sample(batch_size) -> {"inputs", "puzzle_identifiers", ...}``
      (``hrm_fast.data.DeviceSampler``), or such a callable;
    * a batch dict: pairs come from its rows (it needs more than one distinct row).

    ``device`` moves the model's inputs only (the model must already be there); ``canvas``
    defaults to sqrt of the model's sequence length; ``generator_seed`` seeds the random
    canvases and ids (a sampler uses its own randomness).
    """
    del device  # inputs follow the model's parameters
    seq_len = model.inner.seq_len
    canvas = canvas or math.isqrt(seq_len)
    if canvas * canvas != seq_len:
        raise UserError(f"model sequence length {seq_len} is not canvas**2 (canvas {canvas})")
    num_ids = model.inner.puzzle_emb.weights.shape[0] if model.cfg.puzzle_emb_ndim > 0 else 1
    g = torch.Generator().manual_seed(int(generator_seed))
    a, b, ids, labels = _pairs(_as_draw(source, canvas, num_ids, g), int(k_pairs))
    if a.shape[1] != seq_len:
        raise UserError(f"probe inputs have length {a.shape[1]}, the model expects {seq_len}")
    return probe_input_sensitivity(
        model, a, b, ids, min_differ=min_differ, min_tv=min_tv, step=step, labels_a=labels
    )


def checked_probe(probe: Callable[[], ProbeReport], dp=None) -> tuple[ProbeReport | None, bool]:
    """(report, passed): ``probe()`` on rank 0 (report None elsewhere), its verdict on every rank
    (``dp``: the run's DataParallel, None for one process)."""
    if dp is None:
        report = probe()
        return report, report.passed
    report = probe() if dp.is_main else None
    return report, dp.broadcast_flag(report is not None and report.passed)


def probe_stop_hint(out, saved: bool) -> str:
    """What a user whose run the probe stopped can do next."""
    look = (
        f"look with `hrm-fast probe {out}` and `hrm-fast report {out}`"
        if saved
        else "this is before any training, so look at the data and the model flags"
    )
    return (
        "hrm-fast: the model's predictions barely depend on its input (docs/safeguards.md); "
        f"{look}; the thresholds are --probe-min-tv and --probe-min-differ"
    )
