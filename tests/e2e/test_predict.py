"""``hrm-fast predict`` and the ARC Prize submission: test inputs without outputs, learned vs
blank puzzle ids, the same numbers as ``eval`` when solutions are known, a time budget that
still leaves a valid file; ``eval --pass-k`` and the seen / unseen split."""

import json

import numpy as np
import pytest

from hrm_fast.cli import main
from hrm_fast.scoring import parse_pass_k, score_pair, summarise, vote
from hrm_fast.submission import SubmissionError, grid_problem, validate_submission
from tests.support.cli import one_line
from tests.support.tasks import write_nonsquare_tasks


def _challenges(path, task_dirs, with_solutions=False):
    """An ARC Prize challenges file (test inputs only) from task files; solutions optional."""
    challenges, solutions = {}, {}
    for d in task_dirs:
        for f in sorted(d.glob("*.json")):
            task = json.loads(f.read_text())
            challenges[f.stem] = {
                "train": task["train"],
                "test": [{"input": p["input"]} for p in task["test"]],
            }
            solutions[f.stem] = [p["output"] for p in task["test"]]
    path.write_text(json.dumps(challenges))
    if with_solutions:
        path.with_name(path.name.replace("_challenges", "_solutions")).write_text(
            json.dumps(solutions)
        )
    return challenges, solutions


# --------------------------------------------------------------------------- submission format


def test_submission_format_checks():
    good = {"a": [{"attempt_1": [[1, 2]], "attempt_2": [[0]]}]}
    validate_submission(good, {"a": 1})
    bad = [
        ({}, {"a": 1}, "missing"),
        ({**good, "b": []}, {"a": 1}, "not in the challenges"),
        ({"a": []}, {"a": 1}, "0 answers for 1"),
        ({"a": [{"attempt_1": [[1]]}]}, {"a": 1}, "attempt_2"),
        ({"a": [{"attempt_1": [[1]], "attempt_2": [[1, 2], [3]]}]}, {"a": 1}, "row 1"),
        ({"a": [{"attempt_1": [[1]], "attempt_2": [[10]]}]}, {"a": 1}, "colour"),
        ({"a": [{"attempt_1": [[1]], "attempt_2": [[True]]}]}, {"a": 1}, "colour"),
        ({"a": [{"attempt_1": [], "attempt_2": [[1]]}]}, {"a": 1}, "non-empty"),
    ]
    for sub, expected, needle in bad:
        with pytest.raises(SubmissionError, match=needle):
            validate_submission(sub, expected)
    assert grid_problem([[0] * 31]) is not None and grid_problem([[0]] * 30) is None


# --------------------------------------------------------------------------- pass@k


def test_pass_at_k_monotone_and_pass1_pass2_unchanged():
    rng = np.random.default_rng(0)
    grids = [np.array([[c]], np.uint8) for c in range(6)]
    from hrm_fast.scoring import TaskResult

    results = []
    for e in range(40):
        pairs = []
        for _ in range(1 + e % 2):
            members = [grids[i] for i in rng.integers(0, 6, 12)]
            groups = vote(members, rng.random(12).tolist())
            target = grids[int(rng.integers(0, 6))]
            s = score_pair(groups, target)
            # pass@1 / pass@2 as before pass@k existed: the top one / one of the top two
            hits = [g.grid.shape == target.shape and (g.grid == target).all() for g in groups[:2]]
            assert s.pass1 == bool(hits and hits[0]) and s.pass2 == any(hits)
            assert (s.pass_at(1), s.pass_at(2)) == (s.pass1, s.pass2)
            pairs.append(s)
        results.append(TaskResult(e, f"t{e}", e % 3 == 0, pairs, 12))
    o = summarise(results, (1, 2, 3, 10))
    at = [o["pass_at"][k] for k in ("1", "2", "3", "10")]
    assert at == sorted(at) and at[-1] > at[0]
    assert o["pass_at"]["1"] == o["pass1"] and o["pass_at"]["2"] == o["pass2"]
    assert o["seen"]["n_tasks"] == 14 and o["unseen"]["n_tasks"] == 26
    assert o["seen"]["pass_at"]["2"] == o["pass2_with_puzzle_id"]
    assert parse_pass_k("10,1,2,2") == (1, 2, 10)
    for bad in ("0", "1,x", ""):
        with pytest.raises(ValueError):
            parse_pass_k(bad)


