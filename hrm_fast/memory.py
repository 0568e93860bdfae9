"""Memory a run needs, estimated before anything is allocated, against what the device has.

The estimate is a lower bound (weights, gradients and optimiser state, the puzzle table, the
activations a batch cannot avoid): it refuses sizes that cannot fit, never a run that could.
Refusals are one line naming the flag that dominates and both figures.
"""

from __future__ import annotations

import os

import torch

from hrm_fast.config import ModelConfig, RunConfig
from hrm_fast.errors import UserError

FP32 = 4


def network_params(m: ModelConfig, seq_len: int) -> tuple[int, int]:
    """(layer parameters, token embedding + output head parameters), roughly."""
    h = m.hidden_size
    per_layer = 4 * h * h + 3 * h * m.intermediate_size  # attention + SwiGLU
    if m.mlp_t:  # TRM's sequence-mixing SwiGLU replaces attention
        per_layer += 3 * (seq_len + m.puzzle_emb_len) ** 2
    layers = m.L_layers + (0 if m.arch == "trm" else m.H_layers)
    return layers * per_layer, 2 * m.vocab_size * h


def num_puzzle_ids(model) -> int:
    """Rows of a built model's puzzle table (1 without one)."""
    return model.inner.puzzle_emb.weights.shape[0] if model.cfg.puzzle_emb_ndim > 0 else 1


def _activation_terms(m: ModelConfig, seq_len: int, batch: int, training: bool, flag: str):
    """The carried states, one layer's input and the logits; training keeps a layer's worth for
    the backward pass of the last step. The logits' share is the vocabulary's when it dominates."""
    tokens = batch * (seq_len + m.puzzle_emb_len)
    hidden = 3 * m.hidden_size + (2 * m.hidden_size + m.intermediate_size if training else 0)
    logits = m.vocab_size * (2 if training else 1)
    vocab_flag = f"--vocab-size {m.vocab_size}" if logits > hidden else flag
    return [(tokens * hidden * FP32, flag), (tokens * logits * FP32, vocab_flag)]


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 1e12 else f"{n / 1e12:.1f} TB"


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free memory, else the host's available RAM (None when
    it cannot be read)."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _refuse_if_too_big(terms: list[tuple[int, str]], device: torch.device, what: str) -> None:
    need = sum(n for n, _ in terms)
    have = available_bytes(device)
    if have is None or need <= have:
        return
    biggest, flag = max(terms)
    raise UserError(
        f"{flag}: {what} needs at least {_gb(need)} ({_gb(biggest)} of it from {flag}), "
        f"the {device.type} has {_gb(have)} available"
    )


def _network_terms(cfg: RunConfig, bytes_per_param: int) -> list[tuple[int, str]]:
    m = cfg.model
    layers, embed = network_params(m, cfg.seq_len)
    flag = f"--hidden-size {m.hidden_size}"
    if embed > layers:
        flag = f"--vocab-size {m.vocab_size}"
    elif m.expansion > 8:
        flag = f"--expansion {m.expansion}"
    return [(layers * bytes_per_param + embed * bytes_per_param, flag)]


def check_training_fits(cfg: RunConfig, num_puzzle_ids: int, batch: int, device) -> None:
    """UserError when weights, gradients, optimiser state (fp32: 16 bytes a parameter), the
    puzzle table (weights, gradient rows, sign-SGD state) and one batch's activations cannot fit."""
    m = cfg.model
    table = num_puzzle_ids * m.puzzle_emb_ndim * 2 * FP32
    table_flag = f"--n-aug {cfg.data.n_aug}"
    if m.puzzle_emb_ndim > m.hidden_size * 8:
        table_flag = f"--puzzle-emb-ndim {m.puzzle_emb_ndim}"
    terms = [
        *_network_terms(cfg, 4 * FP32),
        (table, table_flag),
        *_activation_terms(m, cfg.seq_len, batch, True, f"--batch-size {batch}"),
    ]
    _refuse_if_too_big(terms, torch.device(device), "training")


def check_inference_fits(cfg: RunConfig, num_puzzle_ids: int, batch: int, device, flag: str):
    """UserError when the weights, the table and a batch of ``batch`` rows cannot fit; ``flag``
    names what sets the batch (``--batch-size``, ``--pairs``)."""
    m = cfg.model
    terms = [
        *_network_terms(cfg, FP32),
        (num_puzzle_ids * m.puzzle_emb_ndim * FP32, f"--puzzle-emb-ndim {m.puzzle_emb_ndim}"),
        *_activation_terms(m, cfg.seq_len, batch, False, flag),
    ]
    _refuse_if_too_big(terms, torch.device(device), "this command")


def check_probe_inputs_fit(seq_len: int, pairs: int, device, flag: str) -> None:
    """The probe draws every pair's inputs and labels up front (int64, on the host)."""
    inputs = pairs * seq_len * 3 * 8
    _refuse_if_too_big([(inputs, flag)], torch.device("cpu"), "the probe")
    del device
