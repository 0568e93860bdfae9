"""Config validation in one place: every field has a rule (range, choice, text or flag), and the
CLI, a run's config.json on --resume, checkpoints and convert all refuse the same bad values in
one line naming the flag."""

import json

import pytest
import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.config import RULES, Choice, Range, RunConfig, iter_fields, parse_value
from hrm_fast.presets import from_name
from tests.support.cli import one_line, run_cli


def test_every_field_has_a_rule():
    # A new field cannot join without saying which values it takes.
    names = [f.name for _, f in iter_fields(RunConfig())]
    assert sorted(set(names) - set(RULES)) == []
    assert sorted(set(RULES) - set(names)) == []


def test_every_rule_accepts_its_defaults_and_every_preset():
    for name in ("seed", "paper", "smoke", "debug", "collapse", "trm-arc1", "trm-smoke"):
        from_name(name).validate()


@pytest.mark.parametrize("name", sorted(n for n, r in RULES.items() if isinstance(r, Range)))
def test_every_range_refuses_a_value_past_each_end(name):
    cfg = RunConfig()
    section = next(s for s, f in iter_fields(cfg) if f.name == name)
    rule = RULES[name]
    default = getattr(getattr(cfg, section), name)
    for bad in (rule.low - 1, rule.high * 2 + 1):
        setattr(getattr(cfg, section), name, type(default)(bad))
        with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
            cfg.validate()


@pytest.mark.parametrize("name", sorted(n for n, r in RULES.items() if isinstance(r, Choice)))
def test_every_choice_refuses_another_word(name):
    cfg = RunConfig()
    section = next(s for s, f in iter_fields(cfg) if f.name == name)
    setattr(getattr(cfg, section), name, "xyz")
    with pytest.raises(ValueError, match="--" + name.replace("_", "-") + " must be "):
        cfg.validate()


@pytest.mark.parametrize("text", ["4.9e0", "1.5", "abc", "nan", "1e400"])
def test_integers_refuse_fractions(text):
    with pytest.raises(ValueError):
        parse_value(text, 3)
    assert parse_value("1e3", 3) == 1000


NONSENSE = [
    (["--batch-size", "4.9e0"], "--batch-size"),
    (["--div-temperature", "0"], "--div-temperature"),
    (["--div-temperature", "-1"], "--div-temperature"),
    (["--div-temperature", "1e30"], "--div-temperature"),
    (["--warn-unique-below", "-1"], "--warn-unique-below"),
    (["--warn-intervals", "-1"], "--warn-intervals"),
    (["--warn-probe-shrink", "-0.5"], "--warn-probe-shrink"),
    (["--dist-timeout", "-5"], "--dist-timeout"),
    (["--dist-timeout", "0"], "--dist-timeout"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--dist-backend", "xyz"], "--dist-backend"),
    (["--arch", "trm", "--H-layers", "7"], "--H-layers"),
    (["--out", ""], "--out"),
    (["--n-aug", "10000000"], "--n-aug"),
    (["--expansion", "1e-9"], "--expansion"),
    (["--expansion", "1e30"], "--expansion"),
    (["--halt-max-steps", "1e9"], "--halt-max-steps"),
    (["--H-cycles", "1e9"], "--H-cycles"),
    (["--L-cycles", "1000", "--H-cycles", "1000"], "--H-cycles"),
    (["--source", " "], "--source"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--sample-by", "x"], "--sample-by"),
    (["--pos-encodings", "learned"], "--pos-encodings"),
]


@pytest.mark.parametrize("extra, needle", NONSENSE, ids=[" ".join(c[0]) for c in NONSENSE])
def test_train_refuses_nonsense(extra, needle, tmp_path, capsys):
    argv = ["train", "--preset", "debug", "--out", str(tmp_path / "run"), "--quiet", *extra]
    if "--out" in extra:
        argv[argv.index("--out") + 1] = ""
        argv = argv[:-2]
    assert run_cli(argv) == 2
    assert needle in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_params_and_ablate_share_the_rules(tmp_path, capsys):
    assert run_cli(["params", "--div-temperature", "0"]) == 2
    assert "--div-temperature" in one_line(capsys)
    assert run_cli(["ablate", "--out", str(tmp_path / "a"), "--batch-size", "2.5e0"]) == 2
    assert "--batch-size" in one_line(capsys)


def test_resume_config_json_is_validated_like_flags(tmp_path, tiny_tasks, capsys):
    run = tmp_path / "run"
    argv = ["train", "--preset", "debug", "--out", str(run), "--source", str(tiny_tasks),
            "--steps", "1", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    d = json.loads((run / "config.json").read_text())
    d["loss"]["div_temperature"] = 0.0
    (run / "config.json").write_text(json.dumps(d))
    assert cli_main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    line = one_line(capsys)
    assert str(run / "config.json") in line and "--div-temperature" in line


def test_checkpoint_with_hang_sized_config_is_refused(tmp_path, tiny_tasks, capsys):
    run = tmp_path / "run"
    argv = ["train", "--preset", "debug", "--out", str(run), "--source", str(tiny_tasks),
            "--steps", "1", "--quiet"]  # fmt: skip
    assert cli_main(argv) == 0
    path = ckpt.list_checkpoints(run)[-1]
    payload = torch.load(path, weights_only=True)
    payload["config"]["model"]["halt_max_steps"] = 10**9
    torch.save(payload, path)
    for cmd in (["eval", str(run)], ["probe", str(run)]):
        assert cli_main(cmd) == 2
        line = one_line(capsys)
        assert "--halt-max-steps" in line and str(path) in line


def _official(tmp_path, hidden=32):
    from hrm_fast.arch import build_model
    from hrm_fast.convert import to_official_state_dict

    cfg = from_name("debug")
    cfg.model.hidden_size = hidden
    model = build_model(cfg.model, cfg.seq_len, 3, 1)
    src = tmp_path / "official.pt"
    torch.save(to_official_state_dict(model), src)
    return src


def test_convert_refuses_what_loading_would_call_damaged(tmp_path, capsys):
    from hrm_fast.arch import build_model
    from hrm_fast.convert import to_official_state_dict

    cfg = from_name("trm-smoke")
    model = build_model(cfg.model, 64, 3, 1)
    src = tmp_path / "trm.pt"
    torch.save(to_official_state_dict(model), src)
    out = tmp_path / "c"
    assert run_cli(["convert", str(src), "--out", str(out), "--puzzle-emb-tokens", "-3"]) == 2
    assert "--puzzle-emb-tokens" in one_line(capsys)
    assert run_cli(["convert", str(src), "--out", str(out), "--halt-max-steps", "1000000000"]) == 2
    assert "--halt-max-steps" in one_line(capsys)
    assert not ckpt.list_checkpoints(out)


def test_convert_refuses_hidden_size_zero(tmp_path, capsys):
    src = _official(tmp_path)
    sd = torch.load(src, weights_only=True)
    key = next(k for k in sd if k.endswith("embed_tokens.embedding_weight"))
    sd[key] = torch.zeros(12, 0)
    torch.save(sd, src)
    assert run_cli(["convert", str(src), "--out", str(tmp_path / "c")]) == 2
    assert "hidden size" in one_line(capsys)
