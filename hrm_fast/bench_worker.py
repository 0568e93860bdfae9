"""One training side in a process of its own, timed one step at a time on a parent's request:
hrm-fast's step (``hrm-fast bench``'s CPU preset rows, and ``bench --against``) or the official
code's (``bench --against``). ``Worker`` is the parent's handle on such a process.

A process per side keeps each side's peak memory its own (ru_maxrss is per process) and keeps
process-level settings (threads, imported modules, the official ``models`` package) apart.

usage (a parent's, not a user's): ``python -m hrm_fast.bench_worker SPEC_JSON``

Protocol, one JSON object a line: the worker answers ``{"ready": {...}}`` once built, then reads
``step`` (answer ``{"step_s": seconds}``) or ``finish`` (answer ``{"finish": {...}}``, then exit)
from stdin. Any failure answers ``{"error": one line, "exit_code": N}`` and exits 1. The
official code's own prints go to stderr: stdout carries only the protocol.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

from hrm_fast.errors import SideFailed, UserError

# Where each official checkout keeps its model, and the class it defines.
OFFICIAL = {
    "hrm": ("models.hrm.hrm_act_v1", "HierarchicalReasoningModel_ACTV1"),
    "trm": ("models.recursive_reasoning.trm", "TinyRecursiveReasoningModel_ACTV1"),
}
LOSS_TYPE = "stablemax_cross_entropy"  # both official ARC configs; their softmax CE path
# crashes on their non-contiguous logits
FORWARD_DTYPE = {"torch.float32": "float32", "torch.bfloat16": "bfloat16",
                 "torch.float16": "float16"}  # fmt: skip


class Protocol:
    """The parent's pipe: the real stdout; fd 1 is pointed at stderr so stray prints go there."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)

    def send(self, **msg) -> None:
        self.out.write(json.dumps(msg, default=str) + "\n")
        self.out.flush()


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def peak_memory(device) -> dict:
    import torch

    if device.type == "cuda":
        return {"peak_mem_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_mem_label": "torch.cuda.max_memory_allocated"}  # fmt: skip
    # Linux reports KiB: this process's high-water mark, its build included.
    return {"peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_mem_label": "ru_maxrss (peak RSS of the side's process)"}  # fmt: skip


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- hrm-fast's side


class OursSide:
    """``hrm-fast train --preset P --batch-size B --dtype D`` as the train command builds it
    (default backend, compile and dtype resolution; batch 0: the preset's). With ``against``:
    AdamW and stablemax CE, so both sides do the same work, and one batch saved for the
    official side."""

    def __init__(self, spec: dict):
        import torch

        from hrm_fast.presets import from_name
        from hrm_fast.trainer.step import Trainer

        cfg = from_name(spec["preset"])
        t = cfg.train
        t.device, t.dtype = spec["device"], spec["dtype"]
        t.compile = spec.get("compile") or t.compile  # the official side's own flag is separate
        t.batch_size = spec["batch_size"] or t.batch_size
        if spec.get("against"):
            t.optimizer, cfg.loss.ce = "adamw", "stablemax"
        cfg.validate({"batch_size", "dtype", "optimizer", "ce", "compile"})
        self.cfg = cfg
        self.trainer = Trainer(cfg)
        self.device = self.trainer.device
        if spec.get("against"):  # the official side trains on one batch of our sampler's
            batch = self.trainer.sampler.sample(self.trainer.batch_size)
            torch.save({k: v.cpu() for k, v in batch.items()}, spec["batch_file"])

    def info(self) -> dict:
        from hrm_fast.check import environment
        from hrm_fast.layers import count_parameters

        tr, t = self.trainer, self.cfg.train
        return {
            "side": "hrm-fast", "device": str(self.device), "backend": tr.backend,
            "dtype": str(tr.dtype), "compile": self.compile_text(), "cuda_graphs": t.cuda_graphs,
            "host_memory": tr.host_memory, "attention": tr.cpu_attention,
            "matmul": tr.cpu_matmul,
            "optimizer": t.optimizer, "ce": self.cfg.loss.ce, "ema": t.ema,
            "grad_clip": t.grad_clip, "batch_size": tr.batch_size, "seq_len": self.cfg.seq_len,
            "num_puzzle_ids": tr.dataset.num_puzzle_ids,
            "parameters": count_parameters(tr.model)["network"],
            "model": dict(vars(self.cfg.model)), "environment": environment(self.device),
        }  # fmt: skip

    def compile_text(self) -> str:
        tr = self.trainer
        return f"{'on' if tr.compiled else 'off'} ({tr.compile_reason})"

    def step(self) -> None:
        self.trainer.step()

    def finish(self) -> dict:
        loss = self.trainer.read_metrics()["loss"]
        # An auto compile that failed at the first step ran eager: say what was measured.
        return {"loss": loss, "loss_finite": loss == loss and abs(loss) != float("inf"),
                "compile": self.compile_text()}  # fmt: skip


