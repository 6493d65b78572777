"""AP of image subsets (ap_subsets.py) and the oracle scale choices (oracles.py)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from elastic_lab import bench_eval
from elastic_lab.ap_subsets import SubsetAP, bootstrap_indices
from elastic_lab.data.coco import CocoDetection
from elastic_lab.evaluate import evaluate
from elastic_lab.models.build import ModelOptions, build_model, load_model
from elastic_lab.oracles import ap_optimal, detect_at, loss_optimal
from elastic_lab.scale_loss import scale_optimum
from tests.test_model import TINY

REPO = Path(__file__).resolve().parents[1]
LOSS = {"b_s": 10.24, "b_l": 30.72, "k": 6.0, "empty_target": 0.0}
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_metrics(dataset, results) -> dict[str, float]:
    """The reference: pycocotools run directly on these images and detections."""
    dets = [{"image_id": r["image_id"], "category_id": dataset.label_to_cat_id[int(lab)],
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)}
            for r in results for b, s, lab in zip(r["boxes"].tolist(), r["scores"], r["labels"])]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(dataset.coco, dataset.coco.loadRes(dets), "bbox")
        ev.params.imgIds = [r["image_id"] for r in results]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(max(v, 0.0)) for k, v in zip(KEYS, ev.stats[:6])}


def _dataset(synth_dir, split="val"):
    return CocoDetection(synth_dir / "images" / split,
                         synth_dir / "annotations" / f"instances_{split}.json")


def noisy_detections(dataset, noise: float, seed: int, phi: float = 1.0) -> list[dict]:
    """Ground-truth boxes jittered by ``noise`` (fraction of the side), with a false positive
    and a missed object per image: detections with a non-trivial AP, no model needed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(dataset)):
        _, t = dataset[i]
        h, w = t["orig_size"].tolist()
        cx, cy, bw, bh = (t["boxes"] * torch.tensor([w, h, w, h])).unbind(-1)
        jit = noise * torch.randn(len(cx), 4, generator=g)
        boxes = torch.stack([cx - bw / 2 + jit[:, 0] * bw, cy - bh / 2 + jit[:, 1] * bh,
                             cx + bw / 2 + jit[:, 2] * bw, cy + bh / 2 + jit[:, 3] * bh], -1)
        scores = torch.rand(len(cx), generator=g) * 0.5 + 0.5
        labels = t["labels"].clone()
        keep = torch.arange(len(cx)) > 0  # miss the first object
        fp = torch.tensor([[5.0, 5.0, 30.0, 30.0]])
        out.append({"image_id": int(t["image_id"]),
                    "boxes": torch.cat([boxes[keep], fp]), "scores": torch.cat(
                        [scores[keep], torch.tensor([0.9])]),
                    "labels": torch.cat([labels[keep], torch.tensor([0])]),
                    "phi": phi, "size": (256, 256), "orig_size": (h, w)})
    return out


def test_subset_ap_equals_cocoeval_on_all_images_and_on_a_subset(synth_dir):
    ds = _dataset(synth_dir)
    res = noisy_detections(ds, 0.08, seed=0)
    scorer = SubsetAP(ds, res)
    full = coco_metrics(ds, res)
    assert 0.1 < full["AP"] < 0.9
    assert scorer.metrics(range(len(res))) == pytest.approx(full, abs=1e-12)
    part = [1, 3, 4, 6]
    assert scorer.metrics(part) == pytest.approx(coco_metrics(ds, [res[i] for i in part]),
                                                 abs=1e-12)
    rows = bootstrap_indices(len(res), 5, seed=1)
    for row in rows:  # the fast AP-only pooling gives the AP of the full pooling
        assert scorer.ap(row) == pytest.approx(scorer.metrics(row)["AP"], abs=1e-12)
    np.testing.assert_array_equal(rows, bootstrap_indices(len(res), 5, seed=1))
    assert rows.shape == (5, len(res)) and rows.max() < len(res)


