"""`owl3 serve --kb KB`: a request with `"retrieval": {"top_k": K}` is answered from the knowledge base, as
`pipe.chat(..., kb=KB, top_k=K)` answers it, and carries its citations (in the body, or in a last chunk of a
stream); a plain request is untouched; a server without a knowledge base refuses retrieval with a 400."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

import owl3
from owl3.serving.app import create_app
from owl3.serving.chat import ServeConfig
from owl3.serving.command import DEFAULT_NAME, make_engine
from tests.serve_helpers import FakeEngine, ServerThread, image_part
from tests.test_kb import _query, _write_items

pytest.importorskip("lancedb")


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from owl3 import cli

    tmp = tmp_path_factory.mktemp("kbserve")
    assert cli.main(["kb", "build", str(_write_items(tmp / "items")), "-o", str(tmp / "kb")]) == 0
    from owl3.kb import open_kb

    return open_kb(tmp / "kb")


@pytest.fixture(scope="module")
def served(kb):
    pipe = owl3.load()
    app = create_app(pipe, make_engine(pipe, 4), ServeConfig(model_name=DEFAULT_NAME, kb=kb))
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)


QUESTION = "What colour is the star?"


def _ask(client, content, retrieval, **kw):
    return client.chat.completions.create(
        model=DEFAULT_NAME,
        messages=[{"role": "user", "content": content}],
        max_tokens=10,
        extra_body={"retrieval": retrieval},
        **kw,
    )


def test_retrieval_answers_as_the_python_api_and_cites(client, kb, demo_pipe):
    q = _query("star", "yellow", 2)
    ref = demo_pipe.chat(QUESTION, images=[q], kb=kb, top_k=2, max_new_tokens=10)
    content = [image_part(q), {"type": "text", "text": QUESTION}]
    resp = _ask(client, content, {"top_k": 2})
    assert resp.choices[0].message.content == ref.text
    cites = resp.model_extra["citations"]
    assert [c["id"] for c in cites] == [c.id for c in ref.citations]
    for got, want in zip(cites, ref.citations, strict=True):
        assert got["share"] == pytest.approx(want.share, abs=1e-4)
        assert got["score"] == pytest.approx(want.score, abs=1e-5)
    # streamed: the same text, and a last chunk without choices that carries the citations
    chunks = list(_ask(client, content, {"top_k": 2}, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    tail = [c.model_extra.get("citations") for c in chunks if not c.choices]
    assert [c["id"] for c in tail[-1]] == [c.id for c in ref.citations]


def test_retrieval_cites_by_the_gradient_share_when_asked(client, kb, demo_pipe, served):
    q = _query("star", "yellow", 2)
    ref = demo_pipe.chat(QUESTION, images=[q], kb=kb, top_k=2, attribution="gradient", max_new_tokens=10)
    attention = demo_pipe.chat(QUESTION, images=[q], kb=kb, top_k=2, max_new_tokens=10)
    content = [image_part(q), {"type": "text", "text": QUESTION}]
    resp = _ask(client, content, {"top_k": 2, "share": "gradient"})
    cites = resp.model_extra["citations"]
    assert [c["share"] for c in cites] == pytest.approx([c.share for c in ref.citations], abs=1e-4)
    assert [c["share"] for c in cites] != pytest.approx([c.share for c in attention.citations], abs=1e-4)
    retrieval = {"top_k": 2, "share": "saliency"}
    body = {"messages": [{"role": "user", "content": content}], "retrieval": retrieval}
    req = urllib.request.Request(served.url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 400 and "share" in json.loads(e.value.read())["error"]["message"]


def test_the_model_card_names_the_knowledge_base(client, kb):
    card = client.models.list().data[0]
    assert card.model_extra["knowledge_base"] == {"name": kb.path.name, "items": len(kb)}


def test_a_plain_request_has_no_citations(client):
    resp = client.chat.completions.create(
        model=DEFAULT_NAME, messages=[{"role": "user", "content": "Hello"}], max_tokens=3
    )
    assert "citations" not in (resp.model_extra or {})


def test_retrieval_without_a_knowledge_base_is_a_400(demo_pipe):
    engine = FakeEngine(demo_pipe.tokenizer, demo_pipe.processor.stop_token_ids)
    app = create_app(demo_pipe, engine, ServeConfig(model_name=DEFAULT_NAME))
    body = {"messages": [{"role": "user", "content": "hi"}], "retrieval": {"top_k": 2}}
    with ServerThread(app) as server:
        req = urllib.request.Request(
            server.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 400
        err = json.loads(e.value.read())["error"]
        assert err["code"] == "retrieval_unavailable" and "--kb" in err["message"]
        # and the server keeps serving
        ok = urllib.request.Request(
            server.url + "/v1/chat/completions",
            data=json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert urllib.request.urlopen(ok, timeout=30).status == 200


def test_serve_refuses_a_knowledge_base_of_another_model(tmp_path, tiny_dir, capsys):
    from owl3 import cli

    items = _write_items(tmp_path / "items")
    assert cli.main(["kb", "build", str(items), "-o", str(tmp_path / "kb"), "--model", str(tiny_dir)]) == 0
    capsys.readouterr()
    assert cli.main(["serve", "--kb", str(tmp_path / "kb")]) == 2  # the built-in model, not the tiny one
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedded by another model" in err[0]
