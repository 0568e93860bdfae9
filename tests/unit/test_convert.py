"""Official hrm_act_v1 checkpoints: our model must reproduce the official forward exactly."""

import pytest
import torch

from hrm_fast import checkpoint
from hrm_fast.config import ModelConfig
from hrm_fast.convert import (
    convert_to_checkpoint,
    infer_model_config,
    load_official_state_dict,
    to_official_state_dict,
)
from hrm_fast.errors import UserError
from tests.support.official_hrm import OfficialConfig, OfficialHRM, official_state_dict
from tests.support.parity import assert_close, assert_official_train_grads_match

SEQ = 25  # a 5x5 canvas: small and odd
N_IDS = 7

# hidden, heads, H_layers, L_layers, H_cycles, L_cycles, puzzle_emb_ndim, expansion
SHAPE_A = (32, 2, 2, 1, 2, 3, 48, 2.0)  # 2 puzzle tokens, the second one padded
SHAPE_B = (48, 3, 1, 2, 1, 2, 0, 4.0)  # no puzzle embedding
SHAPES = [pytest.param(SHAPE_A, id="h32-pe48-pad"), pytest.param(SHAPE_B, id="h48-nope")]


# Per forward dtype (atol, rtol). fp64 shows the same maths to ~1e-12. fp32 differs only by
# association order (we add z_L + z_H + x, the official code z_L + (z_H + x)), which grows over
# cycles and ACT steps and depends on the CPU's matmul kernels: max 2.3e-4 on an AVX-512 EPYC,
# under 1e-4 on the machine that first ran it. A wrong op or weight is off by O(0.1).
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (5e-4, 5e-4)}


def _official(
    hidden,
    heads,
    h_layers,
    l_layers,
    h_cycles,
    l_cycles,
    pe_ndim,
    expansion,
    batch=5,
    dtype=torch.float32,
):
    torch.manual_seed(0)
    cfg = OfficialConfig(
        batch_size=batch,
        seq_len=SEQ,
        num_puzzle_identifiers=N_IDS,
        vocab_size=12,
        H_cycles=h_cycles,
        L_cycles=l_cycles,
        H_layers=h_layers,
        L_layers=l_layers,
        hidden_size=hidden,
        expansion=expansion,
        num_heads=heads,
        halt_max_steps=4,
        halt_exploration_prob=0.5,
        puzzle_emb_ndim=pe_ndim,
        forward_dtype=str(dtype).removeprefix("torch."),
    )
    model = OfficialHRM(cfg)
    with torch.no_grad():  # the official init zeroes these; make them matter
        model.inner.q_head.weight.normal_(0, 0.5)
        model.inner.q_head.bias.normal_(0, 1)
        if pe_ndim:
            model.inner.puzzle_emb.weights.normal_(0, 1)
        # The init states live in the forward dtype (bf16 officially); ours are fp32 masters,
        # so an fp64 run must start from fp32-representable ones.
        for buf in (model.inner.H_init, model.inner.L_init):
            buf.copy_(buf.float())
    return model.eval(), cfg


def _overrides(cfg: OfficialConfig) -> dict:
    return dict(
        num_heads=cfg.num_heads,
        H_cycles=cfg.H_cycles,
        L_cycles=cfg.L_cycles,
        halt_max_steps=cfg.halt_max_steps,
        halt_exploration_prob=cfg.halt_exploration_prob,
    )


def _batch(b, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, 12, (b, SEQ), generator=g, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, N_IDS, (b,), generator=g, dtype=torch.int32),
    }


def _compare_outputs(ours, theirs, step, tol):
    assert_close(ours["logits"], theirs["logits"], *tol, f"logits step {step}")
    for k in ("q_halt_logits", "q_continue_logits", "target_q_continue"):
        assert (k in ours) == (k in theirs), k
        if k in theirs:
            assert_close(ours[k], theirs[k], *tol, f"{k} step {step}")


