"""Roofline model of one training step: FLOPs, minimum bytes, and datasheet ceilings.

Everything here is arithmetic on a ``RunConfig``; nothing is measured. A number derived from
it is a *ceiling* (an upper bound on it/s) or a *prediction*, never a measurement.

FLOPs (``step_flops``) count the tensor-core work only: every matmul (2*m*n*k) and the two
attention matmuls (QK^T and PV: 4*B*H*S*S*D forward). Elementwise ops (RMSNorm, SwiGLU, RoPE,
softmax, the loss, AdamW) are not counted as FLOPs; their cost is in the bytes. This is what
``torch.utils.flop_counter.FlopCounterMode`` counts too (``tests/unit/test_roofline.py`` checks it).

One training step (``hrm_fast.trainer.step.Trainer.step``) is:

* the ACT step's forward: ``H_cycles * L_cycles`` L-module and ``H_cycles`` H-module
  evaluations, plus lm_head over all S positions and q_head on position 0. Only the last L and
  the last H evaluation (and the heads) carry gradients (HRM's 1-step gradient);
* the target-Q forward: a second full inner forward without gradient, only in training with
  ``halt_max_steps > 1``;
* the backward of the gradient-carrying part: 2x its forward FLOPs (grad input + grad weight
  for each matmul; dQ, dK, dV, dP for attention). A flash-style backward also recomputes
  QK^T; that is reported apart as ``attention_recompute`` and left out of ``total``;
* the puzzle-embedding sign-SGD's ``[B, B] @ [B, ndim]`` row-sum matmul.

TRM (``arch="trm"``) has one network of ``L_layers`` blocks, applied T(n+1) times per ACT step
(T = ``H_cycles``, n = ``L_cycles``): n latent updates and one answer update per cycle. Its
backward spans the whole last cycle (n+1 applications), and it has no target-Q forward. Its
``mlp_t`` variant replaces attention with a SwiGLU over the sequence axis.

Minimum bytes (``step_bytes``) is a LOWER BOUND on DRAM traffic under these assumptions:

* fp32 master weights, fp32 gradients and fp32 AdamW moments: the forward reads the weights
  once (they stay in cache across cycles: optimistic), the backward writes the gradient once,
  one fused AdamW pass reads param/grad/m/v and writes param/m/v: 4 + 4 + 28 = 36 B/param;
* activations in the forward dtype (2 B for bf16): each module evaluation reads its input
  state(s) once and writes its output once, i.e. a whole module fused on chip (no real
  implementation does this; every layer boundary adds traffic in practice);
* the gradient-carrying modules: the input of each is saved and re-read in the backward
  (recompute inside), and one activation gradient per module is written and read;
* the carry (z_H, z_L) is read and written once, the logits are written once and read once by
  the loss (fp32 logits grad written and read once), int32 inputs/labels read once;
* the puzzle-embedding rows of the batch are read and written once (fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

from hrm_fast.config import RunConfig

# --------------------------------------------------------------------------- datasheet peaks


@dataclass(frozen=True)
class GpuPeak:
    name: str
    bf16_tflops: float  # dense BF16 tensor-core TFLOP/s with FP32 accumulate, no sparsity
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (1e9 B/s)
    note: str = ""

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12

    @property
    def peak_bytes(self) -> float:
        return self.bandwidth_gbs * 1e9


GPUS: dict[str, GpuPeak] = {
    # RTX 4090 Laptop: NVIDIA publishes no dense-BF16 tensor figure for it. Derived from the Ada
    # per-SM rate of the desktop 4090 (165.2e12 / (128 SM * 2.52 GHz) = 512 FLOP/clk/SM with
    # FP32 accumulate, half the FP16-accumulate rate on GeForce) at 9728 CUDA cores = 76 SM and
    # the ~2.04 GHz boost of the top TGP: 76 * 512 * 2.04e9 = 79.4 TFLOP/s. Lower-TGP laptops
    # clock lower. 576 GB/s: 256-bit GDDR6 at 18 Gbps (NVIDIA laptop spec sheet).
    "rtx4090-laptop": GpuPeak(
        "RTX 4090 Laptop",
        76 * 512 * 2.04e9 / 1e12,
        576.0,
        "derived: 76 SM x 512 FLOP/clk x 2.04 GHz boost (TGP dependent)",
    ),  # fmt: skip
    # RTX 4090: Ada whitepaper, "Peak BF16 Tensor TFLOPS with FP32 Accumulate" 165.2 (330.4
    # sparse; the 330.3 FP16-accumulate figure does not apply to bf16 training). 1008 GB/s.
    "rtx4090": GpuPeak("RTX 4090", 165.2, 1008.0, "Ada whitepaper"),
    # A100 SXM 80GB: datasheet BF16 tensor 312 TFLOP/s dense (624 sparse), HBM2e 2039 GB/s.
    "a100": GpuPeak("A100 SXM 80GB", 312.0, 2039.0, "A100 datasheet"),
    # H100 SXM: datasheet BF16 tensor 1979 TFLOP/s *with sparsity* -> 989.4 dense; 3.35 TB/s.
    "h100": GpuPeak("H100 SXM", 989.4, 3350.0, "H100 datasheet (dense = sparse / 2)"),
    # AMD: the vendor's peak figures, ceilings only -- nothing in this project has run on an AMD
    # GPU. Each TFLOP/s figure is compute units x dense matrix FLOP/clk/CU x peak engine clock.
    # MI300X (CDNA3, gfx942): AMD Instinct MI300X data sheet, peak BF16 and FP16 matrix
    # 1307.4 TFLOP/s dense (2614.9 with sparsity) = 304 CU x 2048 x 2.1 GHz; HBM3 5.3 TB/s.
    "mi300x": GpuPeak("Instinct MI300X", 304 * 2048 * 2.1e9 / 1e12, 5300.0, "AMD data sheet"),
    # MI250X (CDNA2, gfx90a): AMD Instinct MI250X data sheet, peak BF16 and FP16 matrix 383
    # TFLOP/s = 220 CU x 1024 x 1.7 GHz; HBM2e 3.2 TB/s (8192-bit at 3.2 Gb/s = 3276.8 GB/s).
    # Also used for the MI250 (208 CU), which ROCm names "MI250X/MI250": still a ceiling.
    "mi250x": GpuPeak("Instinct MI250X", 220 * 1024 * 1.7e9 / 1e12, 3276.8, "AMD data sheet"),
    # RX 7900 XTX (RDNA3, gfx1100): AMD product specifications, peak FP16 122.8 TFLOP/s =
    # 96 CU x 512 x 2.5 GHz boost; WMMA runs BF16 at the FP16 rate (RDNA3 ISA guide). GDDR6,
    # 384-bit at 20 Gb/s = 960 GB/s.
    "rx7900xtx": GpuPeak(
        "Radeon RX 7900 XTX", 96 * 512 * 2.5e9 / 1e12, 960.0, "AMD product specifications"
    ),
}


def gpu_peak(name: str) -> GpuPeak:
    """Look up a GPU by key (``rtx4090-laptop``) or by a device name from CUDA/NVML."""
    if name in GPUS:
        return GPUS[name]
    low = name.lower()
    if "4090" in low:
        return GPUS["rtx4090-laptop" if "laptop" in low else "rtx4090"]
    if "a100" in low:
        return GPUS["a100"]
    if "h100" in low:
        return GPUS["h100"]
    # ROCm names: "AMD Instinct MI300X", "AMD Instinct MI250X/MI250", "AMD Radeon RX 7900 XTX".
    for part, key in (("mi300x", "mi300x"), ("mi250", "mi250x"), ("7900 xtx", "rx7900xtx")):
        if part in low:
            return GPUS[key]
    raise KeyError(f"no datasheet peak for GPU {name!r}; known: {', '.join(GPUS)}")


# --------------------------------------------------------------------------- FLOPs


def _dims(cfg: RunConfig) -> dict:
    m = cfg.model
    return dict(
        B=cfg.train.batch_size,
        S=cfg.seq_len + m.puzzle_emb_len,  # puzzle-embedding tokens are prepended
        d=m.hidden_size,
        H=m.num_heads,
        D=m.head_dim,
        I=m.intermediate_size,
        V=m.vocab_size,
    )


def _token_mlp_width(cfg: RunConfig) -> int:
    from hrm_fast.layers import swiglu_width

    return swiglu_width(_dims(cfg)["S"], cfg.model.expansion)


def _uses_token_mlp(cfg: RunConfig) -> bool:
    return cfg.model.arch == "trm" and cfg.model.mlp_t


def layer_flops(cfg: RunConfig) -> dict[str, float]:
    """Forward FLOPs of one transformer block: projections and attention (or, for TRM's
    ``mlp_t``, the sequence-axis SwiGLU in attention's place)."""
    k = _dims(cfg)
    B, S, d, H, D, I = k["B"], k["S"], k["d"], k["H"], k["D"], k["I"]
    tokens = B * S
    mlp = 2 * tokens * (d * 2 * I + I * d)  # gate_up, down
    if _uses_token_mlp(cfg):
        It = _token_mlp_width(cfg)
        return {"matmul": float(mlp + 2 * B * d * (S * 2 * It + It * S)), "attention": 0.0}
    proj = mlp + 2 * tokens * (d * 3 * d + d * d)  # qkv, o
    attn = 4 * B * H * S * S * D  # QK^T and PV
    return {"matmul": float(proj), "attention": float(attn)}


@dataclass(frozen=True)
class Applications:
    """How often each module runs in one ACT step, and how many of those carry gradients.

    ``L``/``H`` count module evaluations (TRM: latent and answer updates of its one network).
    """

    L: int
    H: int
    L_grad: int
    H_grad: int
    L_layers: int
    H_layers: int
    target_q: bool  # a second, gradient-free forward for HRM's bootstrapped Q target


def applications(cfg: RunConfig, training: bool = True) -> Applications:
    m = cfg.model
    if m.arch == "trm":
        T, n = m.H_cycles, m.L_cycles
        return Applications(T * n, T, n, 1, m.L_layers, m.L_layers, False)
    target_q = training and m.halt_max_steps > 1
    return Applications(m.H_cycles * m.L_cycles, m.H_cycles, 1, 1, m.L_layers, m.H_layers, target_q)


def step_flops(cfg: RunConfig, training: bool = True) -> dict[str, float]:
    """FLOPs of one training step, by part; ``total`` is their sum."""
    m, k, a = cfg.model, _dims(cfg), applications(cfg, training)
    layer = sum(layer_flops(cfg).values())
    L_eval, H_eval = a.L_layers * layer, a.H_layers * layer
    heads = 2 * k["B"] * k["S"] * k["d"] * k["V"] + 2 * k["B"] * k["d"] * 2  # lm_head + q_head
    inner = a.L * L_eval + a.H * H_eval + heads
    grad_part = a.L_grad * L_eval + a.H_grad * H_eval + heads  # HRM: last L and H; TRM: n+1
    out = {
        "forward": float(inner),
        "target_q_forward": float(inner if a.target_q else 0),
        "backward": float(2 * grad_part if training else 0),
        "sparse_sgd": float(
            2 * k["B"] * k["B"] * m.puzzle_emb_ndim if training and m.puzzle_emb_ndim else 0
        ),
    }
    out["total"] = sum(out.values())
    # Not in the total (model FLOPs): a flash-style attention backward recomputes S = QK^T
    # (2*B*H*S*S*D per layer, +1/2 of the forward attention). Our Triton kernel and torch's
    # SDPA backward do; FlopCounterMode's SDPA backward formula counts it (2.5x forward).
    n_grad_layers = (a.L_grad * a.L_layers + a.H_grad * a.H_layers) if training else 0
    out["attention_recompute"] = float(n_grad_layers * layer_flops(cfg)["attention"] / 2)
    return out


# --------------------------------------------------------------------------- bytes


def network_params(cfg: RunConfig) -> int:
    """Trainable network parameters (as ``count_parameters(model)['network']``)."""
    m, k = cfg.model, _dims(cfg)
    d, I, V = k["d"], k["I"], k["V"]
    mixer = d * 3 * d + d * d
    if _uses_token_mlp(cfg):
        It = _token_mlp_width(cfg)
        mixer = k["S"] * 2 * It + It * k["S"]
    layer = mixer + d * 2 * I + I * d
    n_layers = m.L_layers if m.arch == "trm" else m.H_layers + m.L_layers  # TRM: one network
    return n_layers * layer + V * d + V * d + 2 * d + 2


def act_bytes(cfg: RunConfig) -> int:
    """Bytes per element of activations (``dtype auto``: bf16, as on GPUs and bf16 CPUs)."""
    return {"fp32": 4, "bf16": 2, "fp16": 2, "auto": 2}.get(cfg.train.dtype, 2)


def step_bytes(cfg: RunConfig, training: bool = True) -> dict[str, float]:
    """Lower bound on DRAM bytes of one training step, by part (assumptions: module docstring)."""
    m, k, a = cfg.model, _dims(cfg), applications(cfg, training)
    e = act_bytes(cfg)
    state = k["B"] * k["S"] * k["d"] * e  # one hidden-state tensor
    n_params = network_params(cfg)
    # Module evaluations in one inner forward: L reads (z_L, z_H, x), H reads (z_H, z_L); each
    # writes one state.
    inner_fwd = a.L * 4 * state + a.H * 3 * state
    grad_inputs = a.L_grad * 3 + a.H_grad * 2
    n_grad = a.L_grad + a.H_grad
    logits = k["B"] * cfg.seq_len * k["V"]
    out = {
        "params": float(4 * n_params),  # forward read of fp32 weights
        "grads_optimizer": float((4 + 28) * n_params if training else 0),
        "activations_forward": float(inner_fwd + logits * e),
        "target_q_forward": float(inner_fwd if a.target_q else 0),
        # Backward: re-read each grad module's inputs (L: 3, H: 2) + write/read 1 grad each.
        "activations_backward": float(
            (grad_inputs + 2 * n_grad) * state + logits * 4 * 2 if training else 0
        ),
        "carry_data": float(4 * state + 2 * k["B"] * cfg.seq_len * 4 + logits * e),
        "puzzle_rows": float(2 * k["B"] * m.puzzle_emb_ndim * 4),
    }
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- ceilings


def ceiling_it_s(cfg: RunConfig, gpu: str | GpuPeak) -> float:
    """CEILING on training it/s: 1 / max(FLOPs / peak FLOP/s, bytes / peak bandwidth)."""
    g = gpu_peak(gpu) if isinstance(gpu, str) else gpu
    t = max(step_flops(cfg)["total"] / g.peak_flops, step_bytes(cfg)["total"] / g.peak_bytes)
    return 1.0 / t


def mfu(measured_it_s: float, cfg: RunConfig, gpu: str | GpuPeak) -> float:
    """Model FLOPs utilisation: measured it/s x FLOPs/step / datasheet peak (0..1)."""
    g = gpu_peak(gpu) if isinstance(gpu, str) else gpu
    return measured_it_s * step_flops(cfg)["total"] / g.peak_flops


def ceiling_table(cfg: RunConfig, preset: str = "") -> list[dict]:
    """One row per GPU: every number is a ceiling derived from datasheet peaks."""
    f, b = step_flops(cfg)["total"], step_bytes(cfg)["total"]
    rows = []
    for key, g in GPUS.items():
        t_c, t_m = f / g.peak_flops, b / g.peak_bytes
        rows.append(
            {
                "gpu": g.name,
                "key": key,
                "preset": preset,
                "batch_size": cfg.train.batch_size,
                "flops_per_step": f,
                "bytes_per_step": b,
                "peak_bf16_tflops": g.bf16_tflops,
                "peak_bandwidth_gbs": g.bandwidth_gbs,
                "bound": "compute" if t_c >= t_m else "memory",
                "ceiling_it_s": 1.0 / max(t_c, t_m),
                "label": "ceiling (datasheet roofline, not measured)",
            }
        )
    return rows


def format_ceilings(cfg: RunConfig, preset: str = "") -> str:
    rows = ceiling_table(cfg, preset)
    f, b = rows[0]["flops_per_step"], rows[0]["bytes_per_step"]
    lines = [
        f"roofline for {preset or 'config'} (batch {cfg.train.batch_size}): "
        f"{f / 1e12:.3f} TFLOP/step, >= {b / 1e6:.1f} MB/step (lower bound)",
        f"{'GPU':<18}{'bf16 TFLOP/s':>14}{'GB/s':>8}{'bound':>9}{'ceiling it/s':>14}",
    ]
    for r in rows:
        lines.append(
            f"{r['gpu']:<18}{r['peak_bf16_tflops']:>14.1f}{r['peak_bandwidth_gbs']:>8.0f}"
            f"{r['bound']:>9}{r['ceiling_it_s']:>14.1f}"
        )
    lines.append("all it/s above are ceilings from datasheet peaks, not measurements")
    return "\n".join(lines)


# --------------------------------------------------------------------------- communication
#
# Data parallel (``hrm_fast.distributed``): each step all-reduces one flat fp32 gradient buffer
# and all-gathers the batch's puzzle-embedding rows with their gradients (plus a few hundred
# bytes of loss statistics, left out here). A ring all-reduce of M bytes over N ranks sends and
# receives 2 (N - 1) / N * M bytes per rank; an all-gather of M bytes in all, (N - 1) / N * M.
# The step runs the all-reduce after the backward (no overlap), so its time adds to compute.
# This is a MODEL from link datasheet rates, not a measurement: it leaves out per-collective
# latency (tens of microseconds each, 8 collectives per step) and achieved-vs-peak bandwidth.


@dataclass(frozen=True)
class Link:
    name: str
    gbs: float  # per GPU, one direction, GB/s (1e9 B/s)
    note: str = ""


LINKS: dict[str, Link] = {
    "nvlink4": Link("NVLink 4 (H100 SXM)", 450.0, "900 GB/s per GPU both directions"),
    "nvlink3": Link("NVLink 3 (A100 SXM)", 300.0, "600 GB/s per GPU both directions"),
    "pcie5": Link("PCIe 5.0 x16", 63.0, "32 GT/s x 16 lanes, 128b/130b"),
    "pcie4": Link("PCIe 4.0 x16", 31.5, "16 GT/s x 16 lanes, 128b/130b"),
    "eth400": Link("400 Gb/s Ethernet", 50.0, "one NIC per GPU"),
    "eth200": Link("200 Gb/s Ethernet", 25.0, "one NIC per GPU"),
    "eth100": Link("100 Gb/s Ethernet", 12.5, "one NIC per GPU"),
}


def comm_bytes(cfg: RunConfig, world: int) -> dict[str, float]:
    """Bytes one rank sends per step with ``world`` ranks (ring algorithms); global batch B."""
    if world <= 1:
        return {"allreduce_buffer": 0.0, "allreduce": 0.0, "puzzle_gather": 0.0, "total": 0.0}
    buffer = 4 * network_params(cfg)  # fp32 gradients
    rows = cfg.train.batch_size * (4 * cfg.model.puzzle_emb_ndim + 4)  # grads + int32 ids
    out = {
        "allreduce_buffer": float(buffer),
        "allreduce": 2 * (world - 1) / world * buffer,
        "puzzle_gather": (world - 1) / world * rows if cfg.model.puzzle_emb_ndim else 0.0,
    }
    out["total"] = out["allreduce"] + out["puzzle_gather"]
    return out


def scaling_model(cfg: RunConfig, gpu: str | GpuPeak, link: str | Link, world: int) -> dict:
    """MODEL of one data-parallel step at a fixed global batch: compute ceiling per rank (batch
    B / world) plus communication at the link's datasheet rate, no overlap."""
    import dataclasses

    g = gpu_peak(gpu) if isinstance(gpu, str) else gpu
    ln = LINKS[link] if isinstance(link, str) else link
    per_rank = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=cfg.train.batch_size // world)
    )
    compute = 1.0 / ceiling_it_s(per_rank, g)
    comm = comm_bytes(cfg, world)["total"] / (ln.gbs * 1e9)
    one = 1.0 / ceiling_it_s(cfg, g)
    step = compute + comm
    return {
        "world": world,
        "gpu": g.name,
        "link": ln.name,
        "compute_s": compute,
        "comm_s": comm,
        "step_s": step,
        "it_s": 1.0 / step,
        "speedup": one / step,
        "efficiency": one / (world * step),
        "label": "model (datasheet peaks, no latency, no overlap), not measured",
    }


