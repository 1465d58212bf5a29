"""Sampling defaults chosen on held-out rows at the end of train-prior, recorded, and used."""

from __future__ import annotations

import dataclasses
import json

import torch

import numpy as np

from vqgpt.prior import PriorSpec, load_prior, load_token_dataset, train_prior, write_token_dataset
from vqgpt.prior.selection import (FALLBACK_SAMPLING, CodeJudge, SelectionConfig, _grids, choose, frechet_distance,
                                   halfway_steps, select_sampling, settle_the_edge)

from test_prior_train import MODEL, TRAIN, tokens


def test_code_judge_learns_separable_classes():
    spec = PriorSpec(16, (3, 3), ("a", "b", "c"))
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (90,), generator=g)
    codes = (labels[:, None] * 4 + torch.randint(0, 4, (90, 9), generator=g)) % 16
    judge = CodeJudge.fit(codes[:60], labels[:60], spec)
    assert judge.accuracy(codes[60:], labels[60:]) > 0.95
    assert judge.accuracy(codes[60:], (labels[60:] + 1) % 3) < 0.05


def test_train_prior_records_the_chosen_settings_and_sample_uses_them(tmp_path):
    tok = tokens(tmp_path / "tok")
    cfg = dataclasses.replace(TRAIN, max_steps=30, eval_every=10, select_sampling=True, selection_samples=60)
    seen = []

    def features(codes):  # what the pipeline passes is decoded pixels; any grid → vector map will do here
        seen.append(codes.shape)
        return torch.nn.functional.one_hot(codes.flatten(1), 16).float().flatten(1)

    train_prior(dataclasses.replace(MODEL, dropout=0.0), cfg, tok, tmp_path / "out", grid_features=features)
    record = json.loads((tmp_path / "out" / "vqgpt_prior.json").read_text())["sampling"]
    grid = SelectionConfig()
    halfway = [tuple(key) for key in record["halfway"]]  # rule 5's settings between two of the grid's
    assert all(g in grid.guidances or t in grid.temperatures for g, t in halfway)
    assert (record["guidance"], record["temperature"]) in {(g, t) for g in grid.guidances for t in grid.temperatures} | set(halfway)
    assert len(record["candidates"]) == len(grid.guidances) * len(grid.temperatures) + len(halfway)
    assert all(shape[1:] == (3, 3) for shape in seen)  # features see (B, h, w) grids
    chosen = next(c for c in record["candidates"]
                  if (c["guidance"], c["temperature"]) == (record["guidance"], record["temperature"]))
    plain = next(c for c in record["candidates"] if (c["guidance"], c["temperature"]) == (1.0, 1.0))
    allowed = [c for c in record["candidates"] if c["variety"] >= grid.min_variety
               and c["near_copies"] <= grid.max_near_copies
               and c["fd_ratio"] <= (1 + grid.max_fd_increase) * plain["fd_ratio"]]
    assert record["fd_reference"] > 0 and all(c["fd_ratio"] > 0 for c in record["candidates"])
    assert chosen == choose(record["candidates"], grid, record["samples_per_candidate"]) and chosen in allowed
    # plain sampling, the bound's anchor, drew anchor_rounds rounds; the others 1 to max_rounds
    assert plain["samples"] == grid.anchor_rounds * record["samples_per_candidate"] and record["fd_noise"] > 0
    assert all(c["samples"] % record["samples_per_candidate"] == 0
               and c["samples"] <= grid.max_rounds * record["samples_per_candidate"] for c in record["candidates"])
    assert record["judge_accuracy"] > 0.9  # the token data's classes are easy to tell apart

    _, spec = load_prior(tmp_path / "out")
    assert spec.sampling == record

    from vqgpt.pipeline.generation import Pipeline
    from vqgpt.pipeline.settings import SampleConfig

    pipe = Pipeline.__new__(Pipeline)  # resolve() reads only the prior's spec
    pipe.spec = spec
    resolved = pipe.resolve(SampleConfig(num=2, class_labels=(0,)))
    assert (resolved.guidance, resolved.temperature) == (record["guidance"], record["temperature"])
    assert pipe.resolve(SampleConfig(num=2)).guidance == 1.0  # unconditional draws sample plainly
    assert pipe.resolve(SampleConfig(num=2, class_labels=(0,), guidance=1.0)).guidance == 1.0  # flags win


