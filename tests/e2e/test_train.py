"""The training step and loop: determinism, compile parity, resume equality, checkpoints,
Ctrl-C, the probe's exit code, and the CLI end to end on the debug preset."""

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from hrm_fast.kernels.dispatch import triton_on_cpu

from hrm_fast import checkpoint as ckpt
from hrm_fast.cli import main as cli_main
from hrm_fast.optim import lr_at
from hrm_fast.trainer.loop import train
from hrm_fast.trainer.state import load_state, save_checkpoint
from hrm_fast.trainer.step import Trainer
from tests.support.parity import INTERPRET, assert_close, kernel_device
from tests.support.training import (
    assert_fused_step_matches_reference,
    logged_losses,
    step_metrics,
    straight_and_resumed,
)


def test_same_seed_samestep_metrics(debug_cfg):
    _, a = step_metrics(debug_cfg, 3)
    _, b = step_metrics(debug_cfg, 3)
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in a)


def test_different_seed_differentstep_metrics(debug_cfg):
    _, a = step_metrics(debug_cfg, 2)
    debug_cfg.train.seed = 1
    _, b = step_metrics(debug_cfg, 2)
    assert [m["loss"] for m in a] != [m["loss"] for m in b]


def test_compiled_step_matches_reference(debug_cfg, inductor_eager_random):
    """torch.compile (inductor, CPU) of the step gives the reference losses to fp32 tolerance.

    Inductor draws random numbers with eager's generator (``inductor_eager_random``), so both
    runs see the same batches and exploration draws.
    """
    debug_cfg.train.dtype = "fp32"  # the tolerance below is fp32's (auto is bf16 on bf16 CPUs)
    _, ref = step_metrics(debug_cfg, 3)
    debug_cfg.train.compile = "true"
    _, comp = step_metrics(debug_cfg, 3)
    for r, c in zip(ref, comp, strict=True):
        for k in ("loss", "lm_loss", "diversity", "distribution", "q_halt_loss"):
            assert c[k] == pytest.approx(r[k], rel=1e-4, abs=1e-5), k


LOSS_KEYS = ("loss", "lm_loss", "q_halt_loss", "q_continue_loss", "diversity", "distribution")


@pytest.mark.interpret
def test_fused_step_through_triton_matches_reference(debug_cfg):
    """The whole fused step in Triton: on-device augmentation, every block kernel and its
    registered backward, and the fused loss, against the eager reference step.

    Under the interpreter this runs the same triton_ops on CPU tensors; with
    TRITON_INTERPRET=0 on a GPU it runs them on CUDA. fp32 in both, so the steps agree to
    fp32 tolerance and the weights stay within rounding of each other after three updates.
    """
    ref_trainer, fused_trainer = assert_fused_step_matches_reference(debug_cfg, 3, LOSS_KEYS)
    assert_close(
        fused_trainer.model.inner.puzzle_emb.weights,
        ref_trainer.model.inner.puzzle_emb.weights,
        atol=1e-5,
        rtol=1e-4,
        name="puzzle_emb",
    )


@pytest.mark.interpret
def test_fused_step_fp16_error_within_twice_eager(debug_cfg):
    """fp16 through the fused kernels vs fp16 eager, both against the fp32 reference step:
    per loss term, the fused step's error over three steps is at most 2x eager fp16's own.
    (The interpreter cannot run bf16 dots; bf16 is checked on a GPU by the CUDA variants.)
    """
    device = kernel_device()
    debug_cfg.train.device, debug_cfg.train.backend = device, "reference"
    debug_cfg.train.dtype = "fp32"
    _, ref32 = step_metrics(debug_cfg, 3)
    debug_cfg.train.dtype = "fp16"
    _, eager16 = step_metrics(debug_cfg, 3)
    debug_cfg.train.backend = "fused"
    with triton_on_cpu() if device == "cpu" else contextlib.nullcontext():
        _, fused16 = step_metrics(debug_cfg, 3)
    for k in LOSS_KEYS:
        eager_err = max(abs(e[k] - r[k]) for e, r in zip(eager16, ref32, strict=True))
        fused_err = max(abs(f[k] - r[k]) for f, r in zip(fused16, ref32, strict=True))
        assert fused_err <= 2 * eager_err + 1e-5, (k, fused_err, eager_err)


