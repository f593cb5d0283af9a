"""Pretraining the demo vision tower on the world's scene annotations (owl3/demo/tower.py): the per-patch
labels say what the drawn pixels show, training writes a checkpoint that differs from its start only in
the tower, and a short run learns colours well above chance."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from owl3.demo.tower import HEADS, patch_labels, pretrain_tower, scene_batch
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
    assert set(lab) == set(HEADS)


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


def test_pretraining_leaves_the_thread_count_as_it_was(init_dir, tmp_path):
    before = torch.get_num_threads()
    _pretrain(init_dir, tmp_path / "t", threads=before + 1)
    assert torch.get_num_threads() == before