def test_augmented_rows_are_told_from_the_images_themselves(tmp_path):
    """The Fréchet reference is made of un-augmented training rows: crops and flips are recognised
    by their source (what tokenize writes: "file#crop3", "file#flip")."""
    codes, labels = np.zeros((4, 2, 2), dtype=np.int64), np.array([0, 1, 0, 1])
    sources = ["a.png", "a.png#crop1", "b.png", "b.png#flip"]
    write_token_dataset(tmp_path / "t", {"train": (codes, labels, sources), "validation": (codes, labels)}, 4, ("x", "y"), "fp")
    grids, read_labels, augmented = _grids(load_token_dataset(tmp_path / "t").train)
    assert grids.shape == (4, 4) and read_labels.tolist() == [0, 1, 0, 1]
    assert augmented.tolist() == [False, True, False, True]


def _candidate(guidance, temperature, accuracy, fd_ratio, variety=1.0, near_copies=0.0):
    return {"guidance": guidance, "temperature": temperature, "accuracy": accuracy, "variety": variety,
            "near_copies": near_copies, "fd_ratio": fd_ratio}


def test_choose_most_accurate_within_the_bounds_and_mildest_among_ties():
    cfg = SelectionConfig()
    # Figures of a digits prior: 96.5 % at guidance 1.5 / T 1 is not a tie with 98.5 % at T 0.7 on 200
    # draws (one standard error is 0.9 points there); T 0.5 reads 100 % but leaves the Fréchet bound.
    digits = [_candidate(1.0, 1.0, 0.775, 1.31), _candidate(1.0, 0.7, 0.92, 1.45), _candidate(1.5, 1.0, 0.965, 0.98),
              _candidate(1.5, 0.7, 0.985, 1.32), _candidate(1.5, 0.5, 1.0, 1.69), _candidate(2.0, 0.7, 0.99, 1.79)]
    assert (choose(digits, cfg, 200)["guidance"], choose(digits, cfg, 200)["temperature"]) == (1.5, 0.7)
    # At 90 % one standard error on 200 draws is 2.1 points: 89 % is a tie, and the one nearer the data wins.
    letters = [_candidate(1.0, 1.0, 0.70, 1.0), _candidate(1.5, 0.7, 0.89, 1.1), _candidate(2.0, 0.5, 0.90, 1.12)]
    assert choose(letters, cfg, 200)["guidance"] == 1.5
    nearer = [_candidate(1.0, 1.0, 0.70, 1.0), _candidate(1.5, 0.7, 0.89, 1.15), _candidate(2.0, 0.5, 0.90, 1.05)]
    assert choose(nearer, cfg, 200)["guidance"] == 2.0
    assert choose(nearer, cfg, 20)["guidance"] == 2.0  # (on 20 draws 80-90 % are all ties)
    # Beyond the Fréchet bound (25 % above plain sampling's) nothing is chosen, however accurate.
    assert choose([*letters, _candidate(2.0, 0.35, 0.99, 1.26)], cfg, 200)["accuracy"] == 0.89
    assert choose([*letters, _candidate(2.0, 0.35, 0.99, 1.24)], cfg, 200)["accuracy"] == 0.99
    # Too little variety or too many near-copies rule a candidate out, however accurate.
    assert choose([*letters, _candidate(2.0, 0.35, 0.99, 1.0, variety=0.7),
                   _candidate(1.0, 0.35, 0.99, 1.0, near_copies=0.2)], cfg, 200)["accuracy"] == 0.89


