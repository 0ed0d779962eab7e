"""Auto-annotation: confidences, thresholds, the store, the dataset wrapper, teachers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from taskbalance.data import MultiTaskDataset, load_benchmark
from taskbalance.experiments.annotate import (
    PseudoLabels,
    PseudoLabelStore,
    WithPseudoLabels,
    annotate,
    predict_pseudo_labels,
    with_pseudo_labels,
)
from taskbalance.tasks import classification_task, depth_task, normal_task, segmentation_task

TINY = {"base": "tiny", "train": 24, "val": 8, "test": 8}


class Echo(nn.Module):
    """A 'teacher' whose prediction of ``task`` is its input (known logits / maps)."""

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task

    def forward(self, x):
        return {self.task: x}


def _cls_dataset() -> MultiTaskDataset:
    # inputs ARE the teacher's logits; confidence = max softmax
    logits = torch.tensor(
        [[5.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 6.0], [0.2, 0.0, 0.0], [0.0, 4.0, 0.0]]
    )
    targets = {"a": torch.tensor([0, 1, 2, 0, 1])}
    masks = {"a": torch.tensor([False, False, True, False, False])}
    return MultiTaskDataset(logits, targets, masks)


def test_classification_keeps_confident_unlabelled_only() -> None:
    data = _cls_dataset()
    task = classification_task("a", 3)
    unlabelled = [0, 1, 3, 4]
    out = predict_pseudo_labels(Echo("a"), task, data, unlabelled, threshold=0.9, batch_size=2)
    probs = data.inputs.softmax(1)
    expected = [i for i in unlabelled if float(probs[i].max()) >= 0.9]
    assert out.indices.tolist() == expected == [0, 4]
    assert out.values.tolist() == [0, 1]
    assert torch.allclose(out.confidences, probs[expected].max(1).values)
    assert bool((out.confidences >= 0.9).all())
    assert out.candidates == 4 and out.threshold == 0.9
    assert 2 not in out.indices.tolist()  # a labelled sample is never annotated


def test_segmentation_low_pixels_get_ignore_index() -> None:
    n, c, h, w = 3, 4, 2, 3
    logits = torch.zeros(n, c, h, w)
    logits[:, 1, 0, :] = 8.0  # row 0: confident class 1
    logits[0, 2, 1, 0] = 1.0  # row 1: not confident
    data = MultiTaskDataset(logits, {"s": torch.zeros(n, h, w, dtype=torch.long)})
    task = segmentation_task("s", c)
    out = predict_pseudo_labels(Echo("s"), task, data, [0, 1, 2], threshold=0.8)
    assert out.indices.tolist() == [0, 1, 2]
    values = out.values.long()
    assert bool((values[:, 0] == 1).all())
    assert bool((values[:, 1] == 255).all())
    assert torch.allclose(out.coverage, torch.full((3,), 0.5))
    # nothing confident anywhere -> the sample is dropped
    none = predict_pseudo_labels(Echo("s"), task, data, [0], threshold=0.9999)
    assert len(none) == 0


class NotMirrorSymmetric(nn.Module):
    """Predicts ``x + x[..., :1]``: its mirrored prediction is ``x + x[..., -1:]``."""

    def forward(self, x):
        return {"d": x + x[..., :1]}


def test_depth_flip_agreement() -> None:
    depth = torch.tensor([[[[2.0, 2.0, 3.0, 3.0]]]]).repeat(2, 1, 2, 1)
    depth[1] = 4.0  # first column == last column: both predictions agree exactly
    data = MultiTaskDataset(depth, {"d": torch.zeros_like(depth)})
    teacher, task = NotMirrorSymmetric(), depth_task("d")
    # sample 0: d1 = [4, 4, 5, 5], d2 = [5, 5, 6, 6]; c = 1 - 1 / mean = 0.78, 0.78, 0.82, 0.82
    out = predict_pseudo_labels(teacher, task, data, [0, 1], threshold=0.9)
    assert out.indices.tolist() == [1]
    assert torch.equal(out.values[0], torch.full_like(depth[1], 8.0))
    assert out.confidences.tolist() == [1.0]
    loose = predict_pseudo_labels(teacher, task, data, [0], threshold=0.5)
    expected = (2 * (1 - 1 / 4.5) + 2 * (1 - 1 / 5.5)) / 4
    assert torch.allclose(loose.confidences, torch.tensor([expected]))
    mean = torch.tensor([4.5, 4.5, 5.5, 5.5]).expand(1, 2, 4)
    assert torch.allclose(loose.values[0], mean)  # the mean of both predictions
    mid = predict_pseudo_labels(teacher, task, data, [0], threshold=0.8)
    assert torch.allclose(mid.coverage, torch.tensor([0.5]))  # the 5.5 columns only
    assert bool((mid.values[0][..., :2] == 0).all())  # rejected pixels: invalid depth 0


def test_normals_flip_agreement_negates_x() -> None:
    n = torch.zeros(1, 3, 2, 2)
    n[:, 0] = 0.6  # x component: mirroring flips its sign -> cos = (-0.36 + 0.64) = 0.28
    n[:, 2] = -0.8
    data = MultiTaskDataset(n, {"n": torch.zeros_like(n)})
    task = normal_task("n")
    assert len(predict_pseudo_labels(Echo("n"), task, data, [0], threshold=0.5)) == 0
    out = predict_pseudo_labels(Echo("n"), task, data, [0], threshold=0.2)
    assert torch.allclose(out.confidences, torch.tensor([0.28]), atol=1e-5)
    assert torch.allclose(out.values[0, 2], torch.full((2, 2), -1.0))  # normalised mean


def test_threshold_and_kind_errors() -> None:
    data = _cls_dataset()
    with pytest.raises(ValueError, match="threshold"):
        predict_pseudo_labels(Echo("a"), classification_task("a", 3), data, [0], threshold=1.5)
    from taskbalance.tasks import regression_task

    with pytest.raises(ValueError, match="does not support"):
        predict_pseudo_labels(Echo("a"), regression_task("a"), data, [0], threshold=0.5)


# ------------------------------------------------------------------------------------ store


def _store(n: int = 5) -> PseudoLabelStore:
    entry = PseudoLabels(
        task="a",
        kind="classification",
        indices=torch.tensor([0, 2, 4]),
        values=torch.tensor([2, 2, 1]),
        confidences=torch.tensor([0.95, 0.99, 0.91]),
        coverage=torch.ones(3),
        threshold=0.9,
        rule="max softmax probability",
        candidates=4,
        teacher={"val": {"accuracy": 0.8}},
    )
    return PseudoLabelStore([entry], n, {"benchmark": {"name": "x", "seed": 0}})


def test_store_round_trip(tmp_path) -> None:
    store = _store()
    path = store.save(tmp_path / "pl.pt")
    back = PseudoLabelStore.load(path)
    assert back.tasks == ["a"] and back.num_samples == 5 and back.meta == store.meta
    for field in ("indices", "values", "confidences", "coverage"):
        assert torch.equal(getattr(back["a"], field), getattr(store["a"], field))
    assert back["a"].threshold == 0.9 and back["a"].teacher == {"val": {"accuracy": 0.8}}
    # a directory means its pseudo_labels.pt
    store.save(tmp_path)
    assert PseudoLabelStore.load(tmp_path).tasks == ["a"]
    with pytest.raises(FileNotFoundError, match="annotate"):
        PseudoLabelStore.load(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a taskbalance pseudo-label file"):
        PseudoLabelStore.load(tmp_path / "other.pt")


def test_store_rejects_out_of_range_indices() -> None:
    with pytest.raises(ValueError, match="outside"):
        PseudoLabelStore(_store().labels, 3)


# ------------------------------------------------------------------------------------ wrapper


def test_wrapper_fills_missing_labels_and_never_overwrites_real_ones() -> None:
    data = _cls_dataset()  # only sample 2 carries a real label (2)
    data.targets["a"][2] = 2
    store = _store()  # pseudo-labels for 0, 2 (!) and 4
    store["a"].values[1] = 0  # a pseudo value for the labelled sample 2, which must not win
    wrapped = WithPseudoLabels(data, store)
    masks = [bool(wrapped[i][2]["a"]) for i in range(5)]
    values = [int(wrapped[i][1]["a"]) for i in range(5)]
    assert masks == [True, False, True, False, True]
    assert values[0] == 2 and values[4] == 1
    assert values[2] == 2  # the real label, untouched
    assert wrapped[0][1]["a"].dtype == torch.long
    assert wrapped.pseudo_masks()["a"].tolist() == [True, False, False, False, True]
    assert wrapped.label_fractions()["a"] == pytest.approx(0.6)
    # the inputs are the original ones
    assert torch.equal(wrapped[3][0], data[3][0])
    # confidence filter on top of the stored threshold
    strict = WithPseudoLabels(data, store, min_confidence=0.92)
    assert [bool(strict[i][2]["a"]) for i in range(5)] == [True, False, True, False, False]


def test_wrapper_rejects_other_dataset() -> None:
    with pytest.raises(ValueError, match="samples"):
        WithPseudoLabels(_cls_dataset(), _store(n=7))


def test_training_loader_sees_pseudo_masks() -> None:
    wrapped = WithPseudoLabels(_cls_dataset(), _store())
    batch = next(iter(DataLoader(wrapped, batch_size=5)))
    assert batch[2]["a"].dtype == torch.bool
    assert batch[2]["a"].tolist() == [True, False, True, False, True]
    assert batch[1]["a"].tolist() == [2, 1, 2, 0, 1]


# ------------------------------------------------------------------------------------ teachers


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_benchmark("scenes", size=TINY, cache_dir=cache, labels={"segmentation": 0.25})


def test_annotate_end_to_end(bench, tmp_path) -> None:
    store = annotate(
        bench,
        ["segmentation"],
        teacher_width=8,
        epochs=1,
        steps=1,
        threshold=0.0,
        batch_size=8,
        out_dir=tmp_path,
    )
    real = bench.train.masks["segmentation"]
    entry = store["segmentation"]
    # threshold 0 keeps every pixel of every unlabelled sample, and nothing else
    assert entry.indices.tolist() == torch.nonzero(~real).flatten().tolist()
    assert entry.candidates == int((~real).sum())
    assert bool((entry.coverage == 1).all())
    assert entry.teacher["labelled"] == int(real.sum()) and entry.teacher["width"] == 8
    assert (tmp_path / "pseudo_labels.pt").is_file() and (tmp_path / "annotate.json").is_file()
    loaded = PseudoLabelStore.load(tmp_path)
    assert torch.equal(loaded["segmentation"].values, entry.values)

    wrapped = with_pseudo_labels(bench, loaded)
    assert wrapped.train.label_fractions()["segmentation"] == 1.0
    for i in torch.nonzero(real).flatten().tolist():  # real labels untouched
        assert torch.equal(wrapped.train[i][1]["segmentation"], bench.train[i][1]["segmentation"])
    assert wrapped.val is bench.val

    # a strict threshold keeps only pixels above it (others: ignore index)
    strict = annotate(bench, "segmentation", epochs=1, steps=1, threshold=0.99, batch_size=8)
    values = strict["segmentation"].values.long()
    assert bool(((values == 255) | (values < 6)).all())
    assert len(strict["segmentation"]) <= entry.candidates


def test_teacher_for_a_task_without_labels_is_an_error(bench) -> None:
    masks = {"depth": torch.zeros(len(bench.train), dtype=torch.bool)}
    import copy

    unlabelled = copy.copy(bench)
    unlabelled.train = bench.train.with_masks(masks)
    with pytest.raises(ValueError, match="no labelled training sample"):
        annotate(unlabelled, ["depth"], epochs=1, steps=1)
    with pytest.raises(ValueError, match="unknown task"):
        annotate(bench, ["nope"], epochs=1)
    with pytest.raises(ValueError, match="made for benchmark name"):
        with_pseudo_labels(bench, _store(n=len(bench.train)))


# ------------------------------------------------------------------------ damaged or hostile files
class _WritesMarker:
    """Unpickling this object calls ``Path.touch(marker)``: code run by loading a file."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


