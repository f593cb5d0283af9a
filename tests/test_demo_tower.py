"""Pretraining the demo vision tower on the world's scene annotations (owl3/demo/tower.py): the per-patch
labels say what the drawn pixels show, training writes a checkpoint that differs from its start only in
the tower, and a short run learns colours well above chance."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from owl3.demo.tower import (
    ALL_HEADS,
    HEADS,
    SCENE,
    TowerHeads,
    losses,
    patch_labels,
    pretrain_tower,
    scene_batch,
)
from owl3.demo.world import COLOURS, SHAPES, WORDS, Obj, Scene, Word, render


def test_patch_labels_name_each_patch_cell():
    scene = Scene(
        (Obj("star", "red", "big", cell=0), Obj("circle", "blue", "small", cell=8)),
        Word("FISH", "green", row=1, x=0.1),
    )
    lab = patch_labels(scene, grid=6)
    top_left = [0, 1, 6, 7]  # the 2x2 patches of cell 0 in a 6x6 grid
    bottom_right = [28, 29, 34, 35]
    assert all(lab["shape"][p] == 1 + SHAPES.index("star") for p in top_left)
    assert all(lab["colour"][p] == 1 + list(COLOURS).index("blue") for p in bottom_right)
    assert int(lab["object"][0]) == 1 + SHAPES.index("star") * len(COLOURS) + list(COLOURS).index("red")
    assert int((lab["shape"] > 0).sum()) == 8  # two objects, four patches each
    word_rows = [p for p in range(36) if 12 <= p < 24]
    assert all(lab["word"][p] == 1 + WORDS.index("FISH") for p in word_rows)
    assert int((lab["word"] > 0).sum()) == 12
    assert [int(lab["row"][p]) for p in (0, 12, 35)] == [0, 1, 2] and int(lab["col"][5]) == 2
    assert set(lab) == set(ALL_HEADS) == {*HEADS, SCENE}
    # the scene head: every patch, object or not, names both pairs the picture shows, and nothing else
    red_star = SHAPES.index("star") * len(COLOURS) + list(COLOURS).index("red")
    blue_circle = SHAPES.index("circle") * len(COLOURS) + list(COLOURS).index("blue")
    assert lab[SCENE].shape == (36, len(SHAPES) * len(COLOURS))
    assert all(set(lab[SCENE][p].nonzero().flatten().tolist()) == {red_star, blue_circle} for p in range(36))


def test_scene_batch_matches_the_rendered_pixels():
    pixels, labels = scene_batch(random.Random("t"), 4, 84, 6)
    assert pixels.shape == (4, 3, 84, 84) and labels["shape"].shape == (4, 36)
    # the same stream draws the same scenes: a patch labelled with an object holds non-background pixels
    scenes_rng = random.Random("t")
    from owl3.demo.world import random_scene

    scene = random_scene(scenes_rng)
    a = np.asarray(render(scene, 84)).astype(int)
    for o in scene.objects:
        r, c = o.row * 28, o.col * 28
        assert (np.abs(a[r : r + 28, c : c + 28] - 128).sum(-1) > 0).any()
        assert int(labels["shape"][0, (o.row * 2) * 6 + o.col * 2]) == 1 + SHAPES.index(o.shape)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    from owl3.demo.model import init_checkpoint

    return init_checkpoint(tmp_path_factory.mktemp("tower") / "init")


def test_pretraining_changes_only_the_tower_and_learns_colour(init_dir, tmp_path):
    torch.manual_seed(0)
    res = pretrain_tower(
        init_dir, tmp_path / "out", steps=60, batch_size=32, lr=3e-3, eval_every=60, say=lambda s: None
    )
    # chance is 1/8 for the colour of an object patch; 60 steps of 32 pictures learn it well above that
    assert res.final["colour"] > 0.5, res.final
    assert res.final["row"] > 0.9 and res.final["col"] > 0.9, res.final
    before, after = (
        load_file(init_dir / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_model.") for k in changed)
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (
        tmp_path / "out" / "generation_config.json"
    ).is_file()


def _pretrain(init_dir, out, **options):
    return pretrain_tower(init_dir, out, steps=2, batch_size=4, eval_every=2, say=lambda s: None, **options)


def test_a_subset_of_heads_trains_and_an_unknown_head_is_refused(init_dir, tmp_path):
    from owl3.errors import Owl3Error

    res = _pretrain(init_dir, tmp_path / "o", heads=("shape", "colour"))
    assert {"shape", "colour", "whole"} <= set(res.final) and "row" not in res.final
    with pytest.raises(Owl3Error, match="unknown tower heads"):
        pretrain_tower(init_dir, tmp_path / "p", steps=1, heads=("shape", "smell"), say=lambda s: None)


def test_scene_head_loss_is_binary_cross_entropy_summed_over_its_classes():
    torch.manual_seed(0)
    _, labels = scene_batch(random.Random("s"), 2, 84, 6)
    heads = TowerHeads(8, ("colour", SCENE))
    logits = heads(torch.randn(2, 36, 8))
    ce = torch.nn.functional.cross_entropy(logits["colour"].flatten(0, 1), labels["colour"].flatten())
    p = torch.sigmoid(logits[SCENE])
    y = labels[SCENE]
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).sum(-1).mean() / 4
    assert torch.allclose(losses(logits, labels), ce + bce, atol=1e-5)
    # without the scene head the loss is the cross-entropy alone: the default objective is unchanged
    only = {"colour": logits["colour"]}
    assert torch.allclose(losses(only, labels), ce)


def test_scene_head_trains_and_is_scored(init_dir, tmp_path):
    assert SCENE in _pretrain(init_dir, tmp_path / "s", heads=(*HEADS, SCENE)).final
    assert SCENE not in _pretrain(init_dir, tmp_path / "d").final  # not in the default objective


def test_scene_accuracy_counts_patches_with_every_class_right():
    from owl3.demo.tower import accuracy

    pixels, labels = scene_batch(random.Random("acc"), 2, 84, 6)
    assert not torch.equal(labels[SCENE][0, 0], labels[SCENE][1, 0])  # two different pictures
    heads = TowerHeads(8, ("colour", SCENE))
    with torch.no_grad():  # a scene head that says "picture 0's set" on every patch, whatever it sees
        heads.heads[SCENE].weight.zero_()
        heads.heads[SCENE].bias.copy_(4 * labels[SCENE][0, 0] - 2)
    blind = torch.nn.Module()
    blind.forward = lambda px: torch.zeros(px.shape[0], 36, 8)
    assert accuracy(blind, heads, pixels, labels)[SCENE] == 0.5  # picture 0's 36 patches of 72
