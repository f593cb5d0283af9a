"""The knowledge base: one LanceDB table on disk (embedded, no server) and a small JSON record.

Folder layout: `KB/owl3-kb.json` (format, the model that embedded the images and its weights hash, the
vector width) and `KB/items.lance` (LanceDB). A row holds the item's id, text, the image file's bytes
(the knowledge base is self-contained), and its unit image vector (zeros for a text-only item, which
`has_image` marks). The text column carries LanceDB's native full-text index (BM25), rebuilt after each
`add`. Vector search is LanceDB's exact (flat) cosine search; past ~100k items an ANN index can be added
to the same table with LanceDB's own `create_index`.

Search: an image query ranks by cosine similarity, a text query by BM25, and a query with both fuses the
two rankings by reciprocal rank: score = sum over the lists of 1 / (RRF_K + rank), rank from 1
(Cormack et al. 2009, k = 60). Text-only items have no vector, so the fusion is over two ranked lists,
not one joint query.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from owl3.errors import Owl3Error
from owl3.kb.items import Item

META_FILE = "owl3-kb.json"
TABLE = "items"
FORMAT = 1
RRF_K = 60  # reciprocal-rank fusion constant (Cormack, Clarke & Buettcher 2009)


def _lancedb():
    try:
        import lancedb
    except ImportError:
        raise Owl3Error(
            "knowledge bases need LanceDB: pip install 'owl3[kb]' (or pip install 'lancedb>=0.25')"
        ) from None
    return lancedb


@dataclass
class Hit:
    """One search result. `score`: cosine similarity (image query), BM25 (text query) or the fused
    reciprocal-rank score (both); `ranks`: its rank in each list it came from (1-based)."""

    id: str
    score: float
    text: str
    has_image: bool
    ranks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), "text": self.text}


@dataclass
class AddReport:
    added: int = 0
    replaced: int = 0  # of the added, items whose id was there already
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item id, why)


class KnowledgeBase:
    """A knowledge base folder: `KnowledgeBase.create(path, ...)` or `open_kb(path)`."""

    def __init__(self, path: Path, meta: dict[str, Any], table: Any) -> None:
        self.path, self.meta, self.table = path, meta, table

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | Path,
        model_name: str,
        weights_sha256: str,
        dim: int,
        image_size: int,
        overwrite: bool = False,
    ) -> KnowledgeBase:
        import pyarrow as pa

        folder = Path(path)
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise Owl3Error(
                    f"{str(folder)!r} exists and is not empty; choose a new --output, add items with "
                    "'owl3 kb add', or pass --overwrite"
                )
            if not (folder / META_FILE).is_file():
                raise Owl3Error(f"{str(folder)!r} is not a knowledge base; refusing to overwrite it")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "model": model_name,
            "weights_sha256": weights_sha256,
            "dim": dim,
            "image_size": image_size,
            "embedding": "projected visual tokens of one global view, deviation-weighted pool, L2-normalized",
        }
        schema = pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("text", pa.string()),
                pa.field("has_image", pa.bool_()),
                pa.field("image", pa.binary()),
                pa.field("vector", pa.list_(pa.float32(), dim)),
            ]
        )
        table = _lancedb().connect(folder).create_table(TABLE, schema=schema)
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return cls(folder, meta, table)

    @classmethod
    def open(cls, path: str | Path) -> KnowledgeBase:
        folder = Path(path)
        if not folder.is_dir():
            raise Owl3Error(f"no knowledge base at {str(folder)!r}; build one with 'owl3 kb build'")
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except FileNotFoundError:
            raise Owl3Error(
                f"{str(folder)!r} is not an owl3 knowledge base (no {META_FILE}); "
                "build one with 'owl3 kb build'"
            ) from None
        except (OSError, ValueError) as e:
            raise Owl3Error(
                f"{str(folder / META_FILE)!r} is corrupt ({e}); build the knowledge base again"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "weights_sha256" not in meta:
            raise Owl3Error(f"{str(folder / META_FILE)!r} is not a knowledge base record of format {FORMAT}")
        try:
            table = _lancedb().connect(folder).open_table(TABLE)
            table.count_rows()
        except Owl3Error:
            raise
        except Exception as e:  # LanceDB raises plain errors (ValueError, OSError, RuntimeError) on bad data
            raise Owl3Error(
                f"the knowledge base at {str(folder)!r} is corrupt ({type(e).__name__}: {str(e)[:200]}); "
                "build it again"
            ) from None
        return cls(folder, meta, table)

    # ------------------------------------------------------------------ content
    def __len__(self) -> int:
        return self.table.count_rows()

    def check_model(self, weights_sha256: str, model_name: str = "") -> None:
        """Refuse a model other than the one that embedded this knowledge base."""
        if weights_sha256 != self.meta["weights_sha256"]:
            raise Owl3Error(
                f"the knowledge base at {str(self.path)!r} was embedded by another model "
                f"({self.meta['model']}, weights {self.meta['weights_sha256'][:12]}) than "
                f"{model_name or 'this one'} (weights {weights_sha256[:12]}); use --model "
                f"{self.meta['model']} or build the knowledge base again with this model"
            )

    def add(
        self,
        items: Sequence[Item],
        embed: Callable[[list[Any]], np.ndarray],
        strict: bool = False,
        progress: bool = False,
        batch_size: int = 64,
    ) -> AddReport:
        """Read, embed (`embed(PIL images)` -> (n, dim) unit vectors, `batch_size` at a time) and store
        `items`, replacing items of the same id. An unreadable image is skipped and reported with its id
        (`strict`: refused)."""
        twice = [i for i, n in Counter(it.id for it in items).items() if n > 1]
        if twice:
            raise Owl3Error(f"item id {twice[0]!r} appears twice in the items to add; ids must be unique")
        report = AddReport()
        dim = int(self.meta["dim"])
        rows: list[dict[str, Any]] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="item", desc="embedding", leave=False)
        try:
            # a batch at a time: the decoded images of one batch only are held at once
            for start in range(0, len(items), batch_size):
                batch = []
                for it in items[start : start + batch_size]:
                    data, img = (None, None) if it.image is None else self._read(it, strict, report)
                    if it.image is None or img is not None:
                        batch.append((it, data, img))
                imgs = [img for _, _, img in batch if img is not None]
                vecs = iter(embed(imgs) if imgs else ())
                for it, data, img in batch:
                    vector = next(vecs) if img is not None else np.zeros(dim, dtype=np.float32)
                    rows.append(
                        {
                            "id": it.id,
                            "text": it.text,
                            "has_image": data is not None,
                            "image": data,
                            "vector": vector,
                        }
                    )
                if bar is not None:
                    bar.update(min(batch_size, len(items) - start))
        finally:
            if bar is not None:
                bar.close()
        if rows:
            before = len(self)
            self._upsert(rows)
            report.replaced = len(rows) - (len(self) - before)
        report.added = len(rows)
        return report

    @staticmethod
    def _read(it: Item, strict: bool, report: AddReport) -> tuple[bytes | None, Any]:
        """An item's image file: (its bytes, the RGB image owl3 makes of them, as of any image input:
        EXIF orientation, colour profile, transparency on white, HEIC, the pixel limit), or (None, None)
        if unreadable."""
        from owl3.processing.decode import load_image

        try:
            img = load_image(Path(it.image))
            return Path(it.image).read_bytes(), img
        except (OSError, Owl3Error) as e:  # Owl3Error: missing, unreadable, too large; OSError: a race
            if strict:
                raise Owl3Error(f"item {it.id!r}: {e}") from None
            report.skipped.append((it.id, str(e)))
            return None, None

    def _upsert(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        from lancedb.index import FTS

        data = pa.Table.from_pylist(rows, schema=self.table.schema)
        if len(self) == 0:
            self.table.add(data)
        else:
            self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
                data
            )
        self.table.create_index("text", config=FTS(), replace=True)

    def image(self, item_id: str):
        """The stored image of an item (RGB PIL, made as when it was embedded), or None for a text-only
        item."""
        from owl3.processing.decode import load_image

        rows = self._rows([item_id], ["image"])
        if not rows:
            raise Owl3Error(f"no item {item_id!r} in the knowledge base at {str(self.path)!r}")
        data = rows[0]["image"]
        return None if data is None else load_image(data, max_pixels=None, what=f"item {item_id!r}")

    def _rows(self, ids: Sequence[str], columns: list[str]) -> list[dict[str, Any]]:
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
        return (
            self.table.search().where(f"id IN ({quoted})").select(["id", *columns]).limit(len(ids)).to_list()
        )

    def info(self) -> dict[str, Any]:
        n = len(self)
        n_img = self.table.count_rows("has_image") if n else 0
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {
            "path": str(self.path),
            "items": n,
            "with_image": n_img,
            "text_only": n - n_img,
            "size_mb": round(size / 2**20, 2),
            **self.meta,
        }

    # ------------------------------------------------------------------ search
    def search(self, text: str | None = None, vector: np.ndarray | None = None, top_k: int = 5) -> list[Hit]:
        """The `top_k` best items for a text query, an image query (a unit vector) or both (fused)."""
        try:
            return self._search(text, vector, top_k)
        except Owl3Error:
            raise
        except Exception as e:  # LanceDB reports damaged files only when it reads them
            raise Owl3Error(
                f"the knowledge base at {str(self.path)!r} is corrupt ({type(e).__name__}: {str(e)[:200]}); "
                "build it again"
            ) from None

    def _search(self, text: str | None, vector: np.ndarray | None, top_k: int) -> list[Hit]:
        if (text is None or not text.strip()) and vector is None:
            raise Owl3Error("nothing to search for: give a text query, an image query or both")
        if top_k < 1:
            raise Owl3Error(f"top_k (--top-k) must be at least 1, got {top_k}")
        if len(self) == 0:
            raise Owl3Error(
                f"the knowledge base at {str(self.path)!r} is empty; add items with 'owl3 kb add'"
            )
        lists: dict[str, list[Hit]] = {}
        depth = top_k if (vector is None or not text) else max(top_k, 50)  # fusion reads deeper lists
        if vector is not None:
            q = self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
            rows = q.distance_type("cosine").where("has_image").limit(depth).to_list()
            lists["image"] = [Hit(r["id"], 1.0 - r["_distance"], r["text"], True) for r in rows]
        if text is not None and text.strip():
            rows = self.table.search(text, query_type="fts").limit(depth).to_list()
            lists["text"] = [Hit(r["id"], r["_score"], r["text"], r["has_image"]) for r in rows]
        for name, hits in lists.items():
            for rank, h in enumerate(hits, 1):
                h.ranks[name] = rank
        if len(lists) == 1:
            return next(iter(lists.values()))[:top_k]
        return fuse(list(lists.values()))[:top_k]


def fuse(lists: Sequence[Sequence[Hit]], k: int = RRF_K) -> list[Hit]:
    """Reciprocal-rank fusion: each item scores sum 1 / (k + rank) over the lists it is in."""
    merged: dict[str, Hit] = {}
    for hits in lists:
        for rank, h in enumerate(hits, 1):
            m = merged.setdefault(h.id, Hit(h.id, 0.0, h.text, h.has_image))
            m.score += 1.0 / (k + rank)
            m.ranks.update(h.ranks)
    return sorted(merged.values(), key=lambda h: -h.score)


def open_kb(path: str | Path | KnowledgeBase) -> KnowledgeBase:
    """A knowledge base, opened from its folder (or passed through)."""
    return path if isinstance(path, KnowledgeBase) else KnowledgeBase.open(path)
