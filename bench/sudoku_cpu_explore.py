"""Explore model configurations that solve generated Sudokus on a CPU (issue 20, item 4).

Trains with the project's own ``Trainer`` (its step, loss, optimiser, lr schedule and ACT carry);
only the data is swapped: ``hrm_fast.data``'s dataset and sampler are replaced by a generator of
fresh Sudokus, encoded as the official builders do (vocab 11, PAD 0, blank 1, digit d -> d + 1,
labels the whole solution). Held-out puzzles come from solution grids the training pool never
holds and have exactly one solution. Evaluation runs the model in eval mode for up to
``--eval-steps`` ACT steps and reports exact and blank-cell accuracy after every step.

    python bench/sudoku_cpu_explore.py --name trm-mlp --board 4 --blanks 8 --minutes 5

Appends one JSON line per evaluation to ``--log``. A throwaway: the product's generator lives
elsewhere.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import hrm_fast.data
from hrm_fast.config import RunConfig
from hrm_fast.train import Trainer

BLANK = 1  # token of an empty cell; digit d is d + 1


# --------------------------------------------------------------------------- generator


def _full_grid(n: int, box: int, rng: random.Random) -> list[int]:
    """A random solved n x n grid (digits 1..n) by randomized backtracking."""
    grid = [0] * (n * n)
    rows, cols, boxes = [0] * n, [0] * n, [0] * n

    def solve(i: int) -> bool:
        if i == n * n:
            return True
        r, c = divmod(i, n)
        b = (r // box) * box + c // box
        digits = list(range(1, n + 1))
        rng.shuffle(digits)
        for d in digits:
            bit = 1 << d
            if rows[r] & bit or cols[c] & bit or boxes[b] & bit:
                continue
            grid[i] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            if solve(i + 1):
                return True
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        grid[i] = 0
        return False

    solve(0)
    return grid


def count_solutions(puzzle: list[int], n: int, box: int, limit: int = 2) -> int:
    """Solutions of a puzzle (0 = blank), counted up to ``limit``."""
    grid = list(puzzle)
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    for i, d in enumerate(grid):
        if d:
            r, c = divmod(i, n)
            bit = 1 << d
            rows[r] |= bit
            cols[c] |= bit
            boxes[(r // box) * box + c // box] |= bit
    blanks = [i for i, d in enumerate(grid) if not d]
    full = sum(1 << d for d in range(1, n + 1))
    found = 0

    def search() -> None:
        nonlocal found
        best, best_free = -1, None
        for i in blanks:  # the most constrained blank first
            if grid[i]:
                continue
            r, c = divmod(i, n)
            free = full & ~(rows[r] | cols[c] | boxes[(r // box) * box + c // box])
            if best < 0 or bin(free).count("1") < bin(best_free).count("1"):
                best, best_free = i, free
                if free == 0:
                    break
        if best < 0:
            found += 1
            return
        r, c = divmod(best, n)
        b = (r // box) * box + c // box
        for d in range(1, n + 1):
            bit = 1 << d
            if not best_free & bit:
                continue
            grid[best] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            search()
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            grid[best] = 0
            if found >= limit:
                return

    search()
    return found


def _line_perm(count: int, n: int, box: int, gen: torch.Generator) -> torch.Tensor:
    """[count, n] permutations of rows that keep Sudoku validity: bands, then rows in bands."""
    nb = n // box
    band = torch.rand(count, nb, generator=gen).argsort(-1)  # [count, nb]
    inner = torch.rand(count, nb, box, generator=gen).argsort(-1)  # [count, nb, box]
    return (band.unsqueeze(-1) * box + inner).reshape(count, n)


def shuffle_grids(grids: torch.Tensor, n: int, box: int, gen: torch.Generator) -> torch.Tensor:
    """Random validity-preserving transforms of [B, n*n] solutions (digits 1..n): digit
    permutation, band/stack and row/column-in-band shuffles, transpose (the official
    augmentation)."""
    b = grids.shape[0]
    g = grids.view(b, n, n)
    digit = torch.cat(
        [torch.zeros(b, 1, dtype=torch.long), torch.rand(b, n, generator=gen).argsort(-1) + 1], 1
    )
    g = torch.gather(digit, 1, g.reshape(b, -1)).view(b, n, n)
    flip = torch.rand(b, generator=gen) < 0.5
    g = torch.where(flip.view(b, 1, 1), g.transpose(1, 2), g)
    rp, cp = _line_perm(b, n, box, gen), _line_perm(b, n, box, gen)
    g = torch.gather(g, 1, rp.unsqueeze(-1).expand(b, n, n))
    g = torch.gather(g, 2, cp.unsqueeze(1).expand(b, n, n))
    return g.reshape(b, n * n)


def blank_mask(b: int, cells: int, blanks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[b, cells] bool with exactly blanks[i] True cells in row i, at random places."""
    rank = torch.rand(b, cells, generator=gen).argsort(-1).argsort(-1)
    return rank < blanks.view(b, 1)


