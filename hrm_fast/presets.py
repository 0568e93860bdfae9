"""Named run presets (``from_name``): the HRM and TRM paper runs, the board runs, and the
small ones sized for a CPU (``CPU_PRESETS``). Presets build ``hrm_fast.config`` dataclasses;
config never imports this module.
"""

from __future__ import annotations

import dataclasses

from hrm_fast.config import DataConfig, LossConfig, ModelConfig, RunConfig, TrainConfig


def _seed() -> RunConfig:
    # The user's run (docs/seed-run.md): 400 ARC-AGI-1 training tasks x 500 augmentations.
    return RunConfig()


def _paper() -> RunConfig:
    # HRM paper / sapientinc/HRM ARC-1 config: hidden 512, 4+4 layers, 16 ACT steps.
    return RunConfig(
        model=ModelConfig(
            hidden_size=512,
            num_heads=8,
            H_layers=4,
            L_layers=4,
            halt_max_steps=16,
            puzzle_emb_ndim=512,
        ),
        data=DataConfig(n_aug=1000, include_eval_demos=True),
        train=TrainConfig(batch_size=768, lr=1e-4, warmup_steps=2000),
    )


def _smoke() -> RunConfig:
    # Small enough that CPU training visibly learns within minutes (2 cores).
    return RunConfig(
        model=ModelConfig(
            hidden_size=64,
            num_heads=2,
            H_layers=1,
            L_layers=1,
            H_cycles=1,
            L_cycles=1,
            expansion=2.0,
            halt_max_steps=2,
            puzzle_emb_ndim=64,
        ),
        data=DataConfig(n_aug=8, max_tasks=24, include_eval_demos=True),
        train=TrainConfig(
            batch_size=8,
            steps=150,
            lr=1e-3,
            warmup_steps=10,
            checkpoint_every=50,
            log_every=10,
            puzzle_emb_lr=1e-2,
            probe_pairs=8,
        ),
    )


def _debug() -> RunConfig:
    # Tiny model for unit tests (torchtitan-style debug config): small canvas, one layer each.
    return RunConfig(
        model=ModelConfig(
            hidden_size=32,
            num_heads=1,
            H_layers=1,
            L_layers=1,
            H_cycles=2,
            L_cycles=2,
            expansion=2.0,
            halt_max_steps=3,
            puzzle_emb_ndim=32,
        ),
        data=DataConfig(n_aug=4, canvas=8, include_eval_demos=True),
        train=TrainConfig(
            batch_size=4,
            steps=6,
            lr=1e-3,
            warmup_steps=2,
            checkpoint_every=3,
            log_every=1,
            probe_pairs=4,
        ),
    )


def _collapse() -> RunConfig:
    # The seed run's early phase at CPU cost (docs/safeguards.md): the seed's optimiser, schedule
    # (lr 1e-4, 2000 warm-up steps), H/L cycles and loss, on a narrower, shallower model, a
    # 12x12 canvas (the ARC-AGI-1 training tasks that fit) and batch 4 -- the setting in which
    # the seed architecture's argmax collapses within a few hundred steps.
    return RunConfig(
        model=ModelConfig(
            hidden_size=64,
            num_heads=2,
            H_layers=2,
            L_layers=2,
            halt_max_steps=4,
            puzzle_emb_ndim=64,
        ),
        data=DataConfig(canvas=12),
        train=TrainConfig(batch_size=4, steps=300, log_every=25, probe_pairs=8),
    )


def _trm_arc1() -> RunConfig:
    # TRM's README ARC-AGI-1 run (cfg_pretrain.yaml + arch/trm.yaml + its overrides): one
    # 2-layer network, T=3 cycles of n=4 latent updates, 16 puzzle-embedding positions,
    # stablemax CE, AdamATan2 (betas 0.9, 0.95) with no gradient clipping, constant lr after
    # warm-up, EMA 0.999, 100000 epochs. ConceptARC (part of TRM's data) ships in no package:
    # add it with --source (ARC Prize *_challenges.json + *_solutions.json files).
    return RunConfig(
        model=ModelConfig(
            arch="trm",
            hidden_size=512,
            num_heads=8,
            H_layers=0,
            L_layers=2,
            H_cycles=3,
            L_cycles=4,
            expansion=4.0,
            halt_max_steps=16,
            puzzle_emb_ndim=512,
            puzzle_emb_tokens=16,
        ),
        loss=LossConfig(ce="stablemax"),
        data=DataConfig(source="arcagi", n_aug=1000, include_eval_demos=True, sample_by="pair"),
        train=TrainConfig(
            batch_size=768,
            epochs=100_000,
            lr=1e-4,
            lr_min_ratio=1.0,
            warmup_steps=2000,
            weight_decay=0.1,
            optimizer="adam_atan2",
            beta1=0.9,
            beta2=0.95,
            grad_clip=0.0,
            puzzle_emb_lr=1e-2,
            puzzle_emb_weight_decay=0.1,
            ema=True,
            ema_rate=0.999,
        ),
    )


