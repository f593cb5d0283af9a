"""Knowledge bases: build from synthetic items, persist and reopen, rank the right item first for image and
text queries, refuse another model's KB and bad input with one clear error, answer with citations."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from owl3 import cli
from owl3.demo.world import Scene, random_object, render
from owl3.errors import Owl3Error

pytest.importorskip("lancedb")

# eight objects that differ in shape and colour; each item shows one, in its own cell
OBJECTS = [("circle", "red"), ("square", "green"), ("triangle", "blue"), ("star", "yellow"),
           ("diamond", "purple"), ("hexagon", "orange"), ("cross", "black"), ("heart", "white")]  # fmt: skip


def _write_items(folder, cells=None):
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (shape, colour) in enumerate(OBJECTS):
        obj = random_object(rng, i if cells is None else cells[i], shape=shape, colour=colour, size="big")
        render(Scene((obj,))).save(folder / f"{shape}.png")
        rows.append({"id": shape, "image": f"{shape}.png", "text": f"a big {colour} {shape}"})
    rows.append({"id": "note", "text": "hearts and stars are drawn in one colour"})
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "items.jsonl"


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory):
    """A knowledge base of the eight items (plus a text-only one) built by `owl3 kb build`."""
    tmp = tmp_path_factory.mktemp("kb")
    items = _write_items(tmp / "items")
    assert cli.main(["kb", "build", str(items), "-o", str(tmp / "kb")]) == 0
    return tmp / "kb"


def _query(shape, colour, cell):
    return render(Scene((random_object(random.Random(1), cell, shape=shape, colour=colour, size="big"),)))


def test_build_persists_and_reopens(kb_dir):
    from owl3.kb import open_kb

    kb = open_kb(kb_dir)
    info = kb.info()
    assert (info["items"], info["with_image"], info["text_only"]) == (9, 8, 1)
    assert info["model"] == "built-in demo" and len(info["weights_sha256"]) == 64
    img = kb.image("star")  # the KB holds the picture itself
    assert img.size == (84, 84) and kb.image("note") is None


def test_image_query_of_a_redrawn_object_ranks_its_item_first(kb_dir, demo_pipe):
    from owl3.kb import open_kb
    from owl3.kb.embed import embed_images

    kb = open_kb(kb_dir)
    for i, (shape, colour) in enumerate(OBJECTS):
        vec = embed_images(demo_pipe.model, [_query(shape, colour, (i + 4) % 9)])[0]  # another cell
        hits = kb.search(vector=vec, top_k=3)
        assert hits[0].id == shape, (shape, [h.id for h in hits])
        assert all(h.has_image for h in hits)


def test_text_query_ranks_by_bm25_and_fusion_combines(kb_dir, demo_pipe, capsys):
    from owl3.kb import open_kb
    from owl3.kb.embed import embed_images

    kb = open_kb(kb_dir)
    assert kb.search(text="purple diamond", top_k=2)[0].id == "diamond"
    assert kb.search(text="hearts stars colour", top_k=1)[0].id == "note"  # a text-only item
    # an image of the red circle with the text "hexagon": both items lead the fused list
    vec = embed_images(demo_pipe.model, [_query("circle", "red", 5)])[0]
    fused = kb.search(text="hexagon", vector=vec, top_k=3)
    assert {fused[0].id, fused[1].id} == {"circle", "hexagon"}
    assert cli.main(["kb", "search", str(kb_dir), "--text", "yellow star", "--json", "--top-k", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["id"] == "star" and set(lines[0]) == {"id", "score", "text"}
    assert cli.main(["kb", "search", str(kb_dir), "--text", "zebra"]) == 0
    assert "no item matches" in capsys.readouterr().err


def test_reciprocal_rank_fusion():
    from owl3.kb.store import Hit, fuse

    a = [Hit("x", 0.9, "", True), Hit("y", 0.8, "", True), Hit("z", 0.7, "", True)]
    b = [Hit("w", 5.0, "", False), Hit("y", 4.0, "", True)]
    out = fuse([a, b], k=60)
    assert [h.id for h in out] == ["y", "x", "w", "z"]  # second in both lists beats first in one
    assert out[0].score == pytest.approx(2 / 62) and out[3].score == pytest.approx(1 / 63)


def test_add_replaces_by_id_and_reports_bad_images(tmp_path, kb_dir, capsys):
    kb = tmp_path / "kb"
    shutil.copytree(kb_dir, kb)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "new.jsonl").write_text(
        json.dumps({"id": "broken", "image": "bad.png", "text": "x"}) + "\n"
        + json.dumps({"id": "missing", "image": "nowhere.png"}) + "\n"
        + json.dumps({"id": "note", "text": "a new note about moons"}) + "\n"
    )  # fmt: skip
    assert cli.main(["kb", "add", str(kb), str(tmp_path / "new.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "'broken'" in err and "'missing'" in err and "added 1 item (1 replaced, 2 skipped)" in err
    from owl3.kb import open_kb

    k = open_kb(kb)
    assert len(k) == 9 and k.search(text="moons", top_k=1)[0].text == "a new note about moons"
    from owl3.kb.items import Item

    with pytest.raises(Owl3Error, match="'twin' appears twice"):  # the Python API checks ids too
        k.add([Item("twin", None, "one"), Item("twin", None, "two")], embed=lambda images: None)
    assert len(k) == 9
    assert cli.main(["kb", "add", str(kb), str(tmp_path / "new.jsonl"), "--strict"]) == 2
    assert "item 'broken'" in capsys.readouterr().err
    assert cli.main(["kb", "build", str(tmp_path / "new.jsonl"), "-o", str(tmp_path / "s"), "--strict"]) == 2
    assert not (tmp_path / "s").exists()  # a refused build leaves nothing behind


def test_a_kb_of_another_model_is_refused(tmp_path, tiny_dir, capsys):
    items = _write_items(tmp_path / "items")
    assert cli.main(["kb", "build", str(items), "-o", str(tmp_path / "kb"), "--model", str(tiny_dir)]) == 0
    capsys.readouterr()
    q = tmp_path / "q.png"
    _query("star", "yellow", 0).save(q)
    from owl3.api import DEFAULT_MODEL

    demo = str(DEFAULT_MODEL)
    assert cli.main(["kb", "search", str(tmp_path / "kb"), "--image", str(q), "--model", demo]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedded by another model" in err[0]
    # the model the KB records is the default: the same search without --model works
    assert cli.main(["kb", "search", str(tmp_path / "kb"), "--image", str(q)]) == 0


def test_bad_knowledge_bases_give_one_clear_error(tmp_path, kb_dir, capsys):
    from owl3.kb.store import KnowledgeBase, open_kb

    with pytest.raises(Owl3Error, match="no knowledge base"):
        open_kb(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(Owl3Error, match="not an owl3 knowledge base"):
        open_kb(tmp_path / "plain")
    empty = KnowledgeBase.create(tmp_path / "empty", "m", "0" * 64, 8, 84)
    with pytest.raises(Owl3Error, match="empty"):
        open_kb(empty.path).search(text="anything")
    broken = tmp_path / "broken"
    shutil.copytree(kb_dir, broken)
    for f in (broken / "items.lance").rglob("*.lance"):
        f.write_bytes(b"garbage")
    with pytest.raises(Owl3Error, match="corrupt"):
        open_kb(broken).search(text="star")
    (broken / "owl3-kb.json").write_text("{not json")
    assert cli.main(["kb", "info", str(broken)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert cli.main(["kb", "search", str(kb_dir)]) == 2  # nothing to search for


def test_answer_with_citations_end_to_end(tmp_path, tiny_dir, tiny_pipe, capsys):
    items = _write_items(tmp_path / "items")
    kb = tmp_path / "kb"
    assert cli.main(["kb", "build", str(items), "-o", str(kb), "--model", str(tiny_dir)]) == 0
    q = _query("star", "yellow", 4)
    out = tiny_pipe.chat("Which shape is this?", images=[q], kb=str(kb), top_k=3, max_new_tokens=5)
    assert len(out.citations) == 3 and [c.n for c in out.citations] == [1, 2, 3]
    assert all(c.id in {s for s, _ in OBJECTS} | {"note"} for c in out.citations)
    image_items = [c for c in out.citations if c.share is not None]
    assert len(out.shares) == len(image_items) + 1  # the items' images, then the query image
    assert sum(c.share for c in image_items) + out.shares[-1].share == pytest.approx(1.0)
    assert out.text == str(out) and isinstance(out.text, str)
    # the CLI prints the answer, then the Sources table
    q.save(tmp_path / "q.png")
    args = ["generate", "--model", str(tiny_dir), "--kb", str(kb), "--top-k", "2", "--image",
            str(tmp_path / "q.png"), "--max-new-tokens", "4", "Which shape is this?"]  # fmt: skip
    assert cli.main(args) == 0
    out_lines = capsys.readouterr().out.splitlines()
    i = out_lines.index("Sources")
    assert len(out_lines[i + 2 :]) == 3 and "query image" in out_lines[-1]
    # --attribution-measure gradient: the Sources table's shares are the gradient shares, then their table
    assert cli.main([*args[:-1], "--attribution-measure", "gradient", args[-1]]) == 0
    printed = capsys.readouterr().out
    want = tiny_pipe.chat("Which shape is this?", images=[q], kb=str(kb), top_k=2, attribution="gradient",
                          max_new_tokens=4)  # fmt: skip
    rows = printed.split("Sources")[1].split("Gradient share")[0].strip().splitlines()[1:]
    shares = ["-" if c.share is None else f"{100 * c.share:.1f}%" for c in want.citations]
    assert [r.split()[3] for r in rows[: len(shares)]] == shares
    # no item retrieved at all is said, not an empty table; --top-k 0 with a knowledge base is refused
    nothing = ["generate", "--model", str(tiny_dir), "--kb", str(kb), "--max-new-tokens", "2", "zzz"]
    assert cli.main(nothing) == 0
    captured = capsys.readouterr()
    assert "Sources" not in captured.out and "no item of the knowledge base matched" in captured.err
    assert cli.main([*args[:5], "--top-k", "0", *args[7:]]) == 2
    assert "top_k (--top-k) must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(Owl3Error, match="at least 1"):
        tiny_pipe.chat("Which shape is this?", images=[q], kb=str(kb), top_k=0)


def test_item_images_are_read_as_every_image_input(tmp_path, tiny_dir, tiny_pipe, capsys):
    # a phone photo (EXIF: turn it 90 degrees to view) and a transparent cut-out: the knowledge base embeds
    # them, and answers with them, as owl3 reads any image (turned upright; transparency on white)
    from owl3.kb import open_kb
    from owl3.kb.embed import embed_images
    from owl3.processing import load_image

    d = tmp_path / "items"
    d.mkdir()
    photo = np.zeros((40, 80, 3), np.uint8)
    photo[:, :40] = (255, 0, 0)  # stored landscape: red left half, black right half
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(d / "phone.jpg", exif=exif, quality=95)
    cutout = np.zeros((64, 64, 4), np.uint8)
    cutout[16:48, 16:48] = (0, 0, 255, 255)  # a blue square; the rest transparent black
    Image.fromarray(cutout, "RGBA").save(d / "cutout.png")
    Image.new("RGB", (4, 4)).save(d / "big.png")
    (d / "big.png").write_bytes((d / "big.png").read_bytes()[:30])  # a cut-off file: skipped, said why
    kb = tmp_path / "kb"
    assert cli.main(["kb", "build", str(d), "-o", str(kb), "--model", str(tiny_dir)]) == 0
    assert "skipped item 'big'" in capsys.readouterr().err
    k = open_kb(kb)
    assert k.image("phone").size == (40, 80)  # upright
    assert np.asarray(k.image("cutout"))[0, 0].tolist() == [255, 255, 255]  # on white
    vectors = embed_images(tiny_pipe.model, [d / "phone.jpg", d / "cutout.png"])
    for name, vector in zip(("phone", "cutout"), vectors, strict=True):
        ext = ".jpg" if name == "phone" else ".png"
        assert np.array_equal(np.asarray(k.image(name)), np.asarray(load_image(d / (name + ext))))
        hit = k.search(vector=vector, top_k=1)[0]  # the stored vector is the image input's own
        assert hit.id == name and hit.score == pytest.approx(1.0, abs=1e-5)


def test_items_from_a_folder_and_jsonl_mistakes(tmp_path):
    from owl3.kb.items import read_items

    d = tmp_path / "folder"
    d.mkdir()
    render(Scene(())).save(d / "b.png")
    (d / "b.txt").write_text("an empty picture\n")
    render(Scene(())).save(d / "a.jpg")
    (d / "c.txt").write_text("only words")
    items = read_items(d)
    assert [(i.id, i.image.name if i.image else None, i.text) for i in items] == [
        ("a", "a.jpg", ""),
        ("b", "b.png", "an empty picture"),
        ("c", None, "only words"),
    ]
    bad = {
        "not json": ("{oops\n", "not valid JSON"),
        "no id": ('{"text": "x"}\n', '"id"'),
        "empty": ('{"id": "x"}\n', "neither an image nor text"),
        "twice": ('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n', "appears twice"),
    }
    for name, (text, message) in bad.items():
        f = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        f.write_text(text)
        with pytest.raises(Owl3Error, match=message):
            read_items(f)
    with pytest.raises(Owl3Error, match="no such file"):
        read_items(tmp_path / "nope.jsonl")