def test_bf16_step_close_to_fp32(debug_cfg):
    """The bf16 forward (HRM's CastedLinear casting, what CUDA runs by default) on the
    reference path stays within bf16 tolerance of the fp32 step."""
    debug_cfg.train.dtype = "fp32"
    _, ref32 = step_metrics(debug_cfg, 3)
    debug_cfg.train.dtype = "bf16"
    _, ref16 = step_metrics(debug_cfg, 3)
    for step, (r, b) in enumerate(zip(ref32, ref16, strict=True)):
        for k in LOSS_KEYS:
            assert b[k] == pytest.approx(r[k], **DTYPE_TOL["bf16"]), (step, k)


# Each CUDA variant against the eager reference step on the same GPU. fp32 variants share the
# fp32 tolerance; bf16 ones are held to bf16's (the reference runs bf16 too).
CUDA_VARIANTS = {
    "fused": dict(backend="fused"),
    "fused+graphs": dict(backend="fused", cuda_graphs=True),
    "fused+compile": dict(backend="fused", compile="true"),
    "fused+compile+graphs": dict(backend="fused", compile="true", cuda_graphs=True),
    "reference+compile": dict(backend="reference", compile="true"),
    "reference+graphs": dict(backend="reference", cuda_graphs=True),
}
DTYPE_TOL = {"fp32": dict(rel=1e-4, abs=1e-5), "bf16": dict(rel=3e-2, abs=3e-2)}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", list(CUDA_VARIANTS))
def test_cuda_step_variants_match_reference(debug_cfg, inductor_eager_random, variant, dtype):
    """On a GPU (TRITON_INTERPRET=0): every fast-path combination gives the reference losses.

    Skipped on machines without one; ``scripts/gpu-check.sh`` runs it.
    """
    if INTERPRET or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and TRITON_INTERPRET=0")
    debug_cfg.train.device, debug_cfg.train.dtype = "cuda", dtype
    debug_cfg.train.backend = "reference"
    _, ref = step_metrics(debug_cfg, 4)
    for k, v in CUDA_VARIANTS[variant].items():
        setattr(debug_cfg.train, k, v)
    _, fast = step_metrics(debug_cfg, 4)
    for step, (r, f) in enumerate(zip(ref, fast, strict=True)):
        for k in LOSS_KEYS:
            assert f[k] == pytest.approx(r[k], **DTYPE_TOL[dtype]), (step, k)


def test_triton_on_cpu_routes_cpu_tensors_to_the_kernels(monkeypatch):
    """Without the switch CPU tensors take the reference; with it, the triton_op."""
    from hrm_fast.kernels import swiglu as swiglu_mod

    calls = []
    monkeypatch.setattr(swiglu_mod, "swiglu_ref", lambda x: calls.append("ref") or x)
    x = torch.randn(2, 3, 8)
    swiglu_mod.swiglu(x)
    assert calls == ["ref"]
    if INTERPRET:
        with triton_on_cpu():
            out = swiglu_mod.swiglu(x)
        assert calls == ["ref"] and out.shape == (2, 3, 4)


def test_step_is_one_graph_without_data_dependent_ops(debug_cfg):
    """Sampling, augmentation, the ACT forward and the loss trace as one graph, and so does
    the puzzle-embedding update: no ``.item()``, no ``nonzero``/``unique``, no branch on data.
    Any of those would be a graph break here and a host sync (or a capture error) on CUDA.
    """
    trainer = Trainer(debug_cfg)
    forward_loss = torch.compile(trainer._forward_loss, fullgraph=True, backend="eager")
    _, loss, metrics = forward_loss(trainer.carry)
    assert torch.isfinite(loss) and set(metrics) >= {"lm_loss", "diversity", "distribution"}
    loss.backward()
    torch.compile(trainer.sparse.step, fullgraph=True, backend="eager")()