def test_subset_ap_counts_a_repeated_image_like_a_renamed_copy(synth_dir, tmp_path):
    """Bootstrap resamples repeat images: the pooled AP must equal that of a data set in which
    the repeated image is present twice under another id."""
    ds = _dataset(synth_dir)
    res = noisy_detections(ds, 0.1, seed=2)
    data = json.loads((synth_dir / "annotations" / "instances_val.json").read_text())
    first = data["images"][0]
    copy_id = max(im["id"] for im in data["images"]) + 1
    data["images"].append({**first, "id": copy_id})
    next_ann = max(a["id"] for a in data["annotations"]) + 1
    for a in [a for a in data["annotations"] if a["image_id"] == first["id"]]:
        data["annotations"].append({**a, "id": next_ann, "image_id": copy_id})
        next_ann += 1
    ann = tmp_path / "dup.json"
    ann.write_text(json.dumps(data))
    dup = CocoDetection(synth_dir / "images" / "val", ann)
    by_id = {r["image_id"]: r for r in res}
    dup_res = [*res, {**by_id[first["id"]], "image_id": copy_id}]
    positions = [ds.ids.index(first["id"]), *range(len(res))]
    assert SubsetAP(ds, res).metrics(positions) == pytest.approx(coco_metrics(dup, dup_res),
                                                                 abs=1e-12)


def perfect_detections(dataset, phi: float = 1.0) -> list[dict]:
    """noisy_detections without noise, the missed object restored and the false positive
    dropped: every image's AP is 1 (NaN without objects)."""
    perfect = noisy_detections(dataset, 0.0, seed=0, phi=phi)
    for r, i in zip(perfect, range(len(dataset))):
        _, t = dataset[i]
        h, w = t["orig_size"].tolist()
        cx, cy, bw, bh = (t["boxes"] * torch.tensor([w, h, w, h])).unbind(-1)
        r["boxes"] = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        r["scores"], r["labels"] = torch.ones(len(cx)), t["labels"]
    return perfect


def test_per_image_ap_is_nan_without_objects_and_one_for_perfect_detections(synth_dir):
    ds = _dataset(synth_dir)
    perfect = perfect_detections(ds)
    per = SubsetAP(ds, perfect).per_image()
    has = np.array([len(ds[i][1]["labels"]) > 0 for i in range(len(ds))])
    assert np.all(np.isnan(per[~has])) and np.allclose(per[has], 1.0)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelOptions(mode="elastic", base_size=64, thumb_size=32, detr=TINY),
                       6).eval()


def test_detect_at_does_not_depend_on_the_batch_size(synth_dir, tiny_model):
    ds = _dataset(synth_dir)
    phi = np.linspace(0.5, 1.5, len(ds))
    one = detect_at(tiny_model, ds, phi, batch_size=1)
    many = detect_at(tiny_model, ds, phi, batch_size=8)
    for a, b in zip(one, many):
        assert a["image_id"] == b["image_id"] and a["phi"] == b["phi"]
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
    assert len({r["size"] for r in one}) > 1


def test_loss_optimal_runs_every_image_at_its_scale_loss_optimum(synth_dir, tiny_model):
    ds = _dataset(synth_dir)
    out = loss_optimal(tiny_model, ds, LOSS)
    base = []
    for i in range(len(ds)):
        _, t = ds[i]
        h, w = t["orig_size"].tolist()
        f = 64 / min(h, w)
        base.append((t["boxes"][:, 2] * w * t["boxes"][:, 3] * h).sqrt().double() * f)
    _, phi_star = scale_optimum(base, 0.0, 0.5, 1.5, LOSS["b_s"], LOSS["b_l"])
    np.testing.assert_allclose(out["phi"], phi_star.numpy(), atol=1e-4)
    assert out["oracle"] == "loss-optimal" and len(out["gflops"]) == len(ds)


