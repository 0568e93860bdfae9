"""Input-sensitivity probe: a fresh model passes; models that ignore their input fail."""

import pytest
import torch
import torch.nn.functional as F

from hrm_fast.errors import UserError
from hrm_fast.model import HRM
from hrm_fast.presets import from_name
from hrm_fast.probe import (
    ProbeReport,
    _pairs,
    probe_input_sensitivity,
    random_canvas_inputs,
    run_probe,
)

CFG = from_name("debug")  # hidden 32, seq_len 64 (canvas 8), 3 ACT steps
T = CFG.train
N_IDS = 6
K = 8


def _fresh(seed=0) -> HRM:
    torch.manual_seed(seed)
    return HRM(CFG.model, CFG.seq_len, N_IDS, T.batch_size)


@pytest.fixture(scope="module")
def fresh():
    return _fresh()


def _copy(model, edit) -> HRM:
    m = HRM(CFG.model, CFG.seq_len, N_IDS, T.batch_size)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        edit(m.inner)
    return m


def _probe(model, source=None, k=K, **kw):
    kw = {"min_differ": T.probe_min_differ, "min_tv": T.probe_min_tv, **kw}
    return run_probe(model, source, k, kw["min_differ"], kw["min_tv"], "cpu", 0)


class FakeSampler:
    """Like DeviceSampler.sample: random canvases, one puzzle id per example, plus labels."""

    def __init__(self, seed=1):
        self.g = torch.Generator().manual_seed(seed)

    def sample(self, batch_size):
        x = random_canvas_inputs(batch_size, 8, self.g)
        ids = torch.randint(0, N_IDS, (batch_size,), generator=self.g, dtype=torch.int32)
        return {"inputs": x, "labels": x.clone(), "puzzle_identifiers": ids}


def test_random_canvas_inputs_are_valid_arc():
    x = random_canvas_inputs(200, 8, torch.Generator().manual_seed(0))
    assert x.dtype == torch.int32 and x.shape == (200, 64)
    assert torch.equal(x, random_canvas_inputs(200, 8, torch.Generator().manual_seed(0)))
    sizes = set()
    for row in x.view(200, 8, 8):
        h = int((row[:, 0] >= 2).sum())  # grid rows: colour in the first column
        w = int((row[0] >= 2).sum())
        assert h >= 1 and w >= 1
        want = torch.zeros(8, 8, dtype=torch.int32)
        want[:h, :w] = row[:h, :w]
        assert (row[:h, :w] >= 2).all() and (row[:h, :w] <= 11).all()
        if h < 8:
            want[h, :w] = 1  # EOS row below
        if w < 8:
            want[:h, w] = 1  # EOS column to the right; the corner stays PAD
        assert torch.equal(row, want), (h, w, row)
        sizes.add((h, w))
    assert len(sizes) > 20  # sizes, including full-canvas ones, really vary
    assert (8, 8) in sizes or any(h == 8 for h, _ in sizes)


def test_fresh_model_passes_default_thresholds(fresh):
    fresh.train()
    r = _probe(fresh, k=T.probe_pairs)
    assert fresh.training  # mode restored
    assert isinstance(r, ProbeReport) and r.passed, r.summary()
    assert r.pairs == T.probe_pairs and r.frac_differ == 1.0 and r.mean_tv > 4 * T.probe_min_tv
    assert (r.min_differ, r.min_tv) == (T.probe_min_differ, T.probe_min_tv)
    d = r.to_dict()
    assert set(d) == {
        "step",
        "pairs",
        "frac_differ",
        "mean_tv",
        "min_differ",
        "min_tv",
        "passed",
        "input_gain",
    }
    assert "PASSED" in r.summary() and "\n" not in r.summary()


def test_input_invariant_model_fails(fresh):
    # Zero token embeddings: no input token can change anything (positions only enter through
    # RoPE, which cannot break the symmetry of identical rows).
    dead = _copy(fresh, lambda inner: inner.embed_tokens.embedding_weight.zero_())
    r = _probe(dead)
    assert not r.passed and r.frac_differ == 0.0 and r.mean_tv < 1e-6, r
    assert "FAILED" in r.summary()


def test_puzzle_id_only_model_fails(fresh):
    """A model that reads only its puzzle embedding fails even on a sampler with distinct ids:
    both members of a pair get the same identifier."""

    def edit(inner):
        inner.embed_tokens.embedding_weight.zero_()
        inner.puzzle_emb.weights.normal_(0, 1)

    r = _probe(_copy(fresh, edit), FakeSampler())
    assert not r.passed and r.frac_differ == 0.0 and r.mean_tv < 1e-6, r


def test_weak_dependence_fails_tv(fresh):
    # Near-uniform outputs: the argmax still follows the input, the distributions barely move.
    flat = _copy(fresh, lambda inner: inner.lm_head.weight.mul_(1e-3))
    r = _probe(flat)
    assert r.frac_differ >= T.probe_min_differ and 0 < r.mean_tv < T.probe_min_tv, r
    assert not r.passed
    # Inputs scaled down 100x against the recurrent state: TV small but non-zero.
    faint = _copy(fresh, lambda inner: inner.embed_tokens.embedding_weight.mul_(1e-2))
    r = _probe(faint, min_differ=0.0)
    assert 1e-5 < r.mean_tv < T.probe_min_tv and not r.passed, r