def test_eval_pass_k_flag(trained_run, tmp_path, capsys):
    _, run = trained_run
    out = tmp_path / "e"
    assert main(["eval", str(run), "--n-aug", "3", "--pass-k", "1,2,3", "--out", str(out)]) == 0
    assert "pass@3" in capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    o = report["overall"]
    assert report["pass_k"] == [1, 2, 3]
    assert o["pass_at"]["1"] <= o["pass_at"]["2"] <= o["pass_at"]["3"]
    assert o["seen"]["n_tasks"] == 3 and o["unseen"]["n_tasks"] == 0
    assert report["overlap"]["n_overlapping_pairs"] == 0
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error, in one line
        main(["eval", str(run), "--pass-k", "0,1"])
    assert exit_.value.code == 2
    assert "--pass-k" in one_line(capsys, "hrm-fast")


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    """Trained on tasks A only; the held-out split B (one task planted with a copy of one of
    A's training pairs under another id) is scored with the blank id."""
    from hrm_fast.presets import from_name
    from hrm_fast.trainer.loop import train

    root = tmp_path_factory.mktemp("predict_unseen")
    seen = write_nonsquare_tasks(root / "seen", 3, seed=5)
    unseen = write_nonsquare_tasks(root / "unseen", 2, seed=6)
    first = sorted(unseen.glob("*.json"))[0]
    task = json.loads(first.read_text())
    task["test"][0] = json.loads(sorted(seen.glob("*.json"))[0].read_text())["train"][0]
    first.write_text(json.dumps(task))
    cfg = from_name("debug")
    cfg.data.source, cfg.data.eval_source = str(seen), str(unseen)
    cfg.data.include_eval_demos = False
    cfg.data.allow_overlap = True  # the planted overlap is what eval must report
    cfg.data.canvas = 8
    cfg.train.steps = 2
    cfg.train.probe_min_differ = cfg.train.probe_min_tv = 0.0
    assert train(cfg, root / "run", quiet=True) == 0
    return root, root / "run", first.stem


def _same_numbers(eval_overall, predict_overall):
    for key in ("n_tasks", "n_test_pairs", "pass1", "pass2", "pair_pass1", "pair_pass2",
                "pixel_accuracy", "n_tasks_without_puzzle_id"):  # fmt: skip
        assert predict_overall[key] == pytest.approx(eval_overall[key]), key