def encode(solutions: torch.Tensor, mask: torch.Tensor, seq_len: int) -> dict:
    """Official encoding, padded with PAD 0 to seq_len (only needed if the board is smaller)."""
    b, cells = solutions.shape
    labels = torch.zeros(b, seq_len, dtype=torch.int32)
    inputs = torch.zeros(b, seq_len, dtype=torch.int32)
    labels[:, :cells] = (solutions + 1).to(torch.int32)
    inputs[:, :cells] = torch.where(mask, BLANK, solutions + 1).to(torch.int32)
    return {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": torch.zeros(b, dtype=torch.int32),
    }


class SudokuSampler:
    """The sampler contract of ``Trainer``: ``sample(B) -> inputs, labels, puzzle_identifiers``.

    Each draw takes solutions from a pool, transforms them at random and blanks a random
    ``blanks_lo..blanks_hi`` cells, so (practically) no puzzle repeats."""

    def __init__(self, pool: torch.Tensor, n: int, box: int, blanks: tuple[int, int], seed: int):
        self.pool, self.n, self.box, self.blanks = pool, n, box, blanks
        self.gen = torch.Generator().manual_seed(seed)
        self.draws = 0

    def sample(self, batch_size: int) -> dict:
        self.draws += 1
        idx = torch.randint(len(self.pool), (batch_size,), generator=self.gen)
        sol = shuffle_grids(self.pool[idx], self.n, self.box, self.gen)
        lo, hi = self.blanks
        k = torch.randint(lo, hi + 1, (batch_size,), generator=self.gen)
        return encode(sol, blank_mask(batch_size, self.n * self.n, k, self.gen), self.n * self.n)


def held_out(n: int, box: int, blanks: int, count: int, seed: int) -> dict:
    """``count`` puzzles with ``blanks`` blanks and one solution, from fresh solution grids."""
    rng = random.Random(seed)
    sols, masks = [], []
    while len(sols) < count:
        sol = _full_grid(n, box, rng)
        cells = list(range(n * n))
        rng.shuffle(cells)
        hole = set(cells[:blanks])
        puzzle = [0 if i in hole else d for i, d in enumerate(sol)]
        if count_solutions(puzzle, n, box) != 1:
            continue
        sols.append(sol)
        masks.append([i in hole for i in range(n * n)])
    return encode(torch.tensor(sols), torch.tensor(masks), n * n)


# --------------------------------------------------------------------------- trainer + eval


class _NoArcData:
    """Stands in for ``ArcDataset`` so that ``Trainer`` loads no ARC data."""

    num_puzzle_ids = 1
    num_train_pairs = 1


def build_trainer(cfg: RunConfig, sampler: SudokuSampler) -> Trainer:
    saved = hrm_fast.data.ArcDataset, hrm_fast.data.DeviceSampler

    class _Build:
        @staticmethod
        def build(data_cfg, seed=0):
            return _NoArcData()

    hrm_fast.data.ArcDataset = _Build
    hrm_fast.data.DeviceSampler = lambda dataset, device, backend: sampler
    try:
        trainer = Trainer(cfg, quiet=True)
    finally:
        hrm_fast.data.ArcDataset, hrm_fast.data.DeviceSampler = saved
    if trainer.sampler is not sampler:
        raise RuntimeError("the trainer did not take the Sudoku sampler")
    return trainer