def test_fused_step_compiles_to_one_graph_of_triton_kernels(tiny_tasks):
    """torch.compile(fullgraph=True) of the fused forward + loss: one dynamo graph, and
    aot_autograd lowers every triton_op to its Triton launches, forward and backward.

    This is the trace a CUDA run compiles; here it runs without a GPU in a subprocess that
    gives Triton a stand-in driver for the sm_89 target (see tests/support/trace_fused_step.py).
    The counts follow from the config: HRM's 1-step gradient means only the last L and H
    module evaluations have a backward, and the target-Q forward doubles the forward.
    """
    model = dict(H_cycles=2, L_cycles=3, H_layers=1, L_layers=2)
    script = os.path.join(os.path.dirname(__file__), "..", "support", "trace_fused_step.py")
    proc = subprocess.run(
        [sys.executable, script, str(tiny_tasks), json.dumps(model)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    graphs = json.loads(proc.stdout.strip().splitlines()[-1])

    l_evals = model["H_cycles"] * model["L_cycles"]
    h_evals = model["H_cycles"]
    blocks = 2 * (l_evals * model["L_layers"] + h_evals * model["H_layers"])  # x2: target Q
    modules = 2 * (l_evals + h_evals)
    assert graphs["dynamo"] == {
        "hrm_fast.augment_batch": 1,
        "hrm_fast.add3": modules,
        "hrm_fast.rope_attention": blocks,
        "hrm_fast.add_rms_norm": 2 * blocks,
        "hrm_fast.swiglu": blocks,
        "hrm_fast.arc_loss_stats": 1,
    }
    assert graphs["forward"] == {
        "_augment_kernel": 1,
        "_add3_kernel": modules,
        "_attn_fwd_kernel": blocks,
        "_add_rms_norm_fwd_kernel": 2 * blocks,
        "_swiglu_fwd_kernel": blocks,
        "_arc_loss_stats_fwd_kernel": 1,
    }
    grad_blocks = model["L_layers"] + model["H_layers"]
    assert graphs["backward"] == {
        "_arc_loss_stats_bwd_kernel": 1,
        "_add_rms_norm_bwd_kernel": 2 * grad_blocks,
        "_swiglu_bwd_kernel": grad_blocks,
        "_attn_bwd_preprocess_kernel": grad_blocks,
        "_attn_bwd_dkdv_kernel": grad_blocks,
        "_attn_bwd_dq_kernel": grad_blocks,
    }


def test_step_updates_weights_and_puzzle_embeddings(debug_cfg):
    trainer = Trainer(debug_cfg)
    w0 = trainer.model.inner.lm_head.weight.detach().clone()
    table0 = trainer.model.inner.puzzle_emb.weights.clone()
    for _ in range(3):
        trainer.step()
    assert not torch.equal(w0, trainer.model.inner.lm_head.weight)
    touched = (trainer.model.inner.puzzle_emb.weights != table0).any(-1)
    assert touched.any() and not touched[0]  # the blank id 0 is never trained


def test_lr_schedule():
    assert lr_at(0, 1.0, 10, 100, 0.1) == 0.0
    assert lr_at(5, 1.0, 10, 100, 0.1) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 10, 100, 0.1) == pytest.approx(0.55)


def test_resume_equals_straight_run(debug_cfg, tmp_path):
    debug_cfg.train.checkpoint_every = 3
    straight, split = straight_and_resumed(debug_cfg, tmp_path, 6, 3)

    assert logged_losses(straight) == logged_losses(split)
    a = ckpt.load(straight)["model"]
    b = ckpt.load(split)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_crash_mid_save_keeps_previous_checkpoint(debug_cfg, tmp_path, monkeypatch):
    debug_cfg.train.steps = 3
    run = tmp_path / "run"
    assert train(debug_cfg, run, quiet=True) == 0
    good = ckpt.list_checkpoints(run)
    assert [p.name for p in good] == ["step_000000003.pt"]
    before = good[0].read_bytes()

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save({"partial": True}, f)
        raise OSError("disk full (simulated)")

    trainer = Trainer(debug_cfg)
    load_state(trainer, ckpt.load(run))
    trainer.step_count = 3  # would overwrite step 3's name: the old file must survive
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(trainer, run)
    monkeypatch.setattr(torch, "save", real_save)
    assert good[0].read_bytes() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000000003.pt"]
    assert ckpt.load(run)["step"] == 3


def test_ctrl_c_saves_and_exits_zero(debug_cfg, tmp_path, monkeypatch):
    debug_cfg.train.steps = 50
    debug_cfg.train.checkpoint_every = 100
    real_step = Trainer.step

    def step_then_interrupt(self):
        real_step(self)
        if self.step_count == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "step", step_then_interrupt)
    run = tmp_path / "run"
    assert train(debug_cfg, run, quiet=True) == 0
    assert ckpt.load(run)["step"] == 2