def _attempts_follow_votes(eval_report, sub, challenges_inputs):
    """attempt_1/2 are eval's top two vote groups; where there is no second, the test input.
    (An empty predicted grid cannot be an attempt: predict passes over it, so such pairs are
    left out here.)"""
    checked = 0
    for tid, t in eval_report["tasks"].items():
        assert len(sub[tid]) == len(t["votes"])
        for i, v in enumerate(t["votes"]):
            top = v["groups"][:2]
            if not all(g["grid"] and g["grid"][0] for g in top):
                continue
            assert sub[tid][i]["attempt_1"] == top[0]["grid"]
            second = top[1]["grid"] if len(top) > 1 else challenges_inputs[tid][i]
            assert sub[tid][i]["attempt_2"] == second
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("which", ["seen", "unseen"])
def test_predict_with_solutions_equals_eval(which, trained_run, unseen_run, tmp_path, capsys):
    root, run = trained_run[0], trained_run[1]
    source = root / "tasks"
    if which == "unseen":
        root, run, _ = unseen_run
        source = root / "unseen"
    ev = tmp_path / "eval"
    assert main(["eval", str(run), "--n-aug", "3", "--batch-size", "5", "--out", str(ev)]) == 0
    pred = tmp_path / "pred"
    argv = ["predict", str(run), "--source", str(source), "--out", str(pred), "--n-aug", "3",
            "--batch-size", "4"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    eval_report = json.loads((ev / "eval.json").read_text())
    report = json.loads((pred / "predict.json").read_text())
    assert report["scored"] and not report["stopped_early"]
    _same_numbers(eval_report["overall"], report["overall"])
    assert report["tasks"] == eval_report["tasks"]  # every vote group, count and mean q_halt
    n_seen = 3 if which == "seen" else 0
    assert report["n_tasks_with_puzzle_id"] == n_seen
    assert eval_report["overall"]["unseen"]["n_tasks"] == (0 if which == "seen" else 2)
    sub = json.loads((pred / "submission.json").read_text())
    inputs = {
        f.stem: [p["input"] for p in json.loads(f.read_text())["test"]]
        for f in source.glob("*.json")
    }
    _attempts_follow_votes(eval_report, sub, inputs)
    assert (pred / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_reports_planted_overlap(unseen_run, tmp_path, capsys):
    _, run, planted = unseen_run
    assert main(["eval", str(run), "--n-aug", "2", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    warning = [x for x in captured.err.splitlines() if "warning" in x]
    assert len(warning) == 1 and planted in warning[0] and "1 of 3" in warning[0]
    assert "overlap" in captured.out
    ov = json.loads((tmp_path / "eval.json").read_text())["overlap"]
    assert ov["n_overlapping_pairs"] == 1 and ov["task_ids"] == [planted]


def test_eval_refuses_tasks_it_cannot_score(unseen_run, tmp_path, capsys):
    root, run, _ = unseen_run
    chal = tmp_path / "x_challenges.json"
    _challenges(chal, [root / "unseen"])  # no solutions file beside it
    assert main(["eval", str(run), "--eval-source", str(chal), "--out", str(tmp_path)]) == 2
    assert "x_solutions.json" in one_line(capsys, "hrm-fast")
    assert not (tmp_path / "eval.json").exists()


def test_predict_challenges_without_solutions(unseen_run, tmp_path, capsys):
    root, run, _ = unseen_run
    chal = tmp_path / "new_challenges.json"
    challenges, _ = _challenges(chal, [root / "seen", root / "unseen"])
    out = tmp_path / "pred"
    assert (
        main(["predict", str(run), "--source", str(chal), "--out", str(out), "--n-aug", "2"]) == 0
    )
    printed = capsys.readouterr()
    assert "submission.json" in printed.out and "ETA" in printed.err
    sub = json.loads((out / "submission.json").read_text())
    validate_submission(sub, {t: len(c["test"]) for t, c in challenges.items()})
    assert list(sub) == sorted(challenges)
    report = json.loads((out / "predict.json").read_text())
    assert not report["scored"] and report["overall"] is None
    # the trained tasks use their learned ids; the held-out ones the blank id
    assert report["tasks_with_puzzle_id"] == sorted(p.stem for p in (root / "seen").glob("*"))
    assert report["n_test_inputs"] == sum(len(c["test"]) for c in challenges.values())
    assert 0 <= report["n_fallback_attempts"] <= 2 * report["n_test_inputs"]


def test_predict_time_budget_still_writes_every_answer(unseen_run, tmp_path, capsys):
    root, run, _ = unseen_run
    out = tmp_path / "pred"
    # A budget far below one batch: the first batch runs, then voting stops.
    argv = ["predict", str(run), "--source", str(root / "seen"), "--out", str(out),
            "--n-aug", "4", "--batch-size", "2", "--time-budget", "1e-9",
            "--render", "0"]  # fmt: skip
    assert main(argv) == 0
    assert "--time-budget reached" in capsys.readouterr().out
    report = json.loads((out / "predict.json").read_text())
    assert report["stopped_early"] and report["n_canvases_predicted"] == 2
    assert report["n_unvoted"] == report["n_test_inputs"] - 2  # round-robin: one k each
    assert report["n_fallback_attempts"] >= 2 * report["n_unvoted"] + 2
    assert not report["scored"]
    sub = json.loads((out / "submission.json").read_text())
    tasks = {f.stem: json.loads(f.read_text()) for f in (root / "seen").glob("*.json")}
    validate_submission(sub, {t: len(v["test"]) for t, v in tasks.items()})
    assert not (out / "predictions.png").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--n-aug", "0"], "--n-aug"),
        (["--batch-size", "0"], "--batch-size"),
        (["--time-budget", "0"], "--time-budget"),
        (["--time-budget", "nan"], "--time-budget"),
        (["--time-budget", "-1"], "--time-budget"),
        (["--render", "-1"], "--render"),
        (["--source", "{tmp}/nope"], "nope"),
        (["--source", "{tmp}/bad_challenges.json"], "not UTF-8"),
        (["--source", "{tmp}/deep_challenges.json"], "nested too deeply"),
        (["--source", "{tmp}/conflict_challenges.json"], "differs"),
    ],
)
def test_predict_bad_input(args, needle, unseen_run, tmp_path, capsys):
    root, run, _ = unseen_run
    (tmp_path / "bad_challenges.json").write_bytes(b'{"a": "\xff\xfe"}')
    (tmp_path / "deep_challenges.json").write_text("[" * 100_000 + "]" * 100_000)
    _, sol = _challenges(tmp_path / "conflict_challenges.json", [root / "seen"], True)
    chal = json.loads((tmp_path / "conflict_challenges.json").read_text())
    tid = sorted(chal)[0]
    wrong = [[(c + 1) % 10 for c in row] for row in sol[tid][0]]
    chal[tid]["test"][0]["output"] = wrong  # the challenges file's own output disagrees
    (tmp_path / "conflict_challenges.json").write_text(json.dumps(chal))
    argv = ["predict", str(run), "--source", str(root / "seen"), "--out", str(tmp_path / "o")]
    for flag_value in zip(args[::2], args[1::2], strict=True):
        flag, value = flag_value
        value = value.replace("{tmp}", str(tmp_path))
        if flag == "--source":
            argv[argv.index("--source") + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == 2
    assert needle in one_line(capsys, "hrm-fast")
    assert not (tmp_path / "o" / "submission.json").exists()