def test_sources(fresh):
    r = _probe(fresh, FakeSampler())
    assert r.passed and r.pairs == K
    r = _probe(fresh, FakeSampler().sample)  # a plain callable
    assert r.passed and r.pairs == K
    batch = FakeSampler().sample(5)  # a fixed batch: at most 4 pairs from 5 rows
    r = _probe(fresh, batch)
    assert r.passed and r.pairs == 4


def test_pairs_differ_and_share_ids():
    x = random_canvas_inputs(3, 8, torch.Generator().manual_seed(0))
    # Duplicates in the draw are never paired with themselves.
    batch = {"inputs": torch.stack([x[0], x[0], x[0], x[1]]), "puzzle_identifiers": torch.arange(4)}
    a, b, ids, labels = _pairs(lambda n: (batch["inputs"], batch["puzzle_identifiers"], None), 3)
    assert a.shape[0] == 3 and not (a == b).all(-1).any()
    assert torch.equal(ids, torch.arange(3, dtype=torch.int32)) and labels is None
    same = {"inputs": x[:1].repeat(4, 1), "puzzle_identifiers": torch.zeros(4)}
    with pytest.raises(UserError, match="different inputs"):
        _pairs(lambda n: (same["inputs"], same["puzzle_identifiers"], None), 2)


def test_probe_input_sensitivity_direct(fresh):
    g = torch.Generator().manual_seed(3)
    a, b = random_canvas_inputs(K, 8, g), random_canvas_inputs(K, 8, g)
    r = probe_input_sensitivity(fresh, a, b, None, CFG, step=7)
    assert r.passed and r.step == 7 and "step 7" in r.summary()
    r2 = probe_input_sensitivity(fresh, a, b, None, CFG.train, min_tv=0.99)  # TV <= 1 always
    assert not r2.passed and r2.min_tv == 0.99 and r2.mean_tv == pytest.approx(r.mean_tv)
    with pytest.raises(ValueError, match="different"):
        probe_input_sensitivity(fresh, a, a.clone(), None, CFG)


def test_full_act_unroll_and_chunking(fresh):
    calls = []
    orig = fresh.forward

    def spy(carry, batch):
        calls.append(batch["inputs"].shape[0])
        return orig(carry, batch)

    g = torch.Generator().manual_seed(5)
    a, b = random_canvas_inputs(5, 8, g), random_canvas_inputs(5, 8, g)
    ids = torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)
    whole = probe_input_sensitivity(fresh, a, b, ids, CFG)
    fresh.forward = spy
    try:
        parts = probe_input_sensitivity(fresh, a, b, ids, CFG, chunk_pairs=2)
    finally:
        del fresh.forward
    # 3 chunks (2 + 2 + 1 pairs, both members batched), each unrolled halt_max_steps times
    n = CFG.model.halt_max_steps
    assert calls == [4] * n + [4] * n + [2] * n
    assert parts.frac_differ == whole.frac_differ
    assert parts.mean_tv == pytest.approx(whole.mean_tv, abs=1e-6)


def test_input_gain_scores_each_answer_with_its_own_input_against_another(fresh):
    """input_gain = mean over pairs of CE(answer_a | input_b) - CE(answer_a | input_a), softmax
    CE averaged over the labelled cells of each answer; computed by hand here."""
    g = torch.Generator().manual_seed(5)
    a, b = random_canvas_inputs(K, 8, g), random_canvas_inputs(K, 8, g)
    labels = random_canvas_inputs(K, 8, g).long()
    labels[labels == 0] = -100  # PAD is not scored, as in training
    labels[0, :] = -100  # an answer with no labelled cell is left out of the mean
    ids = torch.arange(K, dtype=torch.int32) % N_IDS
    r = probe_input_sensitivity(fresh, a, b, ids, CFG, labels_a=labels)

    fresh.eval()
    with torch.no_grad():
        want = []
        for i in range(1, K):
            ce = []
            for x in (a[i], b[i]):
                batch = {"inputs": x[None], "puzzle_identifiers": ids[i : i + 1]}
                carry = fresh.initial_carry(batch)
                for _ in range(fresh.cfg.halt_max_steps):
                    carry, out = fresh(carry, batch)
                y = labels[i]
                ce.append(F.cross_entropy(out["logits"][0].float()[y >= 0], y[y >= 0]).item())
            want.append(ce[1] - ce[0])
    assert r.input_gain == pytest.approx(sum(want) / len(want), rel=1e-4, abs=1e-6)
    assert "input gain" in r.summary()
    # Without labels (random canvases) there is no gain; with a zeroed head it is exactly 0.
    assert probe_input_sensitivity(fresh, a, b, ids, CFG).input_gain is None
    blind = _copy(fresh, lambda inner: inner.lm_head.weight.zero_())
    assert probe_input_sensitivity(blind, a, b, ids, CFG, labels_a=labels).input_gain == 0.0
