"""Word grounding: position features, referent maps, padding, and that it learns to compare where
two named things are (the relation questions' core) in a few hundred steps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.errors import MmfuseError
from mmfuse.models.classifier import build_classifier
from mmfuse.models.grounding import WordGrounding, grid_position_features


def test_position_features_order_cells_left_to_right_and_top_to_bottom() -> None:
    phi = grid_position_features(16)  # 4 x 4, row-major
    assert phi.shape == (16, WordGrounding.position_dim)
    assert torch.all(phi[:, 0] == 1)
    sin_x, sin_y = phi[:, 1], phi[:, 2]  # sin(pi x / 2), sin(pi y / 2): increasing in x, y on (-1, 1)
    assert torch.all(sin_x.view(4, 4).diff(dim=1) > 0) and torch.all(sin_y.view(4, 4).diff(dim=0) > 0)


def test_position_features_need_a_square_grid() -> None:
    with pytest.raises(MmfuseError, match="square grid"):
        grid_position_features(12)


def test_each_word_has_a_distribution_over_cells() -> None:
    torch.manual_seed(0)
    module = WordGrounding(image_dim=8, text_dim=6, out_dim=10)
    where = module.referents(torch.randn(3, 9, 8), torch.randn(3, 5, 6))
    assert where.shape == (3, 9, 5)
    assert torch.allclose(where.sum(1), torch.ones(3, 5)) and torch.all(where >= 0)


def test_padding_positions_do_not_change_the_output() -> None:
    torch.manual_seed(0)
    module = WordGrounding(image_dim=8, text_dim=6, out_dim=10).eval()
    grid, states = torch.randn(2, 16, 8), torch.randn(2, 4, 6)
    mask = torch.ones(2, 4, dtype=torch.bool)
    padded = torch.cat([states, 100 * torch.randn(2, 3, 6)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    assert torch.allclose(module(grid, states, mask), module(grid, padded, padded_mask), atol=1e-5)
    assert not torch.allclose(module(grid, states, mask), module(grid, padded, torch.ones_like(padded_mask)))


def _relation_batch(gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two coloured cells on a 4 x 4 grid (colours one-hot); the words name the first colour, then
    the second, then "left" or "right" (which, as in a bidirectional encoder's states, every word's
    state carries); label: the answer to "is <first> <left|right> of <second> ?"."""
    colours, cells = 6, 16
    grid = torch.zeros(batch, cells, colours)
    states = torch.zeros(batch, 3, colours + 4)  # word: colour one-hot | slot one-hot (3) | is-right
    labels = torch.zeros(batch, dtype=torch.long)
    for i in range(batch):
        a, b = torch.randperm(colours, generator=gen)[:2].tolist()
        while True:
            ca, cb = torch.randint(cells, (2,), generator=gen).tolist()
            if ca % 4 != cb % 4:  # different columns
                break
        right = bool(torch.randint(2, (1,), generator=gen))
        grid[i, ca, a] = grid[i, cb, b] = 1.0
        states[i, 0, a] = states[i, 1, b] = 1.0
        states[i, [0, 1, 2], [colours, colours + 1, colours + 2]] = 1.0
        states[i, :, colours + 3] = float(right)
        labels[i] = int((ca % 4 < cb % 4) != right)
    return grid, states, labels


@pytest.mark.slow
def test_grounding_learns_to_compare_where_two_named_things_are() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    module = WordGrounding(image_dim=6, text_dim=10, out_dim=32)
    head = nn.Linear(32, 2)
    params = [*module.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    mask = torch.ones(64, 3, dtype=torch.bool)
    for _ in range(400):
        grid, states, labels = _relation_batch(gen, 64)
        loss = nn.functional.cross_entropy(head(module(grid, states, mask)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    grid, states, labels = _relation_batch(gen, 500)
    with torch.no_grad():
        accuracy = (head(module(grid, states, torch.ones(500, 3, dtype=torch.bool))).argmax(1) == labels).float().mean()
    assert accuracy >= 0.95, accuracy


@pytest.mark.parametrize("fusion", ["concat", "attention", "transformer"])
def test_classifier_reads_the_grounding_unless_it_is_turned_off(fusion: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(fusion=fusion, image_size=32, feature_dim=16, embed_dim=8, hidden_dim=12, dropout=0.0)
    model = build_classifier(cfg, vocab_size=11, num_classes=2).eval()
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 11, (2, 5))
    before = model(images, tokens)
    with torch.no_grad():
        model.grounding.role.weight.add_(torch.randn_like(model.grounding.role.weight))  # other roles
    assert not torch.allclose(before, model(images, tokens))
    plain = build_classifier(replace(cfg, grounding=False), vocab_size=11, num_classes=2)
    assert plain.grounding is None and not any(n.startswith("grounding.") for n, _ in plain.named_parameters())
    assert plain(images, tokens).shape == (2, 2)


def test_late_fusion_has_no_grounding() -> None:
    model = build_classifier(ModelConfig(fusion="late", image_size=32, feature_dim=16, hidden_dim=12), 11, 2)
    assert not hasattr(model, "grounding") or model.grounding is None
