"""Roofline model: FLOP count against torch's FlopCounterMode on a real training step, and the
ceilings' units, labels and scaling."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from hrm_fast import roofline
from hrm_fast.presets import from_name
from hrm_fast.trainer.step import Trainer

aten = torch.ops.aten


# FlopCounterMode has formulas for the CUDA SDPA kernels (flash, efficient, cudnn) but not for
# the CPU flash kernel that F.scaled_dot_product_attention dispatches to here, so without these
# it would count no attention at all. We register torch's own SDPA formulas for the CPU ops
# (4*B*H*S*S*D forward, 2x that backward) instead of widening the tolerance.
def _cpu_sdpa_fwd(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, q, k, v)


CPU_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_bwd,
}

# Matmul and attention FLOPs are counted identically by both sides, and neither counts
# elementwise work, so the two agree exactly (integer counts); 1e-6 only absorbs float sums.
REL_TOL = 1e-6


def _counted_step_flops(cfg) -> tuple[int, dict]:
    trainer = Trainer(cfg)
    trainer.step()  # the first step is counted like any other; run one so state exists
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as fc:
        trainer.step()
    by_op = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    return fc.get_total_flops(), by_op


@pytest.mark.parametrize("variant", ["debug", "no_target_q", "wide", "trm", "trm_mlp_t"])
def test_flops_match_flop_counter(debug_cfg, variant):
    cfg = debug_cfg
    if variant == "no_target_q":  # halt_max_steps 1: no target-Q forward
        cfg.model.halt_max_steps = 1
    if variant == "wide":  # several heads, unequal layer counts and cycles, odd batch
        cfg.model.hidden_size, cfg.model.num_heads = 48, 3
        cfg.model.H_layers, cfg.model.L_layers = 2, 1
        cfg.model.H_cycles, cfg.model.L_cycles = 3, 2
        cfg.model.puzzle_emb_ndim = 40  # 1 puzzle token, zero-padded to hidden
        cfg.train.batch_size = 5
    if variant.startswith("trm"):  # one network applied T(n+1) times, backward through n+1
        m = cfg.model
        m.arch, m.H_layers, m.L_layers, m.H_cycles, m.L_cycles = "trm", 0, 2, 2, 3
        m.puzzle_emb_tokens, m.mlp_t = 2, variant == "trm_mlp_t"
    counted, by_op = _counted_step_flops(cfg)
    predicted = roofline.step_flops(cfg)
    if not cfg.model.mlp_t:  # attention was counted: SDPA's, or hrm-fast's CPU kernel's
        assert any("flash_attention_for_cpu" in k or "cpu_attention" in k for k in by_op), by_op
    # torch's SDPA backward formula (the CPU kernel's too) includes the flash recompute of
    # QK^T, which our model FLOPs (the total) leave out by convention; add it back explicitly.
    want = predicted["total"] + predicted["attention_recompute"]
    assert counted == pytest.approx(want, rel=REL_TOL), (counted, predicted, by_op)


def test_target_q_forward_only_with_act():
    cfg = from_name("seed")
    f = roofline.step_flops(cfg)
    assert f["target_q_forward"] == f["forward"]
    cfg.model.halt_max_steps = 1
    assert roofline.step_flops(cfg)["target_q_forward"] == 0


def test_seed_layer_flops_by_hand():
    # seed: B=20, S=900+1 puzzle token, hidden 256, H=8, D=32, I=768.
    f = roofline.layer_flops(from_name("seed"))
    tokens = 20 * 901
    assert f["matmul"] == 2 * tokens * (256 * 768 + 256 * 256 + 256 * 1536 + 768 * 256)
    assert f["attention"] == 4 * 20 * 8 * 901 * 901 * 32


def test_network_params_match_model():
    from hrm_fast.model import HRM, count_parameters

    for name in ("seed", "smoke", "debug"):
        cfg = from_name(name)
        model = HRM(cfg.model, cfg.seq_len, 3, 2)
        assert roofline.network_params(cfg) == count_parameters(model)["network"], name
    from hrm_fast.arch import build_model

    for name, mlp_t in (("trm-smoke", False), ("trm-smoke", True), ("trm-arc1", False)):
        cfg = from_name(name)
        cfg.model.mlp_t = mlp_t
        model = build_model(cfg.model, cfg.seq_len, 3, 2)
        assert roofline.network_params(cfg) == count_parameters(model)["network"], (name, mlp_t)


def test_trm_backward_spans_the_last_cycle():
    cfg = from_name("trm-arc1")
    f = roofline.step_flops(cfg)
    layer = sum(roofline.layer_flops(cfg).values())
    T, n, L = cfg.model.H_cycles, cfg.model.L_cycles, cfg.model.L_layers
    heads = f["forward"] - T * (n + 1) * L * layer
    assert f["target_q_forward"] == 0
    assert f["backward"] == pytest.approx(2 * ((n + 1) * L * layer + heads))


def test_ceilings_scale_with_batch():
    cfg = from_name("seed")
    base = roofline.ceiling_it_s(cfg, "rtx4090")
    f1, b1 = roofline.step_flops(cfg)["total"], roofline.step_bytes(cfg)["total"]
    cfg.train.batch_size *= 2
    f2, b2 = roofline.step_flops(cfg)["total"], roofline.step_bytes(cfg)["total"]
    # Everything but the B x B sparse-SGD matmul is linear in B.
    assert f2 == pytest.approx(2 * f1, rel=1e-6)
    # Parameter and optimiser bytes do not grow with the batch: less than double.
    assert b1 < b2 < 2 * b1
    doubled = roofline.ceiling_it_s(cfg, "rtx4090")
    assert doubled == pytest.approx(base / 2, rel=1e-3)  # compute-bound at the seed shapes


def test_ceiling_formula_and_mfu():
    cfg = from_name("seed")
    g = roofline.GPUS["a100"]
    f, b = roofline.step_flops(cfg)["total"], roofline.step_bytes(cfg)["total"]
    want = 1 / max(f / (312e12), b / (2039e9))
    assert roofline.ceiling_it_s(cfg, g) == pytest.approx(want)
    # Running at the ceiling of a compute-bound config is 100% MFU.
    assert roofline.mfu(want, cfg, g) == pytest.approx(1.0)
    assert roofline.mfu(0.0, cfg, g) == 0.0


def test_memory_bound_when_tiny():
    # A 1-token, 1-example model is all parameter/optimiser traffic: memory bound.
    cfg = from_name("debug")
    cfg.data.canvas, cfg.train.batch_size, cfg.model.puzzle_emb_ndim = 1, 1, 0
    rows = roofline.ceiling_table(cfg)
    assert all(r["bound"] == "memory" for r in rows)


def test_ceilings_are_labelled():
    cfg = from_name("seed")
    rows = roofline.ceiling_table(cfg, "seed")
    assert {r["key"] for r in rows} == set(roofline.GPUS)
    assert all("ceiling" in r["label"] and "not measured" in r["label"] for r in rows)
    text = roofline.format_ceilings(cfg, "seed")
    assert "ceiling" in text and "not measurements" in text and "lower bound" in text
    # Faster datasheet, higher ceiling.
    by_key = {r["key"]: r["ceiling_it_s"] for r in rows}
    assert by_key["rtx4090-laptop"] < by_key["rtx4090"] < by_key["a100"] < by_key["h100"]


def test_gpu_lookup_by_device_name():
    assert roofline.gpu_peak("NVIDIA GeForce RTX 4090 Laptop GPU").name == "RTX 4090 Laptop"
    assert roofline.gpu_peak("NVIDIA GeForce RTX 4090").name == "RTX 4090"
    assert roofline.gpu_peak("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert roofline.gpu_peak("NVIDIA A100-SXM4-80GB").name == "A100 SXM 80GB"
    with pytest.raises(KeyError):
        roofline.gpu_peak("Tesla K80")


def test_laptop_peak_is_fp32_accumulate():
    # GeForce: BF16 with FP32 accumulate runs at half the FP16-accumulate rate.
    laptop = roofline.GPUS["rtx4090-laptop"]
    assert laptop.bf16_tflops == pytest.approx(76 * 512 * 2.04e9 / 1e12)
    assert 75 < laptop.bf16_tflops < 85 and laptop.bandwidth_gbs == 576


def test_data_parallel_comm_model():
    cfg = from_name("paper")
    n = roofline.network_params(cfg)
    c = roofline.comm_bytes(cfg, 8)
    assert c["allreduce_buffer"] == 4 * n  # one fp32 gradient buffer
    assert c["allreduce"] == pytest.approx(2 * 7 / 8 * 4 * n)  # ring all-reduce, per rank
    assert c["puzzle_gather"] == pytest.approx(7 / 8 * 768 * (4 * 512 + 4))
    assert roofline.comm_bytes(cfg, 1)["total"] == 0
    fast = roofline.scaling_model(cfg, "h100", "nvlink4", 8)
    slow = roofline.scaling_model(cfg, "h100", "eth100", 8)
    assert slow["comm_s"] == pytest.approx(fast["comm_s"] * 450 / 12.5)
    assert 0 < slow["speedup"] < fast["speedup"] < 8
    assert fast["efficiency"] == pytest.approx(fast["speedup"] / 8)
    assert "model" in fast["label"] and "not measured" in fast["label"]
    assert "MODEL" in roofline.format_scaling(cfg, "paper")


def test_amd_peaks_from_vendor_figures():
    # Compute units x dense matrix FLOP/clk/CU x peak clock reproduce AMD's published figures.
    mi300x, mi250x, navi = (roofline.GPUS[k] for k in ("mi300x", "mi250x", "rx7900xtx"))
    assert mi300x.bf16_tflops == pytest.approx(1307.4, abs=0.05)
    assert mi250x.bf16_tflops == pytest.approx(383.0, abs=0.05)
    assert navi.bf16_tflops == pytest.approx(122.9, abs=0.05)
    assert (mi300x.bandwidth_gbs, mi250x.bandwidth_gbs, navi.bandwidth_gbs) == (5300, 3276.8, 960)
    assert mi300x.peak_flops == pytest.approx(1.3074e15, rel=1e-4)
    # Ceilings on AMD follow the same formula; the seed shape is compute bound on each.
    cfg = from_name("seed")
    f, b = roofline.step_flops(cfg)["total"], roofline.step_bytes(cfg)["total"]
    for g in (mi300x, mi250x, navi):
        want = 1 / max(f / g.peak_flops, b / g.peak_bytes)
        assert roofline.ceiling_it_s(cfg, g) == pytest.approx(want)
    rows = {r["key"]: r for r in roofline.ceiling_table(cfg, "seed")}
    assert all(rows[k]["bound"] == "compute" for k in ("mi300x", "mi250x", "rx7900xtx"))
    assert rows["mi300x"]["ceiling_it_s"] > rows["mi250x"]["ceiling_it_s"]
    assert "not measured" in rows["rx7900xtx"]["label"]


def test_amd_lookup_by_rocm_device_name():
    assert roofline.gpu_peak("AMD Instinct MI300X").name == "Instinct MI300X"
    assert roofline.gpu_peak("AMD Instinct MI250X/MI250").name == "Instinct MI250X"
    assert roofline.gpu_peak("AMD Radeon RX 7900 XTX").name == "Radeon RX 7900 XTX"
    with pytest.raises(KeyError):
        roofline.gpu_peak("AMD Radeon RX 7900 XT")  # 84 CUs, 800 GB/s: no entry