def _run_pair(ours, theirs, n_steps=3, b=5, tol=TOL[torch.float32]):
    """Drive both through ACT steps with a mixed halted mask mid-way (exercises reset_carry)."""
    batches = [_batch(b, s) for s in range(n_steps)]
    c_o, c_t = ours.initial_carry(batches[0]), theirs.initial_carry(batches[0])
    for step, batch in enumerate(batches):
        if step == 1:  # keep examples 1 and 3 running, replace the rest
            mask = torch.tensor([True, False, True, False, True][:b])
            c_o.halted, c_t.halted = mask.clone(), mask.clone()
        torch.manual_seed(100 + step)  # same exploration draws in training mode
        c_o, out_o = ours(c_o, batch)
        torch.manual_seed(100 + step)
        c_t, out_t = theirs(c_t, batch)
        _compare_outputs(out_o, out_t, step, tol)
        assert_close(c_o.inner.z_H, c_t.inner_carry.z_H, *tol, f"z_H step {step}")
        assert_close(c_o.inner.z_L, c_t.inner_carry.z_L, *tol, f"z_L step {step}")
        assert torch.equal(c_o.steps, c_t.steps) and torch.equal(c_o.halted, c_t.halted)
    # The logits must actually depend on the step/input, or parity would be vacuous.
    assert out_o["logits"].std() > 1e-2 and out_o["q_halt_logits"].std() > 1e-2
    return out_o, out_t


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("saved_dtype", [torch.float32, torch.bfloat16], ids=["saved32", "saved16"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fwd64", "fwd32"])
def test_official_parity_eval(shape, saved_dtype, dtype):
    theirs, cfg = _official(*shape, dtype=dtype)
    sd = {k: v.to(saved_dtype) for k, v in official_state_dict(theirs).items()}
    assert all(k.startswith("_orig_mod.model.inner.") for k in sd)
    if saved_dtype != torch.float32:  # both sides must see the same (rounded) weights
        theirs.load_state_dict({k.removeprefix("_orig_mod.model."): v for k, v in sd.items()})
    ours = load_official_state_dict(sd, seq_len=SEQ, forward_dtype=dtype, **_overrides(cfg))
    assert not ours.training
    assert all(
        v.dtype == torch.float32 for v in ours.state_dict().values() if v.is_floating_point()
    )
    m = ours.cfg
    assert (m.hidden_size, m.num_heads, m.H_layers, m.L_layers) == shape[:4]
    assert (m.H_cycles, m.L_cycles, m.puzzle_emb_ndim) == shape[4:7]
    assert m.intermediate_size == theirs.inner.H_level.layers[0].mlp.down_proj.weight.shape[1]
    with torch.no_grad():
        _run_pair(ours, theirs, tol=TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_official_parity_train_step_and_grads(shape):
    """Training mode: exploration, target Q and the 1-step gradient all match."""
    f64 = torch.float64
    theirs, cfg = _official(*shape, batch=5, dtype=f64)
    ours = load_official_state_dict(
        official_state_dict(theirs), seq_len=SEQ, batch_size=5, forward_dtype=f64, **_overrides(cfg)
    )
    ours.train(), theirs.train()
    out_o, out_t = _run_pair(ours, theirs, n_steps=2, tol=TOL[f64])
    assert_official_train_grads_match(ours, theirs, out_o, out_t)


def test_infer_defaults_and_prefixes():
    theirs, _ = _official(*SHAPE_A)
    sd = {
        "model." + k.removeprefix("_orig_mod.model."): v
        for k, v in official_state_dict(theirs).items()
    }
    cfg = infer_model_config(sd, num_heads=None)  # None = not given (CLI flags left unset)
    assert (cfg.num_heads, cfg.H_cycles, cfg.L_cycles, cfg.halt_max_steps) == (8, 2, 2, 16)
    assert cfg.vocab_size == 12 and cfg.puzzle_emb_ndim == 48 and cfg.puzzle_emb_len == 2


def test_expansion_inferred_from_width():
    torch.manual_seed(0)
    # hidden 512: 4.0 -> 1536 (the ARC config); 1024 needs expansion != 4
    for inter in (1536, 1024):
        sd = {"inner.embed_tokens.embedding_weight": torch.zeros(12, 512)}
        sd["inner.H_level.layers.0.mlp.gate_up_proj.weight"] = torch.zeros(2 * inter, 512)
        sd["inner.L_level.layers.0.mlp.gate_up_proj.weight"] = torch.zeros(2 * inter, 512)
        cfg = infer_model_config(sd)
        assert cfg.intermediate_size == inter
        assert cfg.expansion == 4.0 if inter == 1536 else cfg.expansion != 4.0


def _sd_fp32():
    theirs, cfg = _official(*SHAPE_A)
    return official_state_dict(theirs), cfg


P = "_orig_mod.model."


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda sd: sd.pop(P + "inner.lm_head.weight"), "inner.lm_head.weight"),
        (lambda sd: sd.pop(P + "inner.H_init"), "inner.H_init"),
        (lambda sd: sd.pop(P + "inner.q_head.bias"), "inner.q_head.bias"),
        (
            lambda sd: sd.pop(P + "inner.H_level.layers.0.self_attn.o_proj.weight"),
            "inner.H_level.layers.0.self_attn.o_proj.weight",
        ),
        (
            lambda sd: sd.__setitem__(P + "inner.lm_head.weight", torch.zeros(11, 32)),
            "inner.lm_head.weight",
        ),
        (
            lambda sd: sd.__setitem__(
                P + "inner.L_level.layers.0.mlp.down_proj.weight", torch.zeros(32, 200)
            ),
            "inner.L_level.layers.0.mlp.down_proj.weight",
        ),
        (lambda sd: sd.__setitem__(P + "inner.extra.weight", torch.zeros(3)), "inner.extra.weight"),
        (
            lambda sd: sd.__setitem__(P + "inner.embed_pos.embedding_weight", torch.zeros(27, 32)),
            "inner.embed_pos.embedding_weight.*RoPE only",
        ),
        (
            lambda sd: sd.__setitem__(P + "inner.q_head.weight", torch.full((2, 32), float("nan"))),
            "inner.q_head.weight",
        ),
        (
            lambda sd: sd.__setitem__(P + "inner.H_init", torch.zeros(32, dtype=torch.int64)),
            "inner.H_init",
        ),
    ],
    ids=[
        "missing-lm_head",
        "missing-H_init",
        "missing-bias",
        "missing-layer",
        "shape-lm_head",
        "shape-down",
        "unexpected",
        "learned-pos",
        "nan",
        "int-dtype",
    ],
)
def test_bad_state_dict_names_key(edit, key):
    sd, cfg = _sd_fp32()
    edit(sd)
    with pytest.raises(UserError, match=key.replace(".", r"\.").replace(r"\.*", ".*")) as e:
        load_official_state_dict(sd, seq_len=SEQ, num_heads=2)
    assert "\n" not in str(e.value)


