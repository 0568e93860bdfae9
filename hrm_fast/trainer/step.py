"""The static training step: the Trainer builds the model, the optimisers and the fixed buffers,
and runs one iteration at a time.

``Trainer.step()`` is the whole iteration: sample + augment a batch on the device, the ACT carry
update (halted examples are replaced), the model's forward and loss (``model.forward_loss``:
HRM's 1-step gradient and target-Q forward, or TRM's recursion), backward, gradient clipping,
AdamW, the puzzle-embedding sign-SGD and, when on, the weights' EMA. Shapes
are fixed, the carry and the metric sums are updated in place, and nothing in it reads a value
back to the host, so it can be compiled (``--compile``) and captured in a CUDA graph
(``--cuda-graphs``). The loop reads the metric sums only every ``log_every`` steps.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from hrm_fast.arch import build_model
from hrm_fast.config import RunConfig
from hrm_fast.device import resolve_compile
from hrm_fast.distributed import DataParallel, rank_seed
from hrm_fast.ema import EMA
from hrm_fast.errors import UserError
from hrm_fast.files import prepare_dir
from hrm_fast.host_memory import keep_freed_memory
from hrm_fast.layers import Carry, use_onednn_linear
from hrm_fast.memory import check_training_fits
from hrm_fast.optim import AdamATan2, SparseSignSGD, lr_at
from hrm_fast.roofline import step_flops
from hrm_fast.selfcheck import resolve_checked_runtime


def steps_for_epochs(epochs: int, num_train_pairs: int, batch_size: int) -> int:
    """TRM's and HRM's run length: pretrain.py sets total_steps = int(epochs * total_groups *
    mean_puzzle_examples / global_batch_size), where an epoch visits every task (group) once
    and takes all the trainable pairs of one of its augmentations. With every task's pool the
    same size, total_groups * mean_puzzle_examples is the number of trainable pairs."""
    steps = epochs * num_train_pairs // batch_size
    if not 1 <= steps <= 999_999_999:
        raise UserError(
            f"--epochs {epochs}: {epochs} x {num_train_pairs} trainable pairs / batch "
            f"{batch_size} = {steps} steps, outside 1..999999999"
        )
    return steps


METRIC_KEYS = (
    "loss", "lm_loss", "q_halt_loss", "q_continue_loss", "diversity", "distribution", "halt",
    "accuracy", "exact_accuracy", "unique_classes", "label_classes", "q_halt_accuracy",
)  # fmt: skip


def check_compile_cache() -> None:
    """--compile writes generated code to inductor's cache at the first step; a cache it cannot
    write is bad input now, not a traceback from inside the compiler."""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    where = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    flag = "TORCHINDUCTOR_CACHE_DIR" if "TORCHINDUCTOR_CACHE_DIR" in os.environ else "--compile"
    prepare_dir(where, f"{flag} (compile cache)")


class Trainer:
    """The model, its optimisers and the static step's buffers for one RunConfig (one rank's
    share of the batch under data parallelism). Saving and restoring: ``trainer.state``.

    The fused path on a GPU is self-checked first (``hrm_fast.selfcheck``; ``force_selfcheck``:
    on a CPU too, for tests); ``self.runtime`` says what was checked and any fallback.
    ``dataset``: the data to train on instead of the one ``cfg.data`` builds (``adapt``: a new
    block of puzzle ids for unseen tasks); ``train_network`` False freezes every network weight
    (no gradients, no optimiser state), so only the puzzle-embedding rows train.
    """

    def __init__(
        self,
        cfg: RunConfig,
        dp: DataParallel | None = None,
        dataset=None,
        train_network: bool = True,
        force_selfcheck: bool = False,
    ):
        from hrm_fast.data import build_dataset, check_fits, data_identity, make_sampler

        self.cfg = cfg
        # Data parallel (torchrun, world > 1): this rank's device and share of the global batch.
        self.dp = dp
        self.batch_size = cfg.train.batch_size
        if dp is not None:
            self.batch_size = dp.local_batch(cfg.train.batch_size)
            if cfg.train.cuda_graphs and dp.backend != "nccl":
                raise UserError("--cuda-graphs with several ranks needs --dist-backend nccl")
        self.runtime = resolve_checked_runtime(cfg, dp, force=force_selfcheck)
        self.device, self.backend, self.dtype = (
            self.runtime.device,
            self.runtime.backend,
            self.runtime.dtype,
        )
        # CPU steps re-allocate the same activations: keep them mapped (no page faults a step).
        self.host_memory = keep_freed_memory() if self.device.type == "cpu" else "default"
        torch.manual_seed(cfg.train.seed)
        # The data's kind (ARC, Sudoku, maze) decides the vocabulary, sequence and puzzle ids;
        # adapt passes its own (a new block of puzzle ids for unseen tasks).
        if dataset is None:
            dataset = build_dataset(cfg.data, seed=cfg.train.seed)
        self.dataset = dataset
        check_fits(cfg, self.dataset)
        # What the checkpoint records beside the weights: the data's identity and puzzle tasks
        # (adapt replaces the tasks with the table's blocks) and any extra entries.
        self.dataset_record = {
            "num_puzzle_ids": self.dataset.num_puzzle_ids,
            "task_ids": list(self.dataset.task_ids),
            **data_identity(self.dataset),
        }
        self.payload_extra: dict = {}
        if cfg.train.epochs > 0:  # the run length follows the data actually loaded
            cfg.train.steps = steps_for_epochs(
                cfg.train.epochs, self.dataset.num_train_pairs, cfg.train.batch_size
            )
        check_training_fits(cfg, self.dataset.num_puzzle_ids, self.batch_size, self.device)
        self.sampler = make_sampler(self.dataset, self.device, self.backend)
        self.model = build_model(
            cfg.model,
            seq_len=cfg.seq_len,
            num_puzzle_ids=self.dataset.num_puzzle_ids,
            batch_size=self.batch_size,
            backend=self.backend,
            forward_dtype=self.dtype,
            attention=self.runtime.attention,
        ).to(self.device)
        self.model.train()
        # What CPU attention runs (hrm-fast's C++ kernel, or SDPA and why) and which library
        # the fp32 CPU matmuls use: the run log says both.
        self.cpu_attention = next(
            (m.ops.cpu_attention for m in self.model.modules() if hasattr(m, "ops")), "none"
        )
        self.cpu_matmul = use_onednn_linear(self.model, self.device, self.dtype)
        if self.backend == "fused":
            from hrm_fast.loss import arc_loss_fused as loss_fn
        else:
            from hrm_fast.loss import arc_loss_ref as loss_fn
        if dp is not None:  # the batch-level penalties see every rank's examples
            loss_fn = functools.partial(loss_fn, batch_gather=dp.gather_batch)
        self.loss_fn = loss_fn

        t = cfg.train
        self.train_network = train_network
        if not train_network:
            self.model.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if dp is not None and self.params:
            dp.share_gradient_buffer(self.params)
            # The weights are made (the same on every rank); sampling differs by rank from here.
            torch.manual_seed(rank_seed(t.seed, dp.rank))
        use_graphs = t.cuda_graphs
        self.lr = torch.tensor(t.lr, device=self.device) if use_graphs else t.lr
        self.last_lr = 0.0  # the network's lr of the last step, for the log
        opt_kwargs = dict(lr=self.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
        if not self.params:  # a frozen network: only the sparse sign-SGD below steps
            self.opt = None
        elif t.optimizer == "adam_atan2":  # its step counters always live on the device
            self.opt = AdamATan2(self.params, **opt_kwargs)
        elif t.optimizer == "adamw":
            if self.device.type == "cuda":
                opt_kwargs.update(fused=True, capturable=use_graphs)
            self.opt = torch.optim.AdamW(self.params, **opt_kwargs)
        else:
            raise UserError(f"--optimizer: expected adamw or adam_atan2, got {t.optimizer!r}")
        self.sparse = (
            SparseSignSGD(
                self.model.inner.puzzle_emb,
                t.puzzle_emb_weight_decay,
                self.device,
                gather=None if dp is None else dp.gather_rows,
            )
            if cfg.model.puzzle_emb_ndim > 0
            else None
        )
        self.ema = EMA(self.model, t.ema_rate) if t.ema and self.params else None

        # Static state: the ACT carry and the metric sums live in fixed buffers.
        example = self.sampler.sample(self.batch_size)
        self.carry: Carry = self.model.initial_carry(example)
        names = METRIC_KEYS + ("halted", "halted_steps", "grad_norm")
        self.sums = {k: torch.zeros((), device=self.device) for k in names}
        self.n_in_sums = 0
        self.step_count = 0
        # The held-out score's state (best, evaluations since): saved in the checkpoint.
        self.held_out: dict | None = None

        self.compiled, self.compile_reason = resolve_compile(
            t, self.device, self.backend, step_flops(cfg)["total"]
        )
        fl = self._forward_loss
        if self.compiled:
            check_compile_cache()
            fl = torch.compile(fl, dynamic=False)
        self._forward_loss_fn = fl
        self._first_compiled_call = self.compiled and t.compile == "auto"
        self._graph = None

    # ------------------------------------------------------------------ the static step

    def _forward_loss(self, carry: Carry):
        batch = self.sampler.sample(self.batch_size)
        return self.model.forward_loss(carry, batch, self.loss_fn, self.cfg.loss)

    def _forward_loss_first_auto(self):
        """``--compile auto``'s first compiled call: a compiler that fails (no headers, an
        unsupported op) costs the run its speed-up, not the run. The RNG is rewound so the eager
        step draws what the compiled one would have."""
        rng = torch.get_rng_state()
        self._first_compiled_call = False
        try:
            return self._forward_loss_fn(self.carry)
        except Exception as e:  # inductor/dynamo raise many types; any of them means eager
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            self.compiled = False
            self.compile_reason = f"auto: compile failed ({first}); running eager"
            self._forward_loss_fn = self._forward_loss
            torch.set_rng_state(rng)
            return self._forward_loss_fn(self.carry)

    def _step_body(self) -> None:
        if self._first_compiled_call:
            new_carry, loss, metrics = self._forward_loss_first_auto()
        else:
            new_carry, loss, metrics = self._forward_loss_fn(self.carry)
        loss.backward()
        if self.opt is not None:
            if self.dp is not None:
                self.dp.average_gradients()  # one all-reduce of the flat gradient buffer
            # foreach=None: the foreach kernels where the device has them (CUDA, CPU); MPS has
            # none and foreach=True would raise there.
            max_norm = self.cfg.train.grad_clip or math.inf  # inf: the norm only, for the log
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=None)
            self.opt.step()
        else:
            gnorm = torch.zeros((), device=self.device)
        if self.sparse is not None:
            self.sparse.step()
            self.sparse.zero_grad()
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=False)
        if self.ema is not None:
            self.ema.update()
        with torch.no_grad():
            for dst, src in zip(
                self.carry.tensors().values(), new_carry.tensors().values(), strict=True
            ):
                dst.copy_(src)
            for k in METRIC_KEYS:
                self.sums[k].add_(metrics[k].detach().float())
            halted = new_carry.halted
            self.sums["halted"].add_(halted.sum())
            self.sums["halted_steps"].add_((new_carry.steps * halted).sum())
            self.sums["grad_norm"].add_(gnorm.detach().float())

    def _set_lr(self, step: int) -> None:
        t = self.cfg.train
        lr = lr_at(step, t.lr, t.warmup_steps, t.steps, t.lr_min_ratio)
        self.last_lr = lr
        if isinstance(self.lr, torch.Tensor):
            self.lr.fill_(lr)
        elif self.opt is not None:
            for g in self.opt.param_groups:
                g["lr"] = lr
        if self.sparse is not None:
            s = lr_at(step, t.puzzle_emb_lr, t.warmup_steps, t.steps, t.lr_min_ratio)
            self.sparse.lr.fill_(s)

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the step mutates, so warm-up and capture can be undone in place."""
        ts = list(self.carry.tensors().values()) + list(self.sums.values())
        ts += list(self.model.state_dict(keep_vars=True).values())
        if self.ema is not None:
            ts += self.ema.shadow
        for st in self.opt.state.values() if self.opt is not None else ():
            ts += [v for v in st.values() if isinstance(v, torch.Tensor)]
        return ts

    def _capture(self) -> None:
        """Capture the whole step in one CUDA graph (after warm-up on a side stream).

        Warm-up and capture run the step for real, so every mutated tensor is snapshotted
        first and restored in place afterwards: the first replay is the real next step.
        """
        tensors = self._state_tensors()
        snapshot = [t.detach().clone() for t in tensors]
        # Replays read the generator's host-side offset, so rewinding it makes the first
        # replay draw the same batch and exploration numbers as the eager step would.
        rng = torch.cuda.get_rng_state(self.device)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self._step_body()
        torch.cuda.current_stream().wait_stream(s)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._step_body()
        # The optimiser state created in warm-up (step 0 had none) goes back to zero.
        fresh = self._state_tensors()
        with torch.no_grad():
            for t, v in zip(tensors, snapshot, strict=True):
                t.copy_(v)
            for t in fresh[len(tensors) :]:
                t.zero_()
        torch.cuda.set_rng_state(rng, self.device)

    def step(self) -> None:
        """One training iteration (no host sync)."""
        self._set_lr(self.step_count)
        if self.cfg.train.cuda_graphs:
            if self._graph is None:
                self._capture()
            self._graph.replay()
        else:
            self._step_body()
        self.step_count += 1
        self.n_in_sums += 1

    def read_metrics(self) -> dict[str, float]:
        """Average the device-side sums since the last read (the one host sync)."""
        sums = self.sums if self.dp is None else self.dp.average_metrics(self.sums)
        vals = {k: v.item() for k, v in sums.items()}
        n = max(1, self.n_in_sums)
        out = {k: vals[k] / n for k in METRIC_KEYS}
        out["grad_norm"] = vals["grad_norm"] / n
        out["act_steps"] = vals["halted_steps"] / vals["halted"] if vals["halted"] else float("nan")
        for v in self.sums.values():
            v.zero_()
        self.n_in_sums = 0
        return out

    # ------------------------------------------------------------------ what the loop reads

    @property
    def world_size(self) -> int:
        return 1 if self.dp is None else self.dp.world

    def probe(self, source=None):
        """The input-sensitivity probe on the (EMA) model; pairs from ``source`` (default: the
        training sampler)."""
        from hrm_fast.probe import run_probe

        t = self.cfg.train
        was_training = self.model.training
        self.model.eval()
        # The probe draws its own inputs; fork the RNG so training (and resume) never sees it.
        devices = [self.device] if self.device.type == "cuda" else []
        averaged = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
        try:
            with torch.random.fork_rng(devices=devices), averaged:
                torch.manual_seed(t.seed + self.step_count)
                report = run_probe(
                    self.model, self.sampler if source is None else source, t.probe_pairs,
                    t.probe_min_differ, t.probe_min_tv, self.device, generator_seed=t.seed,
                )  # fmt: skip
        finally:
            self.model.train(was_training)
        report.step = self.step_count
        return report