# --------------------------------------------------------------------------- the official side


def install_flash_attn_shim(device) -> str:
    """HRM's layers.py imports flash_attn_interface, then flash_attn. Where neither imports
    (always on a CPU: flash-attn has no CPU kernels) a stand-in ``flash_attn`` module calls
    PyTorch's SDPA. Returns what the official attention will be."""
    if device.type == "cuda":
        for name in ("flash_attn_interface", "flash_attn"):
            try:
                importlib.import_module(name)
                return name
            except Exception:  # not installed, or built for another torch / GPU
                sys.modules.pop(name, None)
    import torch.nn.functional as F

    def flash_attn_func(q, k, v, causal=False, **_):
        # flash-attn takes and returns [B, S, H, D]; SDPA works on [B, H, S, D].
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
        )
        return out.transpose(1, 2).contiguous()

    shim = types.ModuleType("flash_attn")
    shim.flash_attn_func = flash_attn_func
    sys.modules["flash_attn_interface"] = None  # an ImportError, so layers.py takes the shim
    sys.modules["flash_attn"] = shim
    return "sdpa (flash_attn stand-in)"


class OfficialSide:
    """The checkout's model, ``ACTLossHead`` and sparse sign-SGD, stepped as its pretrain.py
    ``train_batch`` steps them, with torch's AdamW for the CUDA-only AdamATan2, on one batch
    drawn by hrm-fast's sampler."""

    def __init__(self, spec: dict):
        import torch

        from hrm_fast.presets import from_name

        self.device = device = torch.device(spec["device"])
        sys.path.insert(0, spec["checkout"])
        self.attention = install_flash_attn_shim(device)
        module_name, class_name = OFFICIAL[spec["kind"]]
        module = importlib.import_module(module_name)
        if not hasattr(sys.modules.get("models.layers"), "flash_attn_func"):
            self.attention = "its own (no flash-attn import)"  # TRM's layers.py calls SDPA
        if not hasattr(module, class_name):
            raise ImportError(f"{module.__file__}: no class {class_name}")
        model_cls = getattr(module, class_name)
        loss_head_cls = importlib.import_module("models.losses").ACTLossHead
        sign_sgd_cls = importlib.import_module(
            "models.sparse_embedding"
        ).CastedSparseEmbeddingSignSGD_Distributed

        cfg = from_name(spec["preset"])
        m, t = cfg.model, cfg.train
        self.batch_size = spec["batch_size"]
        self.config = dict(
            batch_size=self.batch_size, seq_len=spec["seq_len"],
            puzzle_emb_ndim=m.puzzle_emb_ndim, num_puzzle_identifiers=spec["num_puzzle_ids"],
            vocab_size=m.vocab_size, H_cycles=m.H_cycles, L_cycles=m.L_cycles,
            H_layers=m.H_layers, L_layers=m.L_layers, hidden_size=m.hidden_size,
            expansion=m.expansion, num_heads=m.num_heads, pos_encodings=m.pos_encodings,
            rms_norm_eps=m.rms_norm_eps, rope_theta=m.rope_theta,
            halt_max_steps=m.halt_max_steps, halt_exploration_prob=m.halt_exploration_prob,
            forward_dtype=FORWARD_DTYPE[spec["dtype"]], causal=False,
        )  # fmt: skip
        if spec["kind"] == "trm":
            self.config.update(mlp_t=m.mlp_t, puzzle_emb_len=m.puzzle_emb_len,
                               no_ACT_continue=True)  # fmt: skip
        batch = torch.load(spec["batch_file"])
        self.batch = {k: v.to(device) for k, v in batch.items()}

        torch.manual_seed(t.seed)
        with torch.device(device):  # as pretrain.py builds it
            model = model_cls(dict(self.config))
            self.head = loss_head_cls(model, loss_type=LOSS_TYPE)
        self.head.train()
        self.compiled = bool(spec.get("compile"))
        # pretrain.py compiles the loss head (dynamic=False) unless DISABLE_COMPILE is set; the
        # optimisers keep the uncompiled module's parameters, which are the same tensors.
        self.forward = torch.compile(self.head, dynamic=False) if self.compiled else self.head
        self.optimizers = []
        if m.puzzle_emb_ndim > 0:
            self.optimizers.append(sign_sgd_cls(
                self.head.model.puzzle_emb.buffers(), world_size=1, lr=t.puzzle_emb_lr,
                weight_decay=t.puzzle_emb_weight_decay,
            ))  # fmt: skip
        adamw = dict(lr=t.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2))
        if device.type == "cuda":
            adamw["fused"] = True  # AdamATan2, which it stands in for, is one fused CUDA kernel
        self.optimizers.append(torch.optim.AdamW(self.head.parameters(), **adamw))
        self.ema = None
        if t.ema:  # TRM's pretrain.py updates its EMAHelper after every batch
            try:
                ema_cls = importlib.import_module("models.ema").EMAHelper
            except ImportError:
                ema_cls = None  # HRM's checkout has none: the info says so
            if ema_cls is not None:
                self.ema = ema_cls(mu=t.ema_rate)
                self.ema.register(self.head)
        with torch.device(device):
            self.carry = self.head.initial_carry(self.batch)
        self.loss = float("nan")

    def info(self) -> dict:
        import torch

        params = sum(p.numel() for p in self.head.parameters())
        return {
            "side": "official", "device": str(self.device), "attention": self.attention,
            "dtype": str(getattr(torch, self.config["forward_dtype"])),
            "optimizer": "adamw" + (" (fused)" if self.device.type == "cuda" else ""),
            "ce": LOSS_TYPE, "ema": self.ema is not None, "batch_size": self.batch_size,
            "parameters": params, "config": self.config, "compile": self.compiled,
        }  # fmt: skip

    def step(self) -> None:
        import torch

        self.carry, loss, metrics, _, _ = self.forward(
            carry=self.carry, batch=self.batch, return_keys=[]
        )
        ((1 / self.batch_size) * loss).backward()
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad()
        if metrics:  # pretrain.py reads the metrics back every step
            torch.stack([metrics[k] for k in sorted(metrics)]).cpu()
        if self.ema is not None:
            self.ema.update(self.head)
        self.loss = loss.detach()

    def finish(self) -> dict:
        loss = float(self.loss)
        return {"loss": loss, "loss_finite": loss == loss and abs(loss) != float("inf")}


