"""One fused training step against the reference step, and a CUDA-graph replay against eager."""

from __future__ import annotations

import copy

import torch

from hrm_fast import tolerances as tol
from hrm_fast.selfcheck.families import CHECK_BATCH, randn


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


def check_step(cfg, device, gen, attention: str = "kernel"):
    """One fused training step against the reference step on the same weights and batch."""
    from hrm_fast.loss import arc_loss_fused, arc_loss_ref

    num_ids = 4
    batch = _synthetic_batch(cfg, num_ids, device, gen)
    ref = _build(cfg, "reference", "kernel", device, num_ids)
    if cfg.model.puzzle_emb_ndim > 0:  # zero at init: give the embedding's rows a gradient path
        table = ref.inner.puzzle_emb.weights
        table.copy_(randn(*table.shape, gen=gen, scale=0.1))
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
    for k in [k for k in tol.STEP_LOSS_KEYS if k in m_ref]:
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


def check_cuda_graphs(cfg, device, gen, attention: str = "kernel"):
    """The fused step's forward and backward replayed from a CUDA graph against eager."""
    from hrm_fast.loss import arc_loss_fused

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