def test_a_candidate_at_the_bounds_edge_draws_again_until_the_bound_can_tell():
    """A first round that puts the best candidate just past the Fréchet bound by chance: it draws
    again (up to max_rounds) and, its further rounds inside, wins; candidates far from the edge, or
    at it but less accurate than one surely inside, draw nothing more."""
    cfg = SelectionConfig()
    parts = {(1.0, 1.0): [1.10, 1.30, 1.20, 1.15, 1.25, 1.20, 1.12, 1.28, 1.18, 1.22, 1.24, 1.16],  # 4 rounds: bound 1.5
             (1.0, 0.7): [1.20, 1.30, 1.25],  # surely inside
             (1.5, 0.7): [1.50, 1.66, 1.58],  # 1.58: past the bound by less than its noise
             (1.0, 0.5): [1.45, 1.60, 1.52],  # at the edge, but less accurate than (1.0, 0.7)
             (2.0, 0.5): [2.40, 2.60, 2.50]}  # surely outside
    accuracy = {(1.0, 1.0): 0.78, (1.0, 0.7): 0.85, (1.5, 0.7): 0.95, (1.0, 0.5): 0.80, (2.0, 0.5): 0.99}

    def figures(key):
        return {**_candidate(*key, accuracy[key], round(float(np.mean(parts[key])), 4)), "samples": 520 * len(parts[key]) // 3}

    first = {key: figures(key) for key in parts}
    assert (choose(list(first.values()), cfg, 520)["guidance"], choose(list(first.values()), cfg, 520)["temperature"]) == (1.0, 0.7)
    drawn = []

    def draw_again(key):  # its later rounds measure what it is: inside the bound
        drawn.append(key)
        parts[key].extend([1.38, 1.46, 1.42])
        return figures(key)

    candidates = dict(first)
    noise = settle_the_edge(candidates, parts, draw_again, cfg)
    assert 0.04 < noise < 0.1 and drawn == [(1.5, 0.7)] * (cfg.max_rounds - 1)
    chosen = choose(list(candidates.values()), cfg, 520)
    assert (chosen["guidance"], chosen["temperature"], chosen["samples"]) == (1.5, 0.7, 520 * cfg.max_rounds)
    assert settle_the_edge(dict(first), {k: v[:3] for k, v in parts.items()}, draw_again,
                           dataclasses.replace(cfg, max_rounds=1)) > 0 and len(drawn) == cfg.max_rounds - 1


def test_halfway_steps_lie_between_the_winner_and_a_sharper_more_accurate_neighbour_outside_a_limit():
    """Rule 5, on the figures of a digits prior (bound 1.35 × 1.43 = 1.93): the winner guidance 1.5 / T 1
    (93 %) has two sharper neighbours more accurate but past the Fréchet bound (T 0.7: 98 %, guidance 2:
    96.5 %); halfway between are T 0.85 and guidance 1.75. A sharper neighbour that is less accurate, or
    within the limits, or a winner at the grid's sharp end asks for nothing; nor does a setting measured."""
    cfg = SelectionConfig(max_fd_increase=0.35)
    digits = [_candidate(1.0, 1.0, 0.814, 1.43), _candidate(1.0, 0.7, 0.892, 1.51), _candidate(1.5, 1.0, 0.93, 1.51),
              _candidate(1.5, 0.7, 0.98, 1.96), _candidate(2.0, 1.0, 0.965, 2.19), _candidate(2.0, 0.7, 0.99, 2.85),
              _candidate(1.5, 0.5, 0.976, 3.0)]
    winner = choose(digits, cfg, 500)
    assert (winner["guidance"], winner["temperature"]) == (1.5, 1.0)
    assert halfway_steps(digits, winner, cfg, cfg.guidances) == [(1.5, 0.85), (1.75, 1.0)]
    assert halfway_steps(digits, winner, cfg, (1.0, 1.5)) == [(1.5, 0.85)]  # (no guidance beyond 1.5)
    measured = [*digits, _candidate(1.5, 0.85, 0.961, 1.50)]
    assert halfway_steps(measured, winner, cfg, cfg.guidances) == [(1.75, 1.0)]
    assert choose([*measured, _candidate(1.75, 1.0, 0.96, 1.74)], cfg, 500)["temperature"] == 0.85
    # the neighbour outside by too few varied samples counts as outside a limit too
    # (guidance 2 here is outside the bound but less accurate than the winner: nothing between them)
    by_variety = [*digits[:3], _candidate(1.5, 0.7, 0.98, 1.6, variety=0.7), _candidate(2.0, 1.0, 0.92, 2.19)]
    assert halfway_steps(by_variety, winner, cfg, cfg.guidances) == [(1.5, 0.85)]
    # a sharper neighbour as accurate within the noise and inside the limits lost on the Fréchet ratio alone
    tie = [*digits[:3], _candidate(1.5, 0.7, 0.935, 1.6)]
    best = choose(tie, cfg, 500)
    assert (best["temperature"], halfway_steps(tie, best, cfg, cfg.guidances)) == (1.0, [])
    sharp_end = [_candidate(1.0, 1.0, 0.8, 1.0), _candidate(2.0, 0.35, 0.9, 1.1)]
    assert halfway_steps(sharp_end, sharp_end[1], cfg, cfg.guidances) == []


def test_without_classes_or_null_condition_nothing_is_chosen(tmp_path):
    tok = tokens(tmp_path / "tok")
    data = load_token_dataset(tok)
    train_prior(MODEL, dataclasses.replace(TRAIN, select_sampling=False), tok, tmp_path / "out")
    model, _ = load_prior(tmp_path / "out")
    unconditional = PriorSpec(data.spec.codebook_size, data.spec.grid, ())
    record = select_sampling(model, unconditional, data.train, data.validation)
    assert {k: record[k] for k in FALLBACK_SAMPLING} == FALLBACK_SAMPLING and "unconditional" in record["selected_by"]
    no_null = dataclasses.replace(data.spec, label_dropout=0.0)
    record = select_sampling(model, no_null, data.train, data.validation, SelectionConfig(samples=30))
    assert {c["guidance"] for c in record.get("candidates", [])} <= {1.0}


def test_frechet_distance_matches_its_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g).numpy()
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = a + [1.0, 2.0, 0.0]  # same covariance, mean moved by (1, 2, 0): |Δμ|² = 5
    assert abs(frechet_distance(a, shifted) - 5.0) < 1e-6
    wide = a * 2.0  # Σ → 4Σ ≈ 4I: tr Σ + tr 4Σ − 2 tr (2Σ) = tr Σ ≈ 3
    assert abs(frechet_distance(a, wide) - 3.0) < 0.2