def test_pseudo_label_file_with_a_pickle_payload_is_refused(tmp_path) -> None:
    marker = tmp_path / "marker"
    data = _store().to_dict()
    data["meta"] = {"payload": _WritesMarker(marker)}
    torch.save(data, tmp_path / "pl.pt")
    with pytest.raises(ValueError, match="pseudo-label file.*could run code.*annotate"):
        PseudoLabelStore.load(tmp_path / "pl.pt")
    assert not marker.exists()


def test_damaged_pseudo_label_files_are_one_line_errors(tmp_path) -> None:
    path = _store().save(tmp_path / "pl.pt")
    good = path.read_bytes()
    data = _store().to_dict()
    del data["tasks"]["a"]["values"]
    torch.save(data, tmp_path / "incomplete.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[bytes(good).find(torch.tensor([0.99]).numpy().tobytes())] ^= 4  # a confidence
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    for name in ("incomplete", "empty", "truncated", "flipped"):
        with pytest.raises(ValueError) as err:
            PseudoLabelStore.load(tmp_path / f"{name}.pt")
        text = str(err.value)
        assert f"{name}.pt" in text and "annotate" in text and "\n" not in text, text


def test_annotate_warns_when_it_keeps_no_pseudo_label(bench) -> None:
    with pytest.warns(RuntimeWarning, match="kept 0 of .*--threshold"):
        store = annotate(bench, "segmentation", epochs=1, steps=1, threshold=1.0, batch_size=8)
    assert len(store["segmentation"]) == 0


def test_annotate_again_continues_its_teachers_and_refuses_other_settings(bench, tmp_path):
    options: dict[str, Any] = {
        "teacher_width": 8, "epochs": 2, "steps": 1, "threshold": 0.0, "batch_size": 8
    }
    first = annotate(bench, ["segmentation"], out_dir=tmp_path, **options)
    stamp = (tmp_path / "teachers" / "segmentation" / "checkpoint.pt").stat().st_mtime_ns
    again = annotate(bench, ["segmentation"], out_dir=tmp_path, **options)
    # the finished teacher is reused, not retrained: same checkpoint, same labels
    assert (tmp_path / "teachers" / "segmentation" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert torch.equal(again["segmentation"].values, first["segmentation"].values)
    with pytest.raises(ValueError, match="lr.*--overwrite"):
        annotate(bench, ["segmentation"], out_dir=tmp_path, **{**options, "lr": 0.1})


def test_annotate_removes_temporary_files_of_a_killed_annotation(bench, tmp_path) -> None:
    stale = tmp_path / ".annotate.json.k1ll3d.tmp"
    stale.write_text("half a summary")
    annotate(bench, "segmentation", epochs=1, steps=1, threshold=0.0, out_dir=tmp_path)
    assert not stale.exists() and (tmp_path / "annotate.json").is_file()