def _trm_arc2() -> RunConfig:
    # The same run on ARC-AGI-2 (1000 training + 120 evaluation tasks).
    cfg = _trm_arc1()
    cfg.data.source = "arcagi2"
    return cfg


def _trm_smoke() -> RunConfig:
    # TRM sized to visibly learn on 2 CPU cores in a couple of minutes. One layer, T=2, n=1 and
    # softmax CE: at 2 layers with T=2, n=2 (stablemax or softmax, lr 1e-3 or 3e-4) this tiny
    # model collapsed to (nearly) one predicted class within 30-50 steps and the probe stopped it.
    return RunConfig(
        model=ModelConfig(
            arch="trm",
            hidden_size=64,
            num_heads=2,
            H_layers=0,
            L_layers=1,
            H_cycles=2,
            L_cycles=1,
            expansion=2.0,
            halt_max_steps=2,
            puzzle_emb_ndim=64,
            puzzle_emb_tokens=2,
        ),
        loss=LossConfig(ce="softmax"),
        data=DataConfig(n_aug=8, max_tasks=24, include_eval_demos=True),
        train=TrainConfig(
            batch_size=8,
            steps=150,
            lr=1e-3,
            optimizer="adam_atan2",  # as trm-arc1
            grad_clip=0.0,
            lr_min_ratio=1.0,
            warmup_steps=10,
            checkpoint_every=50,
            log_every=10,
            puzzle_emb_lr=1e-2,
            probe_pairs=8,
            ema=True,
            ema_rate=0.9,
        ),
    )


# Sudoku and maze (hrm_fast/boards.py). The official runs read the Hugging Face CSV files, which
# a user downloads (docs/boards.md): sudoku-extreme's builder subsamples 1000 training puzzles
# (ours: the first 1000 rows) and maze-30x30-hard-1k holds 1000. An epoch is one pass over them.
SUDOKU_CSV = "sudoku:data/sudoku-extreme/train.csv"
MAZE_CSV = "maze:data/maze-30x30-hard-1k/train.csv"


def _board_train(**kw) -> TrainConfig:
    # TRM's and HRM's README board runs: lr = puzzle_emb_lr, weight decay 1.0 on both,
    # AdamATan2 without clipping, constant lr after 2000 warm-up steps, batch 768.
    base = dict(batch_size=768, lr=1e-4, lr_min_ratio=1.0, warmup_steps=2000, weight_decay=1.0,
                optimizer="adam_atan2", grad_clip=0.0, puzzle_emb_lr=1e-4,
                puzzle_emb_weight_decay=1.0, checkpoint_every=5000)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _trm_board(source: str, canvas: int, vocab: int, **model) -> RunConfig:
    cfg = _trm_arc1()
    cfg.model = dataclasses.replace(cfg.model, vocab_size=vocab, **model)
    cfg.data = DataConfig(source=source, canvas=canvas, max_tasks=1000)
    # TRM's board runs: eval_interval 5000 epochs (our checkpoint_every is in steps).
    cfg.train = _board_train(epochs=50_000, ema=True, ema_rate=0.999)
    return cfg


def _sudoku_extreme() -> RunConfig:
    # TRM's Sudoku-Extreme MLP run (87.4%): mlp_t, no position encoding, 2 layers, T=3, n=6.
    return _trm_board(SUDOKU_CSV, 9, 11, mlp_t=True, pos_encodings="none", H_cycles=3,
                      L_cycles=6)  # fmt: skip


def _maze_hard() -> RunConfig:
    # TRM's Maze-Hard run (85.3%): attention, 2 layers, T=3, n=4.
    return _trm_board(MAZE_CSV, 30, 6, H_cycles=3, L_cycles=4)


def _hrm_board(source: str, canvas: int, vocab: int) -> RunConfig:
    # HRM's README board runs (8 GPUs): the paper model, 20000 epochs, eval every 2000.
    cfg = _paper()
    cfg.model.vocab_size = vocab
    cfg.loss = LossConfig(ce="stablemax")
    cfg.data = DataConfig(source=source, canvas=canvas, max_tasks=1000)
    cfg.train = _board_train(epochs=20_000)
    return cfg