def test_bad_overrides():
    sd, _ = _sd_fp32()
    with pytest.raises(UserError, match="hidden-size"):
        load_official_state_dict(sd, hidden_size=64, num_heads=2)
    with pytest.raises(UserError, match="num-heads 3"):
        load_official_state_dict(sd, num_heads=3)
    with pytest.raises(UserError, match="nonsense"):
        infer_model_config(sd, nonsense=1)
    with pytest.raises(UserError, match="expansion"):
        infer_model_config(sd, num_heads=2, expansion=20.0)  # width 512 != 256
    with pytest.raises(UserError, match="missing key 'inner.embed_tokens"):
        infer_model_config({P + "inner.lm_head.weight": torch.zeros(12, 32)})


def test_model_cfg_shapes_checked():
    sd, _ = _sd_fp32()
    wrong = ModelConfig(hidden_size=32, num_heads=2, H_layers=1, L_layers=1, puzzle_emb_ndim=48)
    with pytest.raises(UserError, match=r"unexpected key 'inner\.H_level\.layers\.1\."):
        load_official_state_dict(sd, wrong, seq_len=SEQ)


def test_round_trip(tmp_path):
    sd, cfg = _sd_fp32()
    ours = load_official_state_dict(sd, seq_len=SEQ, **_overrides(cfg))
    back = to_official_state_dict(ours, init_dtype=None)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # Default: as the official trainer saves (bf16 init buffers), and loadable there strictly.
    official = to_official_state_dict(ours)
    assert official[P + "inner.H_init"].dtype == torch.bfloat16
    assert official[P + "inner.lm_head.weight"].dtype == torch.float32
    theirs, _ = _official(*SHAPE_A)
    theirs.load_state_dict({k.removeprefix(P): v for k, v in official.items()}, strict=True)
    # Through a file, like the CLI.
    torch.save(official, tmp_path / "official.pt")
    again = load_official_state_dict(tmp_path / "official.pt", seq_len=SEQ, **_overrides(cfg))
    for k, v in again.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k].to(official[P + k].dtype).float()), k


def test_convert_to_checkpoint(tmp_path):
    theirs, cfg = _official(*SHAPE_A)
    torch.save(official_state_dict(theirs), tmp_path / "official.pt")
    path = convert_to_checkpoint(
        tmp_path / "official.pt", tmp_path / "run", seq_len=SEQ, **_overrides(cfg)
    )
    assert path == checkpoint.checkpoint_path(tmp_path / "run", 0) and path.exists()
    payload = checkpoint.load(tmp_path / "run")
    assert payload["step"] == 0 and payload["optimizer"] is None and payload["carry"] is None
    assert payload["dataset"]["num_puzzle_ids"] == N_IDS
    model, run_cfg, _ = checkpoint.model_from_checkpoint(tmp_path / "run")
    assert run_cfg.seq_len == SEQ and run_cfg.model.L_cycles == cfg.L_cycles
    with torch.no_grad():
        _run_pair(model, theirs, n_steps=2)
    with pytest.raises(UserError, match="square"):
        convert_to_checkpoint(tmp_path / "official.pt", tmp_path / "run2", seq_len=24, num_heads=2)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        convert_to_checkpoint(tmp_path / "junk.pt", tmp_path / "run3")