@torch.no_grad()
def evaluate(model, data: dict, steps: int, batch: int = 256) -> list[dict]:
    """Exact and blank-cell accuracy after each of ``steps`` ACT steps (no early halt)."""
    was_training = model.training
    saved_max = model.cfg.halt_max_steps
    model.eval()
    model.cfg.halt_max_steps = steps
    total = data["inputs"].shape[0]
    exact = torch.zeros(steps)
    blank_right = torch.zeros(steps)
    blank_count = 0
    try:
        for s in range(0, total, batch):
            part = {k: v[s : s + batch] for k, v in data.items()}
            blank = part["inputs"] == BLANK
            blank_count += int(blank.sum())
            carry = model.initial_carry(part)
            for t in range(steps):
                carry, out = model(carry, part)
                pred = out["logits"].argmax(-1)
                right = pred == part["labels"]
                exact[t] += right.all(-1).sum()
                blank_right[t] += (right & blank).sum()
    finally:
        model.cfg.halt_max_steps = saved_max
        model.train(was_training)
    return [
        {"act_steps": t + 1, "exact": exact[t].item() / total,
         "blank_acc": blank_right[t].item() / max(1, blank_count)}
        for t in range(steps)
    ]  # fmt: skip


def run(args) -> None:
    torch.set_num_threads(args.threads)
    n, box = args.board, {4: 2, 9: 3}[args.board]
    cfg = RunConfig()
    m, lo, d, t = cfg.model, cfg.loss, cfg.data, cfg.train
    m.arch, m.mlp_t = args.arch, args.mlp_t
    m.pos_encodings = "none" if args.mlp_t else "rope"
    m.hidden_size, m.num_heads, m.expansion = args.hidden, args.heads, args.expansion
    m.H_layers, m.L_layers = args.H_layers, args.L_layers
    m.H_cycles, m.L_cycles = args.H_cycles, args.L_cycles
    m.halt_max_steps, m.puzzle_emb_ndim, m.vocab_size = args.halt_max_steps, 0, 11
    lo.ce, lo.w_div, lo.w_dist, lo.w_halt = args.ce, args.w_div, args.w_dist, args.w_halt
    d.canvas = n
    t.batch_size, t.lr, t.warmup_steps, t.weight_decay = args.batch, args.lr, args.warmup, args.wd
    t.lr_min_ratio, t.seed, t.device, t.ema = args.lr_min_ratio, args.seed, "cpu", args.ema
    t.steps = 10**9  # replaced by the time budget's estimate after the first steps

    rng = random.Random(args.seed)
    pool = torch.tensor([_full_grid(n, box, rng) for _ in range(args.pool)])
    sampler = SudokuSampler(pool, n, box, (args.blanks_lo or args.blanks, args.blanks), args.seed)
    test = held_out(n, box, args.blanks, args.eval_n, seed=10_000 + args.seed)
    trainer = build_trainer(cfg, sampler)
    params = sum(p.numel() for p in trainer.model.parameters())
    log = Path(args.log)
    head = {"name": args.name, "args": vars(args), "params": params}
    print(json.dumps(head), flush=True)

    start = time.time()
    budget = args.minutes * 60
    next_eval = args.eval_every * 60
    timed = False
    while True:
        trainer.step()
        elapsed = time.time() - start
        if not timed and trainer.step_count == 10:  # cosine over the steps the budget allows
            t.steps = max(t.warmup_steps + 1, int(budget / (elapsed / 10)))
            timed = True
        done = elapsed >= budget
        if elapsed >= next_eval or done:
            eval_start = time.time()
            metrics = trainer.read_metrics()
            curve = evaluate(trainer.model, test, args.eval_steps)
            final = curve[args.halt_max_steps - 1]
            with open("/proc/loadavg") as f:
                load = float(f.read().split()[0])
            rec = {
                "name": args.name, "step": trainer.step_count, "minutes": elapsed / 60,
                "s_per_step": elapsed / trainer.step_count, "load": load,
                "train_lm_loss": metrics["lm_loss"], "train_acc": metrics["accuracy"],
                "train_exact": metrics["exact_accuracy"], "act_steps": metrics["act_steps"],
                "exact": final["exact"], "blank_acc": final["blank_acc"], "by_steps": curve,
            }  # fmt: skip
            line = json.dumps(rec)
            print(
                f"[{args.name}] step {trainer.step_count} {elapsed / 60:.1f} min "
                f"{rec['s_per_step']:.3f} s/step load {load:.1f} lm {metrics['lm_loss']:.3f} "
                f"train_exact {metrics['exact_accuracy']:.3f} act {metrics['act_steps']:.1f} | "
                f"held-out exact {final['exact']:.3f} blank {final['blank_acc']:.3f} | by steps "
                + " ".join(f"{c['exact']:.2f}" for c in curve),
                flush=True,
            )
            with open(log, "a") as f:
                f.write(line + "\n")
            start += time.time() - eval_start  # evaluation does not eat the training budget
            next_eval += args.eval_every * 60
            if done:
                break
    for blanks in args.difficulty:  # accuracy against difficulty, at the end only
        data = held_out(n, box, blanks, args.eval_n, seed=20_000 + blanks + args.seed)
        curve = evaluate(trainer.model, data, args.eval_steps)
        final = curve[args.halt_max_steps - 1]
        rec = {
            "name": args.name,
            "step": trainer.step_count,
            "difficulty_blanks": blanks,
            "exact": final["exact"],
            "blank_acc": final["blank_acc"],
            "by_steps": curve,
        }
        print(
            f"[{args.name}] blanks {blanks}: exact {final['exact']:.3f} "
            f"blank {final['blank_acc']:.3f} | by steps "
            + " ".join(f"{c['exact']:.2f}" for c in curve),
            flush=True,
        )
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--name", default="run")
    a("--log", default="scratch/sudoku-runs.jsonl")
    a("--board", type=int, default=9, choices=(4, 9))
    a("--blanks", type=int, default=10, help="blanks per held-out puzzle (and training max)")
    a("--blanks-lo", type=int, default=0, help="training minimum blanks (0 = --blanks)")
    a(
        "--difficulty",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="comma-separated blank counts to evaluate at the end",
    )
    a("--pool", type=int, default=2000, help="solution grids the training draws transform")
    a("--eval-n", type=int, default=256)
    a("--eval-steps", type=int, default=0, help="ACT steps at eval (0 = 2 x halt_max_steps)")
    a("--eval-every", type=float, default=2.0, help="minutes")
    a("--minutes", type=float, default=5.0)
    a("--threads", type=int, default=2)
    a("--arch", default="trm", choices=("trm", "hrm"))
    a("--mlp-t", action="store_true")
    a("--hidden", type=int, default=128)
    a("--heads", type=int, default=4)
    a("--expansion", type=float, default=4.0)
    a("--H-layers", type=int, default=2)
    a("--L-layers", type=int, default=2)
    a("--H-cycles", type=int, default=3)
    a("--L-cycles", type=int, default=6)
    a("--halt-max-steps", type=int, default=8)
    a("--batch", type=int, default=64)
    a("--lr", type=float, default=1e-3)
    a("--lr-min-ratio", type=float, default=0.1)
    a("--warmup", type=int, default=50)
    a("--wd", type=float, default=0.1)
    a("--ema", action="store_true")
    a("--ce", default="softmax", choices=("softmax", "stablemax"))
    a("--w-div", type=float, default=0.1)
    a("--w-dist", type=float, default=0.1)
    a("--w-halt", type=float, default=0.05)
    a("--seed", type=int, default=0)
    args = p.parse_args()
    if args.eval_steps <= 0:
        args.eval_steps = 2 * args.halt_max_steps
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()
