"""Length bucketing (`length_bucketing`): batches of similar token length, a seeded and resumable order, less
padding, and the default path untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ctrsink.batches as batches_mod
from ctrsink.batches import SampleDataset, bucketed_order
from ctrsink.config import load_config
from ctrsink.run import family_of
from ctrsink.sampling import load_samples
from ctrsink.train import train

TINY = [
    "train_samples=256",
    "eval_samples=128",
    "epochs=2",
    "num_behaviors=6",
    "batch_size=32",
    "num_threads=1",
]


def test_bucketed_order_is_a_seeded_permutation_of_sorted_batches() -> None:
    lengths = np.random.default_rng(0).integers(5, 200, size=1010)

    def order(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return bucketed_order(rng.permutation(len(lengths)), lengths, 32, rng, mega_batches=4)

    a = order(1)
    assert sorted(a.tolist()) == list(range(len(lengths)))  # every sample once
    assert np.array_equal(a, order(1))  # same seed, same order: what a resumed epoch relies on
    assert not np.array_equal(a, order(2))
    full = a[: len(a) // 32 * 32].reshape(-1, 32)
    assert all((np.diff(lengths[b]) >= 0).all() for b in full)  # each batch cut from a sorted chunk
    # batches are not simply in chunk order: the batch order is shuffled
    starts = lengths[full[:, 0]]
    assert not (np.diff(starts[:4]) >= 0).all() or not (np.diff(starts[4:8]) >= 0).all()
    assert len(a) - len(full) * 32 == 1010 % 32  # the short batch last (the loader cuts every 32 rows)


@pytest.fixture(scope="module")
def measured(sample_data_dir: Path) -> tuple:
    """The sample data's training split, measured by the default config's batcher."""
    cfg = load_config(None, ["num_behaviors=20"])
    samples = load_samples(sample_data_dir, cfg)
    built = family_of(cfg).build(cfg, samples.items, samples.history_fields, samples.frames["train"])
    ds = SampleDataset(samples.frames["train"], {})
    assert ds.measure(built.batcher)
    return ds, built.batcher, cfg


def test_lengths_are_the_collated_lengths(measured: tuple) -> None:
    ds, batcher, _ = measured
    rows = ds.rows[:40]
    batch = batcher(rows)
    collated = np.stack([batch["fields"][f]["attention_mask"].sum(1).numpy() for f in batch["fields"]], 1)
    assert np.array_equal(ds.lengths[:40], collated)
    assert len(set(collated.sum(1).tolist())) > 10  # lengths vary: there is padding to save


def padded_tokens(ds: SampleDataset, order: np.ndarray, batch_size: int) -> int:
    """Tokens the model sees when the batcher pads each field to its batch's longest row."""
    per_field, total = ds.lengths, 0
    for start in range(0, len(order), batch_size):
        block = per_field[order[start : start + batch_size]]
        total += int(block.max(axis=0).sum()) * len(block)
    return total


def test_bucketing_cuts_padding_on_the_sample_data(measured: tuple) -> None:
    ds, _, cfg = measured
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(ds))
    plain = padded_tokens(ds, perm, cfg.batch_size)
    bucketed = padded_tokens(ds, ds.bucketed(perm, cfg.batch_size, rng), cfg.batch_size)
    real = int(ds.lengths.sum())
    assert bucketed < plain
    # measured: padding is 151% of the real tokens unbucketed, 37% bucketed
    assert bucketed - real < 0.5 * (plain - real)
    # evaluation: longest first leaves less padding than the stored order
    ds.sort_by_length()
    assert padded_tokens(ds, ds.order, cfg.eval_batch_size) < padded_tokens(ds, np.arange(len(ds)), 128)


def record_orders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, np.ndarray]]:
    """Every order a SampleDataset is given, with the dataset's size."""
    seen: list[tuple[int, np.ndarray]] = []
    real = batches_mod.SampleDataset.set_order

    def spy(self: SampleDataset, order: np.ndarray) -> None:
        seen.append((len(self), np.asarray(order).copy()))
        real(self, order)

    monkeypatch.setattr(batches_mod.SampleDataset, "set_order", spy)
    return seen


def test_default_path_keeps_the_plain_shuffle(
    sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    seen = record_orders(monkeypatch)
    cfg = load_config(None, TINY)
    assert cfg.length_bucketing is False
    train(sample_data_dir, cfg, tmp_path / "run")
    # only the training set is reordered, once per epoch, by exactly the seeded permutation
    assert [len(o) for _, o in seen] == [256, 256]
    for epoch, (_, order) in enumerate(seen):
        assert np.array_equal(order, np.random.default_rng(cfg.seed + epoch).permutation(256))


def test_bucketed_run_trains_with_a_resumable_order(
    sample_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    seen = record_orders(monkeypatch)
    cfg = load_config(None, [*TINY, "length_bucketing=true"])
    final = train(sample_data_dir, cfg, tmp_path / "run")
    assert 0 <= final["test"]["auc"] <= 1 and final["test"]["n"] == 128
    evals, epochs = [o for n, o in seen if n == 128], [o for n, o in seen if n == 256]
    assert len(evals) == 2 and len(epochs) == 2  # valid and test sorted once; training reordered per epoch
    assert sorted(epochs[0].tolist()) == sorted(epochs[1].tolist()) == list(range(256))
    assert not np.array_equal(epochs[0], epochs[1])
    # the order is a function of (seed, epoch, lengths): a resumed run recomputes the same one
    ds = SampleDataset(load_samples(sample_data_dir, cfg).frames["train"], {})
    ds.measure(family_of(cfg).load(cfg, *_items_fields(sample_data_dir, cfg), tmp_path / "run").batcher)
    for epoch, order in enumerate(epochs):
        rng = np.random.default_rng(cfg.seed + epoch)
        assert np.array_equal(order, ds.bucketed(rng.permutation(256), cfg.batch_size, rng))
    # every test sample predicted once, whatever the evaluation order
    pred = pd.read_parquet(tmp_path / "run" / "predictions_test.parquet")
    test_ids = load_samples(sample_data_dir, cfg).frames["test"]["sample_id"]
    assert sorted(pred["sample_id"]) == sorted(test_ids)


def _items_fields(data_dir: Path, cfg) -> tuple:
    samples = load_samples(data_dir, cfg)
    return samples.items, samples.history_fields


def test_rows_without_token_lengths_keep_the_plain_order(measured: tuple) -> None:
    """ID rows (DIN, SparseCTR-lite, ...) collate to a fixed width: their batcher has no `lengths`."""
    ds = SampleDataset(pd.DataFrame(measured[0].rows[:10]), {})
    assert not ds.measure(lambda rows: rows)  # a batcher without `lengths`
    perm = np.random.default_rng(0).permutation(10)
    assert ds.bucketed(perm, 4, np.random.default_rng(0)) is perm