def _hrm_sudoku_extreme() -> RunConfig:
    return _hrm_board(SUDOKU_CSV, 9, 11)


def _hrm_maze_hard() -> RunConfig:
    return _hrm_board(MAZE_CSV, 30, 6)


def _sudoku_cpu() -> RunConfig:
    # Solves held-out 9x9 Sudokus on 2 CPU cores in about half an hour (docs/boards.md): TRM
    # mlp_t at hidden 64, T=2, n=2, 4 ACT steps, no puzzle embedding, generated puzzles with
    # 10 blanks each (each has one solution).
    return RunConfig(
        model=ModelConfig(arch="trm", hidden_size=64, num_heads=4, H_layers=0, L_layers=2,
                          H_cycles=2, L_cycles=2, expansion=4.0, halt_max_steps=4,
                          puzzle_emb_ndim=0, pos_encodings="none", mlp_t=True, vocab_size=11),
        loss=LossConfig(ce="softmax"),
        data=DataConfig(source="sudoku-gen", canvas=9, gen_train=10_000, gen_test=500,
                        min_blanks=10, max_blanks=10),
        train=TrainConfig(batch_size=32, steps=1200, lr=2e-3, warmup_steps=50, weight_decay=0.1,
                          optimizer="adamw", grad_clip=1.0, checkpoint_every=100, log_every=25,
                          probe_pairs=8),
    )  # fmt: skip


def _maze_cpu() -> RunConfig:
    # The smallest sensible maze run: TRM attention at hidden 64 on generated 30x30 mazes with
    # short shortest paths (docs/boards.md says what it reaches); 2 heads: head dim 32, which
    # the fused attention kernels take.
    return RunConfig(
        model=ModelConfig(arch="trm", hidden_size=64, num_heads=2, H_layers=0, L_layers=2,
                          H_cycles=2, L_cycles=2, expansion=4.0, halt_max_steps=4,
                          puzzle_emb_ndim=0, vocab_size=6),
        loss=LossConfig(ce="softmax"),
        data=DataConfig(source="maze-gen", canvas=30, gen_train=2000, gen_test=200,
                        min_difficulty=4, max_difficulty=20),
        # A fresh model predicts one class on every maze cell, so no predicted board differs
        # before training: the probe's TV alone gates the start.
        train=TrainConfig(batch_size=16, steps=600, lr=2e-3, warmup_steps=50, weight_decay=0.1,
                          optimizer="adamw", grad_clip=1.0, checkpoint_every=100, log_every=25,
                          probe_pairs=8, probe_min_differ=0.0),
    )  # fmt: skip


def _board_debug() -> RunConfig:
    # Tiny Sudoku run for unit tests: 4x4 boards, one small TRM layer.
    return RunConfig(
        model=ModelConfig(arch="trm", hidden_size=32, num_heads=2, H_layers=0, L_layers=1,
                          H_cycles=2, L_cycles=1, expansion=2.0, halt_max_steps=2,
                          puzzle_emb_ndim=0, pos_encodings="none", mlp_t=True, vocab_size=6),
        loss=LossConfig(ce="softmax"),
        data=DataConfig(source="sudoku-gen", canvas=4, sudoku_box=2, gen_train=64, gen_test=16,
                        max_blanks=6),
        train=TrainConfig(batch_size=8, steps=6, lr=1e-3, warmup_steps=2, checkpoint_every=3,
                          log_every=1, probe_pairs=4),
    )  # fmt: skip


PRESETS = {
    "seed": _seed,
    "paper": _paper,
    "smoke": _smoke,
    "debug": _debug,
    "collapse": _collapse,
    "trm-arc1": _trm_arc1,
    "trm-arc2": _trm_arc2,
    "trm-smoke": _trm_smoke,
    "sudoku-extreme": _sudoku_extreme,
    "maze-hard": _maze_hard,
    "hrm-sudoku-extreme": _hrm_sudoku_extreme,
    "hrm-maze-hard": _hrm_maze_hard,
    "sudoku-cpu": _sudoku_cpu,
    "maze-cpu": _maze_cpu,
    "board-debug": _board_debug,
}


def from_name(name: str) -> RunConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# Presets sized for a CPU (tests, demos). Every other preset is sized for a GPU: the kernel
# compile report (hrm_fast.compile_report) compiles the kernels at its training shapes.
CPU_PRESETS = ("smoke", "debug", "trm-smoke", "collapse", "sudoku-cpu", "maze-cpu", "board-debug")
