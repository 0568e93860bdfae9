"""The start-up self-check: the fused path against the reference on the user's own device.

``run_checks`` compares, at a preset's shapes on a tiny batch and in fp32, every kernel family's
forward and backward with its ``*_ref`` (the bounds of the CPU tests, ``hrm_fast.tolerances``),
one whole fused training step (losses, gradients, one optimiser update) with the reference
step and, with ``--cuda-graphs``, a replayed step with an eager one. A kernel that fails to
compile or launch fails its family. ``checked`` caches a pass per (device, driver, torch,
triton, hrm-fast and kernel sources, preset shapes); ``choose_backend`` turns the result into
the backend a run uses. On a CPU the kernels run under Triton's interpreter.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from hrm_fast import tolerances as tol
from hrm_fast.config import RunConfig
from hrm_fast.errors import UserError

CHECK_BATCH = 2  # examples per check: the shapes are the preset's, the batch is tiny
FAMILIES = ("attention", "rms_norm", "swiglu", "arc_loss", "augment", "step", "cuda_graphs")


class SelfCheckFailed(UserError):
    """``--backend fused`` was asked for and the fused path failed its check."""


@dataclasses.dataclass
class FamilyResult:
    family: str
    status: str  # "passed", "failed" or "skipped"
    shape: list[int] | None = None
    err: float | None = None  # the worst compared tensor's error ...
    tol: float | None = None  # ... and its bound
    detail: str = ""  # failed: the tensor and its error, or the exception; skipped: why

    def line(self) -> str:
        if self.status == "passed":
            return f"{self.family} {self.err:.1e} (tol {self.tol:.0e})"
        if self.status == "skipped":
            return f"{self.family} skipped ({self.detail})"
        return f"{self.family} at {self.shape}: {self.detail}"


# --------------------------------------------------------------------------- the checks


def _interpreted(device: torch.device):
    """The Triton kernels on CPU tensors (interpreter), or nothing to do on a GPU."""
    if device.type == "cuda":
        return contextlib.nullcontext()
    from hrm_fast.kernels.dispatch import triton_on_cpu

    return triton_on_cpu()


def _randn(*shape, gen, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _backward_pair(fn, inputs: list[torch.Tensor], dy: torch.Tensor, device):
    """``fn`` run on ``device`` in fp32 and on the CPU in float64: (out, grads) of each."""
    results = []
    for dev, dtype in ((device, torch.float32), (torch.device("cpu"), torch.float64)):
        xs = [x.detach().to(dev, dtype).requires_grad_() for x in inputs]
        out = fn(*xs)
        out.backward(dy.to(dev, dtype))
        results.append((out.detach(), [x.grad for x in xs]))
    return results


def _seq(cfg: RunConfig) -> int:
    return cfg.seq_len + cfg.model.puzzle_emb_len


def _check_attention(cfg, device, gen):
    from hrm_fast.kernels import attention as K
    from hrm_fast.layers import RotaryEmbedding

    m = cfg.model
    shape = family_shape("attention", cfg)
    rope = RotaryEmbedding(m.head_dim, shape[1], m.rope_theta)
    cos, sin = rope.cos_cached, rope.sin_cached
    qkv, do = _randn(*shape, gen=gen), _randn(*shape[:2], m.num_heads, m.head_dim, gen=gen)
    (out, (dqkv,)), (out64, (dqkv64,)) = _backward_pair(
        lambda x: (K.rope_attention if x.dtype == torch.float32 else K.rope_attention_ref)(
            x, cos.to(x.device, x.dtype), sin.to(x.device, x.dtype)
        ),
        [qkv],
        do,
        device,
    )
    return [
        tol.compare("out", out, out64, *tol.ATTENTION_OUT),
        tol.compare("d_qkv", dqkv, dqkv64, *tol.ATTENTION_DQKV),
    ]


def _check_rms_norm(cfg, device, gen):
    from hrm_fast.kernels import rms_norm as K

    shape, eps = family_shape("rms_norm", cfg), cfg.model.rms_norm_eps
    x, r, dy = _randn(*shape, gen=gen, scale=2), _randn(*shape, gen=gen), _randn(*shape, gen=gen)
    (y, (dx, dr)), (y64, (dx64, dr64)) = _backward_pair(
        lambda a, b: (K.add_rms_norm if a.dtype == torch.float32 else K.add_rms_norm_ref)(
            a, b, eps
        ),
        [x + 0.3, r],
        dy,
        device,
    )
    (s, grads), (s64, grads64) = _backward_pair(
        lambda a, b, c: (K.add3 if a.dtype == torch.float32 else K.add3_ref)(a, b, c),
        [x, r, dy],
        x,
        device,
    )
    return [
        tol.compare("y", y, y64, *tol.RMS_NORM_Y),
        tol.compare("dx", dx, dx64, *tol.RMS_NORM_DX),
        tol.compare("dr", dr, dr64, *tol.RMS_NORM_DX),
        tol.compare("add3", s, s64, *tol.ADD3),
        *(
            tol.compare(f"add3 d{i}", g, w, *tol.ADD3)
            for i, (g, w) in enumerate(zip(grads, grads64, strict=True))
        ),
    ]


def _check_swiglu(cfg, device, gen):
    from hrm_fast.kernels import swiglu as K

    width = cfg.model.intermediate_size
    shape = family_shape("swiglu", cfg)
    gate_up, dy = _randn(*shape, gen=gen, scale=3), _randn(*shape[:2], width, gen=gen)
    (out, (dgu,)), (out64, (dgu64,)) = _backward_pair(
        lambda x: (K.swiglu if x.dtype == torch.float32 else K.swiglu_ref)(x), [gate_up], dy, device
    )
    return [
        tol.compare("out", out, out64, *tol.SWIGLU),
        tol.compare("d_gate", dgu[..., :width], dgu64[..., :width], *tol.SWIGLU),
        tol.compare("d_up", dgu[..., width:], dgu64[..., width:], *tol.SWIGLU),
    ]


def _check_arc_loss(cfg, device, gen):
    from hrm_fast.kernels.arc_loss import arc_loss_fused
    from hrm_fast.loss import IGNORE, arc_loss_ref

    B, S, V = CHECK_BATCH, cfg.seq_len, cfg.model.vocab_size
    logits = _randn(B, S, V, gen=gen, scale=3)
    labels = torch.randint(0, V, (B, S), generator=gen, dtype=torch.int32)
    labels[torch.rand(B, S, generator=gen) < 0.25] = IGNORE
    q = _randn(3, B, gen=gen)
    steps = torch.randint(1, cfg.model.halt_max_steps + 1, (B,), generator=gen, dtype=torch.int32)
    runs = []
    for fn, dev, dtype in ((arc_loss_fused, device, torch.float32), (arc_loss_ref, "cpu", None)):
        x = logits.detach().to(dev, dtype or torch.float64).requires_grad_()
        small = [t.to(dev) for t in (q[0], q[1], q[2].sigmoid())]
        loss, _ = fn(x, labels.to(dev), *small, steps.to(dev), cfg.loss, cfg.model.halt_max_steps)
        loss.backward()
        runs.append((loss.detach(), x.grad))
    (loss, dx), (loss64, dx64) = runs
    return [
        tol.compare("loss", loss, loss64, *tol.ARC_LOSS),
        tol.compare("d_logits", dx, dx64, *tol.ARC_LOSS_DLOGITS),
    ]


def _check_augment(cfg, device, gen):
    import numpy as np

    from hrm_fast.augment import augment_batch_ref, invert_batch_ref, random_offsets, sample_pool
    from hrm_fast.kernels.augment import augment_batch, invert_batch

    canvas, pairs = cfg.data.canvas, 4
    bank_in = torch.randint(0, 10, (pairs, canvas, canvas), generator=gen, dtype=torch.uint8)
    bank_out = torch.randint(0, 10, (pairs, canvas, canvas), generator=gen, dtype=torch.uint8)
    shapes = torch.randint(1, canvas + 1, (pairs, 4), generator=gen, dtype=torch.int32)
    pair = torch.randint(0, pairs, (CHECK_BATCH,), generator=gen)
    dihedral = torch.randint(0, 8, (CHECK_BATCH,), generator=gen)
    _, colour_maps = sample_pool(
        1, CHECK_BATCH, seed=int(torch.randint(0, 1 << 30, (1,), generator=gen))
    )
    cmap = torch.from_numpy(np.ascontiguousarray(colour_maps[0]))
    offset = random_offsets(shapes[pair], dihedral, canvas, True)
    args = [t.to(device) for t in (bank_in, bank_out, shapes, pair, dihedral, cmap, offset)]
    got = augment_batch(*args, canvas)
    want = augment_batch_ref(*[a.cpu() for a in args], canvas)
    grids, grid_shapes = invert_batch(got[1], args[4], args[5], canvas)
    want_grids, want_shapes = invert_batch_ref(want[1], dihedral, cmap, canvas)
    return [
        tol.compare("inputs", got[0], want[0], *tol.AUGMENT),
        tol.compare("labels", got[1], want[1], *tol.AUGMENT),
        tol.compare("inverted grids", grids, want_grids, *tol.AUGMENT),
        tol.compare("inverted shapes", grid_shapes, want_shapes, *tol.AUGMENT),
    ]


def _synthetic_batch(cfg, num_ids: int, device, gen) -> dict[str, torch.Tensor]:
    from hrm_fast.loss import IGNORE

    B, S, V = CHECK_BATCH, cfg.seq_len, cfg.model.vocab_size
    labels = torch.randint(0, V, (B, S), generator=gen, dtype=torch.int32)
    labels[torch.rand(B, S, generator=gen) < 0.25] = IGNORE
    batch = dict(
        inputs=torch.randint(0, V, (B, S), generator=gen, dtype=torch.int32),
        labels=labels,
        puzzle_identifiers=torch.randint(0, num_ids, (B,), generator=gen, dtype=torch.int32),
    )
    return {k: v.to(device) for k, v in batch.items()}


def _build(cfg, backend: str, attention: str, device, num_ids: int):
    from hrm_fast.arch import build_model

    model = build_model(cfg.model, cfg.seq_len, num_ids, CHECK_BATCH, backend=backend,
                        forward_dtype=torch.float32, attention=attention)  # fmt: skip
    return model.to(device).train()


def _optimizer(cfg, params):
    from hrm_fast.optim import AdamATan2

    t = cfg.train
    kwargs = dict(lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    return (AdamATan2 if t.optimizer == "adam_atan2" else torch.optim.AdamW)(params, **kwargs)


def _gradients(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    if model.cfg.puzzle_emb_ndim > 0 and model.inner.puzzle_emb.local_weights.grad is not None:
        grads["puzzle_emb.local_weights"] = model.inner.puzzle_emb.local_weights.grad
    return grads


def _check_step(cfg, device, gen, attention: str = "kernel"):
    """One fused training step against the reference step on the same weights and batch."""
    from hrm_fast.kernels.arc_loss import arc_loss_fused
    from hrm_fast.loss import arc_loss_ref

    num_ids = 4
    batch = _synthetic_batch(cfg, num_ids, device, gen)
    ref = _build(cfg, "reference", "kernel", device, num_ids)
    if cfg.model.puzzle_emb_ndim > 0:  # zero at init: give the embedding's rows a gradient path
        table = ref.inner.puzzle_emb.weights
        table.copy_(_randn(*table.shape, gen=gen, scale=0.1))
    fused = _build(cfg, "fused", attention, device, num_ids)
    fused.load_state_dict(ref.state_dict())
    outcomes = []
    for model, loss_fn in ((ref, arc_loss_ref), (fused, arc_loss_fused)):
        torch.manual_seed(cfg.train.seed)  # the same exploration draws on both sides
        _, loss, metrics = model.forward_loss(model.initial_carry(batch), batch, loss_fn, cfg.loss)
        loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        grads = {k: g.clone() for k, g in _gradients(model).items()}
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        _optimizer(cfg, params).step()
        outcomes.append((metrics, grads, dict(model.named_parameters())))
    (m_ref, g_ref, w_ref), (m_fused, g_fused, w_fused) = outcomes
    comps = []
    for k in sorted(m_ref.keys() & m_fused.keys()):
        want = m_ref[k].detach().float()
        bound = torch.clamp(want.abs() * tol.STEP_LOSS_REL, min=tol.STEP_LOSS_ABS)
        comps.append(tol.compare(k, m_fused[k].float(), want, float(bound.max()), 0.0))
    if g_ref.keys() != g_fused.keys():
        missing = sorted(g_ref.keys() ^ g_fused.keys())
        comps.append(
            tol.Comparison("gradients", False, 0, 0, 0, f"gradient sets differ: {missing}")
        )
    for k in sorted(g_ref.keys() & g_fused.keys()):
        comps.append(
            tol.compare(
                f"grad {k}", g_fused[k], g_ref[k], *tol.relative_to_max(g_ref[k], tol.STEP_GRAD_REL)
            )
        )
    for k, w in w_ref.items():
        # Adam's first update is about lr * sign(g): where |g| is within the gradient bound of
        # zero either sign is right, so the update is compared where the gradient is clear.
        clear = torch.ones_like(w, dtype=torch.bool)
        if k in g_ref:
            clear = g_ref[k].abs() > 10 * tol.relative_to_max(g_ref[k], tol.STEP_GRAD_REL)[0]
        comps.append(tol.compare(f"updated {k}", w_fused[k][clear], w[clear], *tol.STEP_WEIGHTS))
    return comps


def _check_cuda_graphs(cfg, device, gen, attention: str = "kernel"):
    """The fused step's forward and backward replayed from a CUDA graph against eager."""
    from hrm_fast.kernels.arc_loss import arc_loss_fused

    cfg = copy.deepcopy(cfg)
    cfg.model.halt_exploration_prob = 0.0  # no random draws: eager and replay see the same
    num_ids = 4
    batch = _synthetic_batch(cfg, num_ids, device, gen)
    model = _build(cfg, "fused", attention, device, num_ids)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    carry = model.initial_carry(batch)

    def step():
        _, loss, _ = model.forward_loss(carry, batch, arc_loss_fused, cfg.loss)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        zero = torch.zeros_like
        return (loss, *(zero(p) if g is None else g for p, g in zip(params, grads, strict=True)))

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = step()
    eager = [t.clone() for t in step()]
    graph.replay()
    torch.cuda.synchronize(device)
    comps = [tol.compare("loss", replayed[0], eager[0], tol.STEP_LOSS_ABS, tol.STEP_LOSS_REL)]
    for name, got, want in zip(names, replayed[1:], eager[1:], strict=True):
        comps.append(
            tol.compare(f"grad {name}", got, want, *tol.relative_to_max(want, tol.STEP_GRAD_REL))
        )
    return comps