def format_scaling(cfg: RunConfig, preset: str, gpu: str = "h100", worlds=(2, 4, 8)) -> str:
    c = comm_bytes(cfg, 2)
    lines = [
        f"data-parallel MODEL for {preset} (global batch {cfg.train.batch_size}) on "
        f"{gpu_peak(gpu).name}: all-reduce buffer {c['allreduce_buffer'] / 1e6:.1f} MB/step "
        "(fp32 gradients); time = compute ceiling at batch/N + ring all-reduce and gather "
        "bytes / link bandwidth",
        f"{'link':<22}{'GB/s':>7}" + "".join(f"{f'N={n} comm / speedup':>24}" for n in worlds),
    ]
    for key, ln in LINKS.items():
        cells = []
        for n in worlds:
            m = scaling_model(cfg, gpu, key, n)
            cells.append(f"{m['comm_s'] * 1e3:>9.2f} ms / {m['speedup']:>5.2f}x")
        lines.append(f"{ln.name:<22}{ln.gbs:>7.1f}" + "".join(f"{x:>24}" for x in cells))
    lines.append(
        "speedup = 1-GPU ceiling step time / N-GPU modelled step time (ideal: N); a model from "
        "datasheet rates, not a measurement"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    from hrm_fast.presets import from_name

    for name in ("seed", "paper", "trm-arc1"):
        print(format_ceilings(from_name(name), name))
        print()
    print(format_scaling(from_name("paper"), "paper"))
    print()
    print(format_scaling(from_name("seed"), "seed", "a100", worlds=(2, 4)))
