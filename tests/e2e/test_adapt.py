"""``hrm-fast adapt``: new puzzle rows for unseen tasks trained on their demonstrations only,
frozen or full network, bit-exact resume, a time budget that stops with a checkpoint, the
overlap guard, and the whole chain train -> adapt -> predict -> submission.json."""

import json

import pytest
import torch

from hrm_fast.cli import main
from tests.e2e.test_predict import _challenges
from tests.support.tasks import write_nonsquare_tasks as _write_tasks

TABLE = "inner.puzzle_emb.weights"


def _debug_cfg(source, arch="hrm"):
    from hrm_fast.presets import from_name

    cfg = from_name("debug")
    cfg.model.arch = arch
    cfg.data.source = str(source)
    cfg.data.canvas = 8
    cfg.train.steps = 2
    cfg.train.probe_min_differ = cfg.train.probe_min_tv = 0.0  # untrained models pass
    return cfg


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A debug model trained on 3 tasks; 4 other tasks as a challenges file without
    solutions (and the same tasks with them, for scoring)."""
    from hrm_fast.trainer.loop import train

    root = tmp_path_factory.mktemp("adapt")
    cfg = _debug_cfg(_write_tasks(root / "seen", 3, seed=5))
    assert train(cfg, root / "run", quiet=True) == 0
    new = _write_tasks(root / "new", 4, seed=9)
    _challenges(root / "new_challenges.json", [new])
    solved = root / "solved"
    solved.mkdir()
    _challenges(solved / "new_challenges.json", [new], with_solutions=True)
    return root


def _load(path):
    from hrm_fast import checkpoint as ckpt

    return ckpt.load(path)


def _adapt(root, out, *extra):
    argv = ["adapt", str(root / "run"), "--source", str(root / "new_challenges.json"),
            "--out", str(out), "--quiet", *extra]  # fmt: skip
    return main(argv)


def test_embeddings_mode_trains_only_the_new_rows(base_run, tmp_path):
    base = _load(base_run / "run")
    out = tmp_path / "emb"
    assert _adapt(base_run, out, "--mode", "embeddings", "--steps", "3", "--n-aug", "2") == 0
    adapted = _load(out)
    n_old = base["model"][TABLE].shape[0]
    table = adapted["model"][TABLE]
    assert table.shape[0] == n_old + 4 * 2  # 4 new tasks x 2 augmentations
    # The network and the trained rows are untouched; the new rows moved from their start.
    for k, v in base["model"].items():
        if k != TABLE:
            assert torch.equal(adapted["model"][k], v), k
    assert torch.equal(table[:n_old], base["model"][TABLE])
    start = base["model"][TABLE][1:].mean(0)
    assert not torch.allclose(table[n_old:], start.expand(8, -1))
    assert adapted["optimizer"]["state"] == {}  # no optimiser state for a frozen network
    block = adapted["dataset"]["puzzle_blocks"][-1]
    assert block["first_id"] == n_old and block["n_aug"] == 2 and len(block["task_ids"]) == 4
    assert adapted["dataset"]["task_ids"] == base["dataset"]["task_ids"]
    assert adapted["adapt"]["mode"] == "embeddings"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["event"] == "train"] == [1, 2, 3]
    assert any(r["event"] == "probe" for r in recs)


def test_initial_rows_rule():
    from hrm_fast.adapt import initial_rows

    table = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 6.0]])
    assert torch.equal(initial_rows(table, 2, "mean"), torch.tensor([[2.0, 4.0]] * 2))
    assert torch.equal(initial_rows(table, 1, "blank"), torch.zeros(1, 2))


def test_new_rows_learn_only_from_demonstrations(base_run):
    """The adapt data set's trainable pairs are the demonstrations; the test pairs (with or
    without outputs) are never drawn."""
    from hrm_fast.adapt import AdaptOptions, adapt_dataset, load_base
    from hrm_fast.arc_files import load_tasks
    from hrm_fast.data import DeviceSampler

    base = load_base(base_run / "run")
    src = str(base_run / "solved" / "new_challenges.json")
    tasks = load_tasks(src, "evaluation", 8, need_outputs=False)
    ds = adapt_dataset(base, AdaptOptions(src, steps=1), tasks, pool_seed=1)
    assert ds.num_train_pairs == sum(len(t.train_pairs) for t in tasks)
    first = ds.first_id
    assert first == base.table.shape[0] and ds.num_puzzle_ids == first + 4 * base.cfg.data.n_aug
    torch.manual_seed(0)
    d = DeviceSampler(ds).draw(256)
    assert int(d["pair"].max()) < ds.num_train_pairs  # test pairs follow the trainable ones
    assert int(d["puzzle"].min()) >= first and int(d["puzzle"].max()) < ds.num_puzzle_ids


def test_full_mode_trains_the_network(base_run, tmp_path):
    base = _load(base_run / "run")
    out = tmp_path / "full"
    assert _adapt(base_run, out, "--mode", "full", "--steps", "2") == 0
    adapted = _load(out)
    changed = [k for k, v in base["model"].items() if k != TABLE
               and not torch.equal(adapted["model"][k], v)]  # fmt: skip
    assert changed
    assert adapted["optimizer"]["state"]


def test_resume_is_bit_exact(base_run, tmp_path):
    """A run stopped after its step-2 checkpoint and resumed equals the run straight to 4."""
    from hrm_fast import checkpoint as ckpt
    from tests.support.training import logged_losses

    straight, split = tmp_path / "straight", tmp_path / "split"
    flags = ("--mode", "full", "--checkpoint-every", "2", "--steps", "4")
    assert _adapt(base_run, straight, *flags) == 0
    assert _adapt(base_run, split, *flags) == 0
    ckpt.list_checkpoints(split)[-1].unlink()  # as if it had stopped after step 2
    lines = (split / "metrics.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, x in enumerate(lines) if '"step": 3' in x)
    (split / "metrics.jsonl").write_text("".join(lines[:cut]))
    assert _adapt(base_run, split, *flags, "--resume") == 0
    assert logged_losses(straight) == logged_losses(split)
    a, b = _load(straight), _load(split)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):  # fmt: skip
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k


def test_resume_refuses_another_adaptation(base_run, tmp_path, capsys):
    out = tmp_path / "r"
    assert _adapt(base_run, out, "--steps", "1") == 0
    capsys.readouterr()
    assert _adapt(base_run, out, "--steps", "2", "--mode", "full", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hrm-fast:") and "mode" in err and len(err.splitlines()) == 1


def test_time_budget_stops_with_a_checkpoint(base_run, tmp_path, capsys):
    out = tmp_path / "budget"
    argv = ["adapt", str(base_run / "run"), "--source", str(base_run / "new_challenges.json"),
            "--out", str(out), "--time-budget", "0.0001"]  # fmt: skip
    assert main(argv) == 0
    assert "time budget reached at step 1" in capsys.readouterr().err
    assert _load(out)["step"] == 1


def test_bad_flags_are_one_line(base_run, tmp_path, capsys):
    for extra, needle in (([], "--steps N or --time-budget"), (["--steps", "0"], "--steps"),
                          (["--steps", "1", "--n-aug", "0"], "--n-aug")):  # fmt: skip
        assert _adapt(base_run, tmp_path / "x", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_adapt_refuses_overlap_unless_allowed(base_run, tmp_path, capsys):
    """A new task whose test pair is one of the base's training pairs (by content)."""
    seen = sorted((base_run / "seen").glob("*.json"))[0]
    task = json.loads(seen.read_text())
    new = tmp_path / "new"
    new.mkdir()
    (new / "zz_copy.json").write_text(json.dumps({"train": task["train"][1:] + task["train"][:1],
                                                  "test": task["train"][:1]}))  # fmt: skip
    argv = ["adapt", str(base_run / "run"), "--source", str(new), "--out", str(tmp_path / "o"),
            "--steps", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "1 of 1 scored test pairs" in err and "--allow-overlap true" in err
    assert main(argv + ["--allow-overlap", "true"]) == 0


def test_train_refuses_overlap_unless_allowed(tmp_path, capsys):
    from hrm_fast.trainer.loop import train

    seen = _write_tasks(tmp_path / "seen", 2, seed=5)
    held = _write_tasks(tmp_path / "held", 1, seed=6)
    f = sorted(held.glob("*.json"))[0]
    task = json.loads(f.read_text())
    task["test"] = json.loads(sorted(seen.glob("*.json"))[0].read_text())["train"][:1]
    f.write_text(json.dumps(task))
    cfg = _debug_cfg(seen)
    cfg.data.eval_source = str(held)
    cfg.train.steps = 1
    argv = ["train", "--preset", "debug", "--source", str(seen), "--eval-source", str(held),
            "--canvas", "8", "--steps", "1", "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scored test pairs" in err
    cfg.data.allow_overlap = True
    assert train(cfg, tmp_path / "run2", quiet=True) == 0
    saved = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert saved["data"]["allow_overlap"] is True


@pytest.mark.parametrize("arch", ["hrm", "trm"])
def test_chain_train_adapt_predict_submission(arch, base_run, tmp_path, capsys):
    """Train -> adapt on four unseen tasks from a challenges file without solutions ->
    predict -> a valid submission.json with every task and test input; predict and eval
    find the new rows."""
    from hrm_fast.submission import validate_submission
    from hrm_fast.trainer.loop import train

    run = base_run / "run"
    if arch == "trm":
        cfg = _debug_cfg(base_run / "seen", arch="trm")
        run = tmp_path / "trm_run"
        assert train(cfg, run, quiet=True) == 0
    challenges = base_run / "new_challenges.json"
    adapted = tmp_path / "adapted"
    argv = ["adapt", str(run), "--source", str(challenges), "--out", str(adapted),
            "--steps", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    pred = tmp_path / "pred"
    argv = ["predict", str(adapted), "--source", str(challenges), "--out", str(pred),
            "--n-aug", "2", "--render", "0"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    sub = json.loads((pred / "submission.json").read_text())
    ch = json.loads(challenges.read_text())
    validate_submission(sub, {tid: len(t["test"]) for tid, t in ch.items()})
    assert set(sub) == set(ch) and len(ch) == 4
    report = json.loads((pred / "predict.json").read_text())
    assert report["n_tasks_with_puzzle_id"] == 4 and not report["scored"]
    # With solutions beside the challenges, predict scores the adapted tasks as seen ones.
    solved = base_run / "solved" / "new_challenges.json"
    argv = ["predict", str(adapted), "--source", str(solved), "--out", str(tmp_path / "p2"),
            "--n-aug", "2", "--render", "0"]  # fmt: skip
    assert main(argv) == 0
    scored = json.loads((tmp_path / "p2" / "predict.json").read_text())
    assert scored["scored"] and scored["overall"]["seen"]["n_tasks"] == 4
    # eval on the adapted checkpoint: its own held-out set, rows found by task id.
    assert main(["eval", str(adapted), "--n-aug", "2", "--out", str(tmp_path / "ev"),
                 "--render", "0"]) == 0  # fmt: skip


def test_benchmark_duplicate_is_reported_not_refused():
    from hrm_fast.errors import UserError
    from hrm_fast.overlap import OverlapReport, refuse_overlap

    notes = []
    own = OverlapReport(419, 1, ["070dd51e"], {"070dd51e": ["40853293"]})
    refuse_overlap(own, allowed=False, log=notes.append)
    assert "duplicate" in notes[0] and "1 of 419" in notes[0]
    more = OverlapReport(419, 1, ["070dd51e"], {"070dd51e": ["40853293", "070dd51e"]})
    with pytest.raises(UserError, match="--allow-overlap true"):
        refuse_overlap(more, allowed=False)


def test_adapt_under_torchrun_two_ranks(base_run, tmp_path):
    """2 gloo ranks, frozen network: the new rows train (gathered across ranks), the network
    stays, rank 0 writes the checkpoint."""
    from tests.distributed.test_distributed import run, torchrun

    out = tmp_path / "dp"
    cmd = torchrun("--standalone", "--nproc-per-node", "2", "-m", "hrm_fast", "adapt",
                   str(base_run / "run"), "--source", str(base_run / "new_challenges.json"),
                   "--out", str(out), "--steps", "2", "--device", "cpu")  # fmt: skip
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 ranks" in r.stderr
    base, adapted = _load(base_run / "run"), _load(out)
    assert adapted["step"] == 2 and adapted["world_size"] == 2
    n_old = base["model"][TABLE].shape[0]
    assert torch.equal(adapted["model"][TABLE][:n_old], base["model"][TABLE])
    assert not torch.equal(adapted["model"][TABLE][n_old:], adapted["model"][TABLE][n_old:n_old + 1]
                           .expand(adapted["model"][TABLE].shape[0] - n_old, -1))  # fmt: skip
    for k, v in base["model"].items():
        if k != TABLE:
            assert torch.equal(adapted["model"][k], v), k


def test_adapt_holds_the_run_lock(base_run, tmp_path, capsys):
    """A second writer into an adapt run's directory gets one line (exit 2) and writes nothing."""
    from hrm_fast.run_lock import run_lock
    from tests.support.cli import one_line

    out = tmp_path / "locked"
    out.mkdir()
    with run_lock(out):
        assert _adapt(base_run, out, "--steps", "2") == 2
        assert "pid" in one_line(capsys)
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()