_CHECKS = {
    "attention": _check_attention,
    "rms_norm": _check_rms_norm,
    "swiglu": _check_swiglu,
    "arc_loss": _check_arc_loss,
    "augment": _check_augment,
}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def family_shape(name: str, cfg: RunConfig) -> list[int]:
    """The shape a family is checked at: its main operand's, the step's batch."""
    m, seq = cfg.model, _seq(cfg)
    return {
        "attention": [CHECK_BATCH, seq, 3 * m.num_heads, m.head_dim],
        "rms_norm": [CHECK_BATCH, seq, m.hidden_size],
        "swiglu": [CHECK_BATCH, seq, 2 * m.intermediate_size],
        "arc_loss": [CHECK_BATCH, cfg.seq_len, m.vocab_size],
    }.get(name, [CHECK_BATCH, cfg.seq_len])


def _run_family(name, fn, cfg, device, **kwargs) -> FamilyResult:
    gen = torch.Generator().manual_seed(1000 + FAMILIES.index(name))
    shape = family_shape(name, cfg)
    try:
        with _interpreted(device):
            comps = fn(cfg, device, gen, **kwargs)
    except Exception as e:  # a compile or launch error is this family's failure
        return FamilyResult(name, "failed", shape, detail=_one_line(e))
    if not comps:
        return FamilyResult(name, "failed", shape, detail="nothing was compared")
    worst = max(comps, key=lambda c: c.err / c.tol if c.tol > 0 else (0 if c.err == 0 else 1e30))
    failed = [c for c in comps if not c.ok]
    if failed:
        return FamilyResult(name, "failed", shape, failed[0].err, failed[0].tol, failed[0].line())
    return FamilyResult(name, "passed", shape, worst.err, worst.tol)