def test_frechet_ratio_is_one_for_the_data_and_averages_over_held_out_sized_subsets():
    """Grids from the data's own distribution sit at ~1; samples beyond one held-out-sized subset
    are used (the mean over disjoint subsets), so more samples give a steadier ratio."""
    from vqgpt.prior.selection import FrechetRatio

    spec = PriorSpec(codebook_size=8, grid=(2, 2), class_names=("a", "b"))
    table = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([8.0, 4, 2, 1, 1, 1, 0.5, 0.5])

    def draw(n: int, seed: int) -> torch.Tensor:
        return torch.multinomial(weights, n * 4, replacement=True, generator=torch.Generator().manual_seed(seed)).view(n, 4)

    ratio = FrechetRatio(lambda grids: table[grids].flatten(1), spec, draw(3000, 1), draw(100, 2), dims=8)
    one = [ratio(draw(100, 10 + s)) for s in range(12)]
    eight = [ratio(draw(800, 40 + s)) for s in range(12)]
    assert 0.5 < np.mean(eight) < 2.0
    assert np.std(eight) < 0.6 * np.std(one)
    spread = draw(800, 5)
    spread = torch.where(spread == 0, torch.full_like(spread, 7), spread)  # another distribution: told apart
    assert ratio(spread) > 2 * np.mean(eight)