def test_ap_optimal_gives_each_image_its_best_scale(synth_dir, tiny_model):
    ds = _dataset(synth_dir)
    scales = [0.5, 1.0, 1.5]
    sweep = {}
    for k, s in enumerate(scales):  # a different noise per scale and image
        res = noisy_detections(ds, 0.05 + 0.1 * k, seed=10 + k, phi=s)
        for r in res:
            h, w = r["orig_size"]
            r["size"] = tiny_model.sizes([(h, w)], torch.tensor([s]))[0]
        sweep[s] = res
    out = ap_optimal(tiny_model, ds, scales, sweep=sweep)
    per_scale = np.stack([SubsetAP(ds, sweep[s]).per_image() for s in scales])
    chosen = np.array([scales.index(p) for p in out["phi"]])
    has = ~np.isnan(per_scale[0])
    best = np.nanmax(per_scale, axis=0)
    np.testing.assert_allclose(per_scale[chosen, np.arange(len(ds))][has], best[has])
    assert all(p == 0.5 for p, h in zip(out["phi"], has) if not h)  # no objects: cheapest
    assert out["AP"] >= max(SubsetAP(ds, sweep[s]).ap(range(len(ds))) for s in scales) - 1e-9


def test_a_fixed_model_trained_past_the_sweep_has_its_own_scale_among_the_ap_optimal_choices(
        synth_dir, monkeypatch):
    """bench_eval.evaluate_cell: a fixed detector trained at φ = 1.75, outside the sweep
    (0.5, 1, 1.5), with detections that are perfect at its own φ and noisy at every sweep
    point: its own row is the perfect one, and the AP-optimal oracle, which may pick its own φ
    too, gives every image with objects that φ (AP 1, not below its own row)."""
    ds = _dataset(synth_dir)
    torch.manual_seed(0)
    model = build_model(ModelOptions(mode="fixed", base_size=64, fixed_phi=1.75, detr=TINY),
                        6).eval()
    perfect, noisy = perfect_detections(ds), noisy_detections(ds, 0.3, seed=1)

    def fake_detect_at(model, dataset, phi, batch_size=8, progress=False):
        out = []
        for i, p in enumerate(phi):
            r = dict((perfect if p == 1.75 else noisy)[i], phi=float(p))
            r["size"] = model.sizes([r["orig_size"]], torch.tensor([float(p)]))[0]
            out.append(r)
        return out

    monkeypatch.setattr(bench_eval, "detect_at", fake_detect_at)
    checkpoint = {"model_options": {"mode": "fixed", "detr": asdict(TINY)},
                  "categories": list(range(6))}
    rows = bench_eval.evaluate_cell(model, checkpoint, ds, bench_eval.EvalOptions(
        scales=(0.5, 1.0, 1.5), replicas=4))["rows"]
    assert list(rows["sweep"]) == ["0.5", "1", "1.5"]
    assert rows["own"]["mean_phi"] == 1.75 and rows["own"]["AP"] == pytest.approx(1.0)
    assert max(r["AP"] for r in rows["sweep"].values()) < 0.9
    best = rows["ap_optimal"]
    assert best["AP"] == pytest.approx(rows["own"]["AP"])
    has = [len(ds[i][1]["labels"]) > 0 for i in range(len(ds))]
    phis = best.get("phi_per_image", [best["mean_phi"]] * len(ds))
    assert all(p == 1.75 for p, h in zip(phis, has) if h) and any(has)


def test_evaluation_does_not_depend_on_the_batch_size(synth_dir):
    """Batches hold images of one processed size only: batch 1 and batch 8 give the same AP
    (the shipped fixed checkpoint, so that the AP is far from 0)."""
    model, ckpt = load_model(REPO / "checkpoints" / "fixed_synth.pt")
    ds = CocoDetection(synth_dir / "images" / "val",
                       synth_dir / "annotations" / "instances_val.json",
                       categories=ckpt["categories"])
    one = evaluate(model.float(), ds, batch_size=1, latency_images=0, progress=False)
    eight = evaluate(model, ds, batch_size=8, latency_images=0, progress=False)
    assert one["AP50"] > 0.1
    for k in KEYS:
        assert one[k] == pytest.approx(eight[k], abs=1e-4)
    assert one["gflops_per_image"] == pytest.approx(eight["gflops_per_image"])