@contextlib.contextmanager
def _isolated(device: torch.device):
    """The caller's random streams untouched (a checked run and a cached one draw alike), and
    fp32 matmuls in full fp32 whatever the caller set (TF32 would exceed every bound)."""
    devices = [device] if device.type == "cuda" else []
    precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    with torch.random.fork_rng(devices=devices):
        try:
            torch.set_float32_matmul_precision("highest")
            torch.backends.cudnn.allow_tf32 = False
            yield
        finally:
            torch.set_float32_matmul_precision(precision)
            torch.backends.cudnn.allow_tf32 = cudnn_tf32


def run_checks(cfg: RunConfig, device: torch.device | str) -> dict:
    """Every check at ``cfg``'s shapes on ``device``; a JSON-ready report (see module doc)."""
    device = torch.device(device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("self-check on the CPU: set TRITON_INTERPRET=1 before triton is imported "
                        "(`hrm-fast check --device cpu` does)")  # fmt: skip
    with _isolated(device):
        return _run_all(cfg, device)


def _run_all(cfg: RunConfig, device: torch.device) -> dict:
    results = []
    for name, fn in _CHECKS.items():
        if name == "attention" and cfg.model.arch == "trm" and cfg.model.mlp_t:
            results.append(FamilyResult(name, "skipped", detail="--mlp-t has no attention"))
            continue
        results.append(_run_family(name, fn, cfg, device))
    attention_failed = results[0].status == "failed"
    # Attention alone failing is survivable: the rest of the step is checked with SDPA.
    attention = "sdpa" if attention_failed else "kernel"
    results.append(_run_family("step", _check_step, cfg, device, attention=attention))
    if not cfg.train.cuda_graphs:
        results.append(FamilyResult("cuda_graphs", "skipped", detail="--cuda-graphs is off"))
    elif device.type != "cuda":
        results.append(FamilyResult("cuda_graphs", "skipped", detail="needs a CUDA device"))
    else:
        results.append(
            _run_family("cuda_graphs", _check_cuda_graphs, cfg, device, attention=attention)
        )
    failed = [r for r in results if r.status == "failed"]
    summary = (
        "self-check passed: " + ", ".join(r.line() for r in results if r.status == "passed")
        if not failed
        else "self-check failed: " + "; ".join(r.line() for r in failed)
    )
    return {
        "passed": not failed,
        "failed": [r.family for r in failed],
        "attention": attention,
        "summary": summary,
        "families": [dataclasses.asdict(r) for r in results],
    }


# --------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """``$HRM_FAST_CACHE_DIR/selfcheck``, else ``~/.cache/hrm-fast/selfcheck`` (XDG)."""
    root = os.environ.get("HRM_FAST_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "selfcheck"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "hrm-fast" / "selfcheck"


def device_identity(device: torch.device) -> dict:
    """What the kernels' numerics can depend on: the GPU, its driver, the toolchain."""
    import triton

    import hrm_fast

    device = torch.device(device)
    ident = {"device": device.type, "gpu": None, "capability": None, "driver": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        arch = getattr(props, "gcnArchName", None)
        ident.update(gpu=props.name, capability=arch or f"sm_{props.major}{props.minor}",
                     driver=_driver_version())  # fmt: skip
    ident.update(torch=torch.__version__, cuda=torch.version.cuda, hip=torch.version.hip,
                 triton=triton.__version__, hrm_fast=hrm_fast.__version__,
                 kernels=_kernel_sources_digest())  # fmt: skip
    return ident


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # no NVML (ROCm, no package): the toolkit version stands in
        return None if torch.version.cuda is None else f"cuda-runtime {torch.version.cuda}"


def _kernel_sources_digest() -> str:
    # A source checkout changes kernels without a version bump: their text is part of the key.
    from hrm_fast import kernels

    h = hashlib.sha256()
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def preset_shapes(cfg: RunConfig) -> dict:
    """Everything in the config the checks' shapes and numerics follow."""
    t = cfg.train
    return {
        "model": dataclasses.asdict(cfg.model),
        "loss": dataclasses.asdict(cfg.loss),
        "seq_len": cfg.seq_len,
        "canvas": cfg.data.canvas,
        "batch": CHECK_BATCH,
        "optimizer": [t.optimizer, t.lr, t.beta1, t.beta2, t.weight_decay, t.grad_clip],
        "cuda_graphs": t.cuda_graphs,
    }


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def checked(cfg: RunConfig, device, use_cache: bool = True) -> dict:
    """``run_checks``, or the cached pass of an identical earlier run (``"cached": true``).
    Only passes are cached: a failure is checked again next time."""
    device = torch.device(device)
    parts = {"device": device_identity(device), "shapes": preset_shapes(cfg)}
    path = cache_dir() / f"{cache_key(parts)}.json"
    if use_cache:
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == parts and stored["report"]["passed"]:
                return {**stored["report"], "cached": True}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: check again
    report = run_checks(cfg, device)
    if use_cache and report["passed"]:
        from hrm_fast.files import write_output

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_output(path, json.dumps({"key": parts, "report": report}, indent=1))
        except Exception:  # a read-only home only costs the next run the check again
            pass
    return {**report, "cached": False}


# --------------------------------------------------------------------------- the decision


def choose_backend(
    cfg: RunConfig, device, requested: str, force: bool = False
) -> tuple[str, str | None, str | None]:
    """-> (backend, attention_fallback, note) for a run asked for ``requested`` on ``device``.

    Only the fused path on a GPU is checked (``force``: anywhere, the kernels interpreted on a
    CPU). Passed: ("fused", None, summary). Attention alone failed: ("fused", "sdpa", note).
    Anything else failed: ("reference", None, note). ``requested == "fused"`` (given
    explicitly) and a failure: SelfCheckFailed, exit 2. ``note`` is the one line to print and
    record; None where nothing was checked.
    """
    device = torch.device(device)
    backend = requested
    if requested == "auto":
        backend = "fused" if (device.type == "cuda" or force) else "reference"
    if backend != "fused" or not (device.type == "cuda" or force):
        return backend, None, None
    report = checked(cfg, device)
    if report["passed"]:
        return "fused", None, report["summary"]
    if requested == "fused":
        raise SelfCheckFailed(
            f"--backend fused: {report['summary']}; drop --backend fused to fall back, and "
            "please send us the file `hrm-fast check --json FILE` writes"
        )
    if report["failed"] == ["attention"]:
        return "fused", "sdpa", f"{report['summary']}; attention runs through SDPA"
    return "reference", None, f"{report['summary']}; training on the reference backend"
