"""Sudoku / maze end to end: a tiny board run trains, resumes bit-exact, probes and evaluates;
eval's scores on planted predictions; the board presets validate."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.board_eval import (
    board_report,
    default_act_steps,
    difficulty_buckets,
    parse_act_steps,
    score_boards,
)
from hrm_fast.cli import main as cli_main
from hrm_fast.data import build_dataset
from hrm_fast.errors import UserError
from hrm_fast.evaluate import evaluate
from hrm_fast.presets import from_name
from hrm_fast.trainer.loop import train
from hrm_fast.trainer.step import Trainer
from tests.support.training import logged_losses, straight_and_resumed

BOARD_PRESETS = ("sudoku-extreme", "maze-hard", "hrm-sudoku-extreme", "hrm-maze-hard",
                 "sudoku-cpu", "maze-cpu", "board-debug")  # fmt: skip


@pytest.fixture
def board_cfg():
    return from_name("board-debug")


def test_board_run_trains_and_records_its_data(board_cfg, tmp_path):
    run = tmp_path / "run"
    assert train(board_cfg, run, quiet=True) == 0
    payload = ckpt.load(run)
    data = build_dataset(board_cfg.data, seed=0)
    assert payload["dataset"]["kind"] == "sudoku"
    assert payload["dataset"]["boards"] == data.digest
    assert payload["model"]["inner.lm_head.weight"].shape[0] == 6  # 4x4 Sudoku vocab
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in records if r.get("event") == "probe"]
    assert len(probes) == 3 and all(p["passed"] for p in probes)  # step 0 and 2 checkpoints
    losses = logged_losses(run)
    assert len(losses) == 6 and all(np.isfinite(loss) for _, loss in losses)


def test_board_resume_equals_straight_run(board_cfg, tmp_path):
    straight, split = straight_and_resumed(board_cfg, tmp_path, 6, 3)
    assert logged_losses(straight) == logged_losses(split)
    a, b = ckpt.load(straight)["model"], ckpt.load(split)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_other_boards(board_cfg, tmp_path):
    run = tmp_path / "run"
    board_cfg.train.steps = 3
    assert train(board_cfg, run, quiet=True) == 0
    board_cfg.train.steps = 6
    board_cfg.data.gen_test = 15  # other held-out boards: another digest
    with pytest.raises(UserError, match="other sudoku boards"):
        train(board_cfg, run, resume=True, quiet=True)


def test_vocab_that_does_not_fit_the_kind_is_refused(board_cfg):
    board_cfg.model.vocab_size = 12
    with pytest.raises(UserError, match=r"--vocab-size 12: sudoku boards use 6 tokens"):
        Trainer(board_cfg)


def test_canvas_that_does_not_fit_the_kind_is_refused(board_cfg):
    board_cfg.data.canvas = 9
    with pytest.raises(UserError, match="--canvas 9"):
        Trainer(board_cfg)


@pytest.mark.parametrize("name", BOARD_PRESETS)
def test_board_presets_validate(name):
    cfg = from_name(name)
    cfg.validate()
    kind_vocab = {9: 11, 30: 6, 4: 6}
    assert cfg.model.vocab_size == kind_vocab[cfg.data.canvas]


def test_trm_board_presets_follow_the_readme():
    s, m = from_name("sudoku-extreme"), from_name("maze-hard")
    assert s.model.mlp_t and s.model.pos_encodings == "none"
    assert (s.model.H_cycles, s.model.L_cycles, s.model.L_layers) == (3, 6, 2)
    assert not m.model.mlp_t and (m.model.H_cycles, m.model.L_cycles) == (3, 4)
    for cfg in (s, m):
        t = cfg.train
        assert (t.epochs, t.lr, t.puzzle_emb_lr, t.weight_decay) == (50_000, 1e-4, 1e-4, 1.0)
        assert t.puzzle_emb_weight_decay == 1.0 and t.ema
        assert (cfg.model.hidden_size, t.batch_size) == (512, 768)


def test_trainer_probe_draws_real_boards(board_cfg):
    trainer = Trainer(board_cfg)
    report = trainer.probe()
    assert report.pairs == board_cfg.train.probe_pairs
    assert report.input_gain is not None  # board pairs carry labels


def test_cli_probe_on_a_board_run(board_cfg, tmp_path, capsys):
    run = tmp_path / "run"
    board_cfg.train.steps = 3
    assert train(board_cfg, run, quiet=True) == 0
    out = tmp_path / "probe.json"
    rc = cli_main(["probe", str(run), "--json", str(out), "--device", "cpu"])
    assert rc in (0, 3)
    assert json.loads(out.read_text())["pairs"] == board_cfg.train.probe_pairs


# ----------------------------------------------------------------------------- eval


def _planted(board_cfg):
    data = build_dataset(board_cfg.data, seed=0)
    pred = data.test_labels.astype(np.int32).copy()  # every board right ...
    blank = np.flatnonzero(data.test_inputs[1] == 1)[0]
    pred[1, blank] = 2 if pred[1, blank] != 2 else 3  # ... but one blank of board 1
    pred[2, np.flatnonzero(data.test_inputs[2] != 1)[0]] = 1  # and one given of board 2
    return data, pred


def test_exact_accuracy_on_planted_predictions(board_cfg):
    data, pred = _planted(board_cfg)
    s = score_boards(data, pred)
    n = len(pred)
    assert s["exact"].tolist() == [True, False, False] + [True] * (n - 3)
    blanks = int((data.test_inputs == 1).sum())
    assert s["fill_cells"].sum() == blanks
    assert s["fill_correct"].sum() == blanks - 1  # the given's error is not a blank's
    report = board_report(data, {1: pred, 2: data.test_labels.astype(np.int32)}, final=1)
    assert report["overall"]["exact"] == pytest.approx((n - 2) / n)
    assert report["overall"]["blank_accuracy"] == pytest.approx((blanks - 1) / blanks)
    assert report["overall"]["cell_accuracy"] == pytest.approx(1 - 2 / pred.size)
    assert report["by_act_steps"]["2"]["exact"] == 1.0
    assert sum(b["n_boards"] for b in report["by_blanks"]) == n


def test_difficulty_buckets_cover_every_value():
    assert difficulty_buckets(np.array([3, 3, 5])) == [(3, 3), (5, 5)]
    v = np.arange(100)
    ranges = difficulty_buckets(v, max_buckets=4)
    assert ranges[0][0] == 0 and ranges[-1][1] == 99
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_act_steps_parsing():
    assert parse_act_steps("8,1,2,4,2") == (1, 2, 4, 8)
    assert default_act_steps(4) == (1, 2, 4) and default_act_steps(6) == (1, 2, 4, 6)
    for bad in ("0,1", "a", ""):
        with pytest.raises(UserError, match="--act-steps"):
            parse_act_steps(bad)


def test_eval_of_a_board_run(board_cfg, tmp_path):
    run = tmp_path / "run"
    assert train(board_cfg, run, quiet=True) == 0
    report = evaluate(run, out=tmp_path / "ev", device="cpu", quiet=True, act_steps=(1, 2, 3))
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["kind"] == "sudoku" and saved["overall"]["n_boards"] == board_cfg.data.gen_test
    assert set(saved["by_act_steps"]) == {"1", "2", "3"}
    assert saved["final_act_steps"] == board_cfg.model.halt_max_steps
    assert (tmp_path / "ev" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert report["overall"] == saved["overall"]


def test_eval_refuses_other_boards(board_cfg, tmp_path):
    run = tmp_path / "run"
    board_cfg.train.steps = 3
    assert train(board_cfg, run, quiet=True) == 0
    cfg_path = run / "checkpoints" / "step_000000003.pt"
    payload = torch.load(cfg_path, weights_only=True)
    payload["dataset"]["boards"] = "0" * 16
    torch.save(payload, cfg_path)
    with pytest.raises(UserError, match="other sudoku boards"):
        evaluate(run, out=tmp_path / "ev", device="cpu", quiet=True)


def test_cli_report_on_a_board_run(board_cfg, tmp_path):
    run = tmp_path / "run"
    assert train(board_cfg, run, quiet=True) == 0
    assert cli_main(["report", str(run)]) == 0


# ----------------------------------------------------------------------------- torchrun


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "hrm_fast", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_board_run_under_two_gloo_ranks(tmp_path):
    run = tmp_path / "run"
    r = _torchrun("train", "--preset", "board-debug", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    payload = ckpt.load(run)
    assert payload["world_size"] == 2 and payload["dataset"]["kind"] == "sudoku"
    r = _torchrun("eval", str(run), "--out", str(tmp_path / "ev"), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["step"] == 6 and saved["overall"]["n_boards"] == 16


# ----------------------------------------------------------------------------- convert


def test_convert_official_board_checkpoints(tmp_path):
    from hrm_fast.arch import build_model
    from hrm_fast.config import ModelConfig
    from hrm_fast.convert import convert_to_checkpoint, to_official_state_dict

    for kind, side, vocab, mlp_t in (("sudoku", 9, 11, True), ("maze", 30, 6, False)):
        m = ModelConfig(arch="trm", hidden_size=32, num_heads=1, H_layers=0, L_layers=1,
                        halt_max_steps=2, puzzle_emb_ndim=32, puzzle_emb_tokens=2, mlp_t=mlp_t,
                        vocab_size=vocab)  # fmt: skip
        ours = build_model(m, seq_len=side * side, num_puzzle_ids=2, batch_size=1)
        src = tmp_path / f"{kind}.pt"
        torch.save(to_official_state_dict(ours, init_dtype=None), src)
        with pytest.raises(UserError, match=f"--kind {kind}"):
            convert_to_checkpoint(src, tmp_path / f"{kind}-arc", num_heads=1)
        path = convert_to_checkpoint(src, tmp_path / kind, kind=kind, num_heads=1,
                                     puzzle_emb_tokens=2, halt_max_steps=2)  # fmt: skip
        payload = ckpt.load(path)
        cfg = payload["config"]
        assert payload["dataset"]["kind"] == kind
        assert (cfg["data"]["source"], cfg["data"]["canvas"]) == (f"{kind}-gen", side)
        assert cfg["model"]["vocab_size"] == vocab and cfg["model"]["mlp_t"] == mlp_t
        for k, v in ours.state_dict().items():
            if not k.endswith(("local_weights", "local_ids")):
                assert torch.equal(payload["model"][k], v), k


def test_predict_refuses_a_board_checkpoint(board_cfg, tmp_path, capsys):
    run = tmp_path / "run"
    board_cfg.train.steps = 3
    assert train(board_cfg, run, quiet=True) == 0
    rc = cli_main(["predict", str(run), "--source", "arcagi", "--out", str(tmp_path / "p")])
    assert rc == 2 and "a sudoku checkpoint; predict answers ARC" in capsys.readouterr().err


def test_board_run_scores_held_out_boards_during_training(board_cfg, tmp_path):
    """--eval-every on a board run: eval records equal `hrm-fast eval` of that checkpoint
    (exact = pass@1 = pass@2, blank-cell accuracy as pixel accuracy) and best.pt is kept."""
    run = tmp_path / "run"
    board_cfg.train.eval_every = board_cfg.train.checkpoint_every
    assert train(board_cfg, run, quiet=True) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == list(
        range(board_cfg.train.eval_every, board_cfg.train.steps + 1, board_cfg.train.eval_every)
    )
    last = evals[-1]
    assert last["pass1"] == last["pass2"] and last["n_tasks"] == board_cfg.data.gen_test
    report = evaluate(
        ckpt.checkpoint_path(run, board_cfg.train.steps), out=tmp_path / "ev", device="cpu",
        quiet=True, act_steps=(board_cfg.model.halt_max_steps,),
    )  # fmt: skip
    assert last["pass1"] == pytest.approx(report["overall"]["exact"])
    assert last["pixel_accuracy"] == pytest.approx(report["overall"]["blank_accuracy"])
    assert (run / "best.pt").is_file()
    assert ckpt.load(run / "best.pt")["step"] == max(evals, key=lambda r: r["pass2"])["step"]
