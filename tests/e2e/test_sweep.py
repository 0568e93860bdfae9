"""The bad-input sweep as a test: for every command, bad flags, data, checkpoints and outputs
end in one line naming the culprit, the documented exit code, no traceback, and nothing in the
run directory changed. Every config field's bad values are generated from its rule
(hrm_fast.config.RULES), so a new field cannot join without them."""

import hashlib
import json

import pytest

from hrm_fast.cli import main as cli_main
from hrm_fast.config import RULES, Choice, DeviceName, Flag, Range, RunConfig, Text, iter_fields
from hrm_fast.errors import EXIT_USER_ERROR
from tests.support.cli import one_line, run_cli


def _snapshot(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def bad_values(name: str) -> list[str]:
    """Values the field's rule refuses, as a user would type them."""
    rule = RULES[name]
    default = getattr(
        getattr(RunConfig(), next(s for s, f in iter_fields(RunConfig()) if f.name == name)), name
    )
    if isinstance(rule, Range):
        out = []
        if isinstance(default, int):
            out += [str(int(rule.low) - 1), str(int(rule.high) * 2 + 1), "2.5"]
        else:
            out += [repr(rule.low - 1), repr(rule.high * 10 if rule.high else 1.0), "nan"]
        if rule.low_open:
            out.append(repr(rule.low))
        if rule.high_open:
            out.append(repr(rule.high))
        return out
    if isinstance(rule, Choice):
        return ["xyz", ""]
    if isinstance(rule, Flag):
        return ["maybe"]
    if isinstance(rule, DeviceName):
        return ["tpu", "cuda:x"]
    if isinstance(rule, Text):
        return [" "] if rule.nonempty else []
    raise AssertionError(f"{name}: rule {rule!r} has no bad values in the sweep")


FIELD_CASES = [
    (name, value)
    for _, f in iter_fields(RunConfig())
    for name in [f.name]
    for value in bad_values(name)
]


def test_every_field_with_a_rule_has_bad_values_or_is_free_text():
    free = {n for n, r in RULES.items() if isinstance(r, Text) and not r.nonempty}
    covered = {n for n, _ in FIELD_CASES}
    assert covered | free == set(RULES), sorted(set(RULES) - covered - free)
    assert free == {"eval_source", "wandb"}  # paths and names: checked where they are used


@pytest.mark.parametrize("name, value", FIELD_CASES, ids=[f"{n}={v}" for n, v in FIELD_CASES])
def test_every_field_refuses_its_bad_values(name, value, tmp_path, capsys):
    flag = "--" + name.replace("_", "-")
    train = ["train", "--preset", "debug", "--out", str(tmp_path / "r")]
    for argv in (["params", flag, value], [*train, flag, value]):
        assert run_cli(argv) == EXIT_USER_ERROR, argv
        assert flag in one_line(capsys, "hrm-fast")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- per command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.support.tasks import write_tiny_tasks

    root = tmp_path_factory.mktemp("sweep")
    tasks = write_tiny_tasks(root / "tasks")
    argv = ["train", "--preset", "debug", "--out", str(root / "run"), "--source", str(tasks),
            "--steps", "1", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    return root


COMMAND_CASES = [
    # (argv with {run}/{root}/{tmp}, exit code, text the line must hold)
    (["train", "--out", "{run}", "--preset", "debug", "--quiet"], 2, "already holds"),
    (["train", "--out", "{run}", "--resume", "--batch-size", "9"], 2, "--batch-size"),
    (["train", "--out", "{run}", "--resume", "--arch", "trm", "--H-layers", "1"], 2, "--H-layers"),
    (["train", "--out", "", "--preset", "debug"], 2, "--out"),
    (["eval", "{run}", "--batch-size", "0"], 2, "--batch-size"),
    (["eval", "{run}", "--batch-size", "100000000"], 2, "--batch-size 100000000"),
    (["eval", "{run}", "--n-aug", "x"], 2, "--n-aug"),
    (["eval", "{run}", "--out", "/proc/x"], 2, "/proc/x"),
    (["eval", "{tmp}/nothing"], 2, "nothing"),
    (["probe", "{run}", "--pairs", "100000000"], 2, "--pairs 100000000"),
    (["probe", "{run}", "--json", "/proc/x/p.json"], 2, "--json"),
    (["predict", "{run}", "--source", "{tmp}/none", "--out", "{tmp}/p"], 2, "none"),
    (["predict", "{run}", "--source", "{root}/tasks", "--out", ""], 2, "--out"),
    (["convert", "{tmp}/missing.pt", "--out", "{tmp}/c"], 2, "missing.pt"),
    (["report", "{run}", "--out", "{tmp}/r.jpg"], 2, ".png"),
    (["report", "{tmp}"], 2, "metrics.jsonl"),
    (["ablate", "--out", "/proc/x", "--steps", "1"], 2, "/proc/x"),
    (["ablate", "--out", "{tmp}/a", "--variants", ","], 2, "--variants"),
    (["ablate", "--out", "{tmp}/a", "--first-seed", "-1"], 2, "--first-seed"),
    (["make-boards", "sudoku", "--out", "{tmp}/b", "--gen-train", "0"], 2, "--gen-train"),
    (["params", "--puzzle-ids", "-1"], 2, "--puzzle-ids"),
    (["check", "--device", "tpu"], 2, "--device"),
    (["bench", "--json", "{tmp}"], 2, "--json"),
]


@pytest.mark.parametrize("argv, code, needle", COMMAND_CASES,
                         ids=[" ".join(c[0][:3]) for c in COMMAND_CASES])  # fmt: skip
def test_command_sweep(argv, code, needle, run_dir, tmp_path, capsys):
    run = run_dir / "run"
    before = _snapshot(run)
    subs = {"{run}": str(run), "{root}": str(run_dir), "{tmp}": str(tmp_path)}
    for k, v in subs.items():
        argv = [a.replace(k, v) for a in argv]
    assert run_cli(argv) == code
    assert needle in one_line(capsys, "hrm-fast")
    assert _snapshot(run) == before  # nothing in the run changed


def test_damaged_checkpoint_configs_are_one_line(run_dir, tmp_path, capsys):
    """Checkpoint loading applies the same rules as the flags."""
    import shutil

    import torch

    from hrm_fast import checkpoint as ckpt

    for field, value in (("halt_max_steps", 10**9), ("H_cycles", 10**9), ("expansion", 1e30),
                         ("div_temperature", 0.0), ("dist_backend", "xyz")):  # fmt: skip
        run = tmp_path / field
        shutil.copytree(run_dir / "run", run)
        path = ckpt.list_checkpoints(run)[-1]
        payload = torch.load(path, weights_only=True)
        section = next(s for s, f in iter_fields(RunConfig()) if f.name == field)
        payload["config"][section][field] = value
        torch.save(payload, path)
        for cmd in ("eval", "probe"):
            assert run_cli([cmd, str(run)]) == 2
            line = one_line(capsys, "hrm-fast")
            assert "--" + field.replace("_", "-") in line and str(path) in line
        d = json.loads((run / "config.json").read_text())
        d[section][field] = value
        (run / "config.json").write_text(json.dumps(d))
        assert run_cli(["train", "--out", str(run), "--resume", "--quiet"]) == 2
        assert str(run / "config.json") in one_line(capsys, "hrm-fast")
