"""The probe measures where the answer is: a model whose answer follows its input passes on
small grids on a 30x30 canvas (padding no longer dilutes TV), and an input-invariant one still
fails."""

import torch

from hrm_fast.probe import COLOUR0, PAD, answer_cells, probe_input_sensitivity


class EchoModel(torch.nn.Module):
    """Logits that copy the input token (scaled by ``gain``): a stand-in for a model whose
    answer depends on its grid. ``gain`` 0 is input-invariant."""

    def __init__(self, gain: float, vocab: int = 12):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.gain, self.vocab = gain, vocab
        self.cfg = type("Cfg", (), {"halt_max_steps": 1})()

    def initial_carry(self, batch):
        return None

    def forward(self, carry, batch):
        x = batch["inputs"].long()
        logits = torch.nn.functional.one_hot(x, self.vocab).float() * self.gain + self.w
        return carry, {"logits": logits}


def _small_grids(k: int, side: int, canvas: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.full((k, canvas, canvas), PAD, dtype=torch.int32)
    x[:, :side, :side] = torch.randint(COLOUR0, COLOUR0 + 10, (k, side, side), generator=g)
    return x.view(k, -1)


def test_small_grids_on_a_big_canvas_read_like_big_ones():
    a, b = _small_grids(16, 3, 30, 0), _small_grids(16, 3, 30, 1)
    small = probe_input_sensitivity(EchoModel(4.0), a, b, None, min_differ=0.1, min_tv=0.05)
    a, b = _small_grids(16, 30, 30, 0), _small_grids(16, 30, 30, 1)
    full = probe_input_sensitivity(EchoModel(4.0), a, b, None, min_differ=0.1, min_tv=0.05)
    # Over the whole canvas a 3x3 answer would read 9/900 of the full one's TV.
    assert small.passed and small.mean_tv > 0.5 * full.mean_tv
    invariant = probe_input_sensitivity(EchoModel(0.0), a, b, None, min_differ=0.1, min_tv=0.05)
    assert not invariant.passed and invariant.mean_tv == 0 and invariant.frac_differ == 0


def test_answer_cells_are_the_grids_of_either_input_or_the_label():
    a = torch.tensor([[COLOUR0, PAD, PAD, PAD]])
    b = torch.tensor([[PAD, COLOUR0 + 3, PAD, 1]])  # 1 = EOS: not a grid cell
    labels = torch.tensor([[-100, -100, COLOUR0 + 1, PAD]])
    assert answer_cells(a, b).tolist() == [[True, True, False, False]]
    assert answer_cells(a, b, labels).tolist() == [[True, True, True, False]]