def test_probe_failure_stops_with_exit_3(debug_cfg, tmp_path, capsys):
    debug_cfg.train.probe_min_differ = 1.01  # unreachable: the probe must fail
    code = train(debug_cfg, tmp_path / "run")
    assert code == 3
    assert "FAILED before step 1" in capsys.readouterr().err


def test_probe_failure_at_checkpoint_names_step(debug_cfg, tmp_path, capsys, monkeypatch):
    """A model that stops depending on its input mid-run is caught at the next checkpoint."""
    debug_cfg.train.steps = 6
    debug_cfg.train.checkpoint_every = 2
    real_step = Trainer.step

    def collapse_after_2(self):
        real_step(self)
        if self.step_count == 2:  # erase the input: token embeddings to zero
            with torch.no_grad():
                self.model.inner.embed_tokens.embedding_weight.zero_()

    monkeypatch.setattr(Trainer, "step", collapse_after_2)
    run = tmp_path / "run"
    code = train(debug_cfg, run)
    err = capsys.readouterr().err
    assert code == 3
    assert "FAILED at step 2" in err
    # The message says what to do next, and the command it names reads the kept checkpoint.
    assert f"look with `hrm-fast probe {run}`" in err and "--probe-min-tv" in err
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_000000002.pt"]
    assert cli_main(["probe", str(run), "--json", str(tmp_path / "p.json")]) == 3
    assert json.loads((tmp_path / "p.json").read_text())["step"] == 2


def test_cli_train_probe_eval_smoke(tiny_tasks, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--source", str(tiny_tasks), "--canvas", "8", "--quiet"]
    assert cli_main(["train", "--preset", "debug", "--out", str(run), "--steps", "2", *common]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 2 and cfg["data"]["canvas"] == 8
    assert ckpt.list_checkpoints(run)
    assert cli_main(["probe", str(run), "--json", str(tmp_path / "probe.json")]) == 0
    assert json.loads((tmp_path / "probe.json").read_text())["passed"] is True
    assert cli_main(["eval", str(run), "--n-aug", "2"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert (run / "eval.png").exists()
    assert set(ev) >= {"pass@1", "pass@2"} or "overall" in ev


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "hrm_fast.cli", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--preset", "debug", "--out", "{tmp}/r", "--source", "{tmp}/nope"], "nope"),
        (["train", "--preset", "debug", "--out", "{tmp}/r", "--lr", "fast"], "--lr"),
        (["probe", "{tmp}/missing.pt"], "missing.pt"),
        (["probe", "{tmp}/missing.pt", "--device", "tpu"], "--device"),
        (["eval", "{tmp}/missing.pt", "--device", "tpu"], "--device"),
        (["bench", "--device", "tpu"], "--device"),
        (
            [
                "train",
                "--preset",
                "debug",
                "--out",
                "{tmp}/r",
                "--hidden-size",
                "30",
                "--num-heads",
                "4",
            ],
            "--num-heads",
        ),
    ],
)
def test_cli_bad_input_one_line_no_traceback(tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("hrm-fast") and needle in lines[0]


def test_cli_bad_task_file_names_file(tmp_path):
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "broken.json").write_text(
        '{"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": []}'
    )
    r = _cli("train", "--preset", "debug", "--out", str(tmp_path / "r"), "--source", str(d))
    assert r.returncode == 2
    assert "broken.json" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_refuses_to_overwrite_run(debug_cfg, tmp_path):
    debug_cfg.train.steps = 1
    run = tmp_path / "run"
    assert train(debug_cfg, run, quiet=True) == 0
    r = _cli("train", "--preset", "debug", "--out", str(run), "--source", debug_cfg.data.source,
             "--canvas", "8")  # fmt: skip
    assert r.returncode == 2 and "--resume" in r.stderr


def test_params_reports_with_and_without_table(capsys):
    assert cli_main(["params", "--preset", "seed"]) == 0
    out = capsys.readouterr().out
    assert "5,970,434 network parameters" in out
    assert "200,001 ids x 256" in out