# --------------------------------------------------------------------------- the parent's handle


class Worker:
    """A side's process, started now: JSON lines on its stdout, its stderr kept in ``log``.
    A failure it reports (or its death) raises ``SideFailed`` with one line."""

    def __init__(self, name: str, spec: dict, log: Path):
        self.name, self.log = name, Path(log)
        cmd = [sys.executable, "-m", "hrm_fast.bench_worker", json.dumps(spec)]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                bufsize=1,
            )  # fmt: skip

    def _reply(self, key: str):
        line = self.proc.stdout.readline()
        try:
            msg = json.loads(line) if line.strip() else {}
        except ValueError:
            msg = {}
        if "error" in msg:
            self.proc.wait()
            if msg.get("exit_code") not in (None, 1):  # bad input on that side: its own code
                err = UserError(f"{self.name} side: {msg['error']}")
                err.exit_code = msg["exit_code"]
                raise err
            raise SideFailed(f"{self.name} side failed: {msg['error']}")
        if key not in msg:
            code = self.proc.wait()
            raise SideFailed(f"{self.name} side exited ({code}) without a result: "
                             f"{self._last_log_line()}")  # fmt: skip
        return msg[key]

    def _last_log_line(self) -> str:
        try:
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            lines = []
        return lines[-1].strip() if lines else "no message"

    def ready(self) -> dict:
        """The side's description, once it is built."""
        return self._reply("ready")

    def step(self) -> float:
        """One step; the seconds it took, timed in the side's process."""
        return self._ask("step", "step_s")

    def finish(self) -> dict:
        """Its loss and peak memory; the process then exits."""
        return self._ask("finish", "finish")

    def _ask(self, cmd: str, key: str):
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died; _reply says how
        return self._reply(key)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- main


def serve(spec: dict, proto: Protocol) -> None:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    side = OursSide(spec) if spec["side"] == "ours" else OfficialSide(spec)
    proto.send(ready={**side.info(), "threads": torch.get_num_threads()})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            sync(side.device)
            t0 = time.perf_counter()
            side.step()
            sync(side.device)
            proto.send(step_s=time.perf_counter() - t0)
        elif cmd == "finish":
            proto.send(finish={**side.finish(), **peak_memory(side.device)})
            return


def main() -> int:
    proto = Protocol()
    try:
        serve(json.loads(sys.argv[1]), proto)
    except BaseException as e:  # noqa: BLE001 - the parent prints it as one line
        traceback.print_exc()  # to stderr: the parent's log of this side
        proto.send(error=one_line(e), exit_code=getattr(e, "exit_code", 1))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
