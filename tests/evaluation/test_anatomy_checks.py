"""Anatomy checks and per-structure Dice on a real phantom's label map: each implausibility is named."""

import numpy as np
import pytest

from scripts.data.labels import LABELS
from scripts.evaluation.anatomy_checks import structure_problems
from scripts.evaluation.segmentation import SCORED_STRUCTURES, evaluate_segmentation, structure_dice, working_cases
from scripts.phantoms.anatomy import draw_anatomy
from scripts.phantoms.thorax import render_phantom, write_phantoms


@pytest.fixture(scope="module")
def phantom():
    _, label, affine = render_phantom(draw_anatomy(np.random.default_rng(4)), 64, np.random.default_rng(4))
    return label, affine


def test_a_phantom_is_plausible_and_its_gtv_touches_a_lung(phantom):
    label, affine = phantom
    assert (label == LABELS["gtv_1"]).any()
    assert structure_problems(label, affine, tumor=True) == []


def test_each_implausibility_is_named(phantom):
    label, affine = phantom
    flipped = label[:, ::-1, :]  # anterior and posterior swapped: the cord lies in front of the heart
    assert any("not posterior to the heart" in p for p in structure_problems(flipped, affine))
    no_heart = np.where(label == LABELS["heart"], LABELS["body"], label)
    assert structure_problems(no_heart, affine) == ["no heart"]
    one_lung = label.copy()
    one_lung[(label == LABELS["lungs"]) & (np.arange(label.shape[0])[:, None, None] > label.shape[0] // 2)] = 0
    assert "no left lung" in structure_problems(one_lung, affine)
    far = np.where(label == LABELS["gtv_1"], LABELS["body"], label)
    far[2:5, 2:5, 2:5] = LABELS["gtv_1"]
    assert "the GTV touches no lung" in structure_problems(far, affine, tumor=True)


def test_structure_dice_scores_each_structure(phantom):
    label, _ = phantom
    assert all(d == 1.0 for d in structure_dice(label, label).values())
    shifted = structure_dice(np.roll(label, 3, axis=0), label)
    assert 0.0 < shifted["lungs"] < 0.95 and shifted["body"] > shifted["spinal_cord"]


def test_segmentation_scores_on_a_datalist_with_an_empty_split(tmp_path):
    write_phantoms(str(tmp_path), n=2, size=32, seed=0)  # two cases: training and validation, no test split
    cases = list(working_cases(tmp_path / "datalist.json", 16))
    assert [(c[1].shape, c[2].shape) for c in cases] == [((16, 16, 16), (16, 16, 16))] * 2
    references = {c[1].tobytes(): c[2] for c in cases}
    perfect = evaluate_segmentation(lambda hu: references[hu.tobytes()], cases)
    assert perfect["min"] == dict.fromkeys(SCORED_STRUCTURES, 1.0)
    empty = evaluate_segmentation(lambda hu: np.zeros(hu.shape, np.uint8), cases)
    assert empty["mean"]["lungs"] == 0.0 and empty["mean"]["body"] == 0.0
