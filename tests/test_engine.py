"""Engine behaviour on the tiny official-layout checkpoint: cache, visual K/V reuse, batching, limits."""

import pytest
import torch
from PIL import Image

from owl3.bench.latency import StageTimedEngine
from owl3.errors import Owl3Error
from owl3.inference.engine import Engine
from owl3.inference.kernels import attention_kernels
from owl3.inference.sampling import SamplingParams


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


def _img(tiny_dir, name):
    return Image.open(tiny_dir / "images" / name)


def _requests(pipe, tiny_dir):
    return [
        pipe.encode("Tell me a story."),
        pipe.encode(
            "Image 1: <|image|> Image 2: <|image|>. Compare.",
            [_img(tiny_dir, "m1.png"), _img(tiny_dir, "m2.png")],
        ),
        pipe.encode("What is this?", [_img(tiny_dir, "wide.png")]),  # cropped: 4 views
        pipe.encode("<|video|>What happens?", videos=[[_img(tiny_dir, f"f{i}.png") for i in range(5)]]),
    ]


def _run(engine, encs, params):
    out = [[] for _ in encs]
    for ev in engine.generate(encs, params):
        out[ev.request_id].append(ev.token_id)
    return out


def test_cached_decode_equals_full_forward(pipe, tiny_dir):
    enc = _requests(pipe, tiny_dir)[1]
    eng = pipe.engine
    ids = _run(eng, [enc], SamplingParams(max_new_tokens=10))[0]
    # every generated token must be the argmax of a full (uncached) forward over prompt + tokens so far
    full = torch.cat([enc.input_ids, torch.tensor(ids)])[None]
    with torch.no_grad():
        logits = pipe.model(full, visual=eng.encode_visual([enc]))[0]
    n = enc.input_ids.shape[0]
    assert logits[n - 1 : n - 1 + len(ids)].argmax(-1).tolist() == ids


def test_chunked_prefill_and_pool_decode_match_full_forward(pipe, tiny_dir):
    # a prompt prefilled in three chunks into slot 2 of a pool that grows meanwhile, moved to slot 0, then
    # decoded through the pool's decode view beside a text-only row: the full forward's logits, to float32
    # noise
    from owl3.inference.kv_cache import DecodeView, KVPool, SlotView
    from owl3.model import RowVisuals
    from owl3.model.layers import causal_mask

    enc = _requests(pipe, tiny_dir)[2]
    model = pipe.model
    n = enc.input_ids.shape[0]
    pool = KVPool(model.cfg.text, 3, 256, model.dtype, model.device, capacity=8)
    visual = pipe.engine.encode_visual([enc])
    p, logits = 0, []
    with torch.no_grad():
        for c in (5, 11, n - 16):
            pool.ensure(p + c)
            mask = None if p == 0 else causal_mask(torch.ones(1, p + c, dtype=torch.bool), c)
            pos = torch.arange(p, p + c)[None]
            out = model(enc.input_ids[p : p + c][None], pos, mask, SlotView(pool, 2, p), visual, True)
            p += c
        logits.append(out[0, -1])
        assert pool.capacity >= n and p == n
        pool.move(2, 0, n)
        visual.start_decoding()
        other = pipe.encode("Hi")  # row 1: a text-only request, prefilled into slot 1
        m = other.input_ids.shape[0]
        model(other.input_ids[None], None, None, SlotView(pool, 1, 0), None)
        toks = [3, 17, 42]
        length = torch.tensor([n, m])
        for t in toks:
            window = int(length.max()) + 1
            mask = (torch.arange(window)[None, :] <= length[:, None])[:, None, None, :]
            ids = torch.tensor([[t], [5]])
            view = DecodeView(pool, length, window)
            out = model(ids, length[:, None], mask, view, RowVisuals([visual, None]))
            logits.append(out[0, -1])
            length = length + 1
        full = torch.cat([enc.input_ids, torch.tensor(toks)])[None]
        ref = model(full, visual=pipe.engine.encode_visual([enc]))[0, n - 1 :]
    torch.testing.assert_close(torch.stack(logits), ref, atol=1e-5, rtol=1e-5)


def test_visual_kv_computed_once_per_request(pipe, tiny_dir):
    enc = _requests(pipe, tiny_dir)[1]
    hyper = [layer.self_attn for layer in pipe.model.language_model.model.layers if layer.self_attn.is_hyper]
    calls = []
    hooks = [a.v_kv_proj.register_forward_hook(lambda *_: calls.append(1)) for a in hyper]
    try:
        stops, pad = pipe.processor.stop_token_ids, pipe.processor.pad_token_id
        ids = _run(Engine(pipe.model, stops, pad), [enc], SamplingParams(max_new_tokens=8))[0]
        assert len(ids) == 8
        assert len(calls) == len(hyper)  # once per hyper layer, not once per step
        # the official behaviour (recompute every step) gives the same tokens at len(ids) times the work
        calls.clear()
        official = StageTimedEngine(
            pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, recompute_visual_kv=True
        )
        assert _run(official, [enc], SamplingParams(max_new_tokens=8))[0] == ids
        assert len(calls) == len(hyper) * 8
    finally:
        for h in hooks:
            h.remove()


def test_batched_equals_one_by_one(pipe, tiny_dir):
    encs = _requests(pipe, tiny_dir)
    params = SamplingParams(max_new_tokens=12)
    alone = [_run(pipe.engine, [e], params)[0] for e in encs]
    together = _run(pipe.engine, encs, params)
    assert together == alone
    assert _run(pipe.engine, encs[::-1], params) == alone[::-1]


def test_seeded_sampling_same_alone_and_batched(pipe, tiny_dir):
    encs = _requests(pipe, tiny_dir)[:2]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    alone = [_run(pipe.engine, [e], params)[0] for e in encs]
    assert _run(pipe.engine, encs, params) == alone
    other = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=8)
    assert _run(pipe.engine, encs, other) != alone


def test_stop_and_length_reasons(pipe, tiny_dir):
    enc = _requests(pipe, tiny_dir)[0]
    events = list(pipe.engine.generate([enc], SamplingParams(max_new_tokens=5)))
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    first = events[0].token_id
    events = list(pipe.engine.generate([enc], SamplingParams(max_new_tokens=5, stop_token_ids=(first,))))
    assert len(events) == 1 and events[0].finish_reason == "stop" and events[0].token_id == first


def test_generation_stops_at_max_positions(pipe, tiny_dir):
    enc = _requests(pipe, tiny_dir)[0]
    n = enc.input_ids.shape[0]
    eng = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, max_model_len=n + 3)
    events = list(eng.generate([enc], SamplingParams(max_new_tokens=50)))
    assert len(events) == 3 and events[-1].finish_reason == "length"
    long = pipe.encode("word " * 40)
    with pytest.raises(Owl3Error, match="max_position_embeddings"):
        list(eng.generate([long], SamplingParams(max_new_tokens=5)))


def test_cuda_forwards_take_cudnn_out_of_sdpa_for_their_length_only(pipe, tiny_dir):
    # cuDNN's per-shape plans made every decode step of the 7B pay a plan build on the H100
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        with attention_kernels("cpu"):
            assert torch.backends.cuda.cudnn_sdp_enabled()  # CPU runs leave the setting alone
        with attention_kernels(torch.device("cuda", 0)):
            assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.cudnn_sdp_enabled()  # restored: nothing process-wide stays changed
        Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id)
        _run(pipe.engine, [_requests(pipe, tiny_dir)[1]], SamplingParams(max_new_tokens=2))
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_compiled_decode_compiles_once_and_matches_eager():
    # one graph serves every step (the cache grows) of requests with different image counts and lengths;
    # "eager" checks graph capture and guards without code generation
    from torch._dynamo.utils import counters

    from owl3.bench.common import free_token_id, random_images, random_model, synthetic_prompt
    from owl3.config import preset
    from owl3.processing import Encoding
    from owl3.processing.pixels import images_to_pixels

    cfg = preset("tiny")
    model = random_model(cfg, seed=3)

    def request(n):
        ids, starts = synthetic_prompt(n, free_token_id(cfg), cfg.text.vocab_size, seed=n)
        return [Encoding(ids, images_to_pixels(random_images(n, 64, 48, seed=n), cfg.image_size), starts, "")]

    torch._dynamo.reset()
    counters.clear()
    eager = Engine(model, stop_token_ids=(), pad_token_id=0)
    fast = Engine(model, stop_token_ids=(), pad_token_id=0, compile_decode="eager")
    for n, t in ((2, 5), (3, 9), (1, 7)):
        params = SamplingParams(max_new_tokens=t)
        want = [e.token_id for e in eager.generate(request(n), params)]
        assert [e.token_id for e in fast.generate(request(n), params)] == want
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def _alone(pipe, encs, params_list):
    return [_run(pipe.engine, [e], p)[0] for e, p in zip(encs, params_list, strict=True)]


def _drive(engine, plan, steps_between=2):
    """Add requests at different steps, run to the end; request i's tokens and finish reason."""
    out, reasons, ids = {}, {}, {}
    pending = list(enumerate(plan))
    while pending or engine.has_unfinished:
        if pending:
            i, (enc, params) = pending.pop(0)
            ids[engine.add_request(enc, params)] = i
        for _ in range(steps_between if pending else 10**9):
            if not engine.has_unfinished:
                break
            for ev in engine.step():
                out.setdefault(ids[ev.request_id], []).append(ev.token_id)
                if ev.finished:
                    reasons[ids[ev.request_id]] = ev.finish_reason
    return [out[i] for i in range(len(plan))], [reasons[i] for i in range(len(plan))]


@pytest.mark.parametrize("sampled", [False, True])
def test_join_and_leave_mid_batch_give_the_tokens_of_each_alone(pipe, tiny_dir, sampled):
    # requests join a running batch between steps and leave it at different lengths (others move into
    # their slots); each request's tokens are those it gets alone, greedy and with seeded sampling
    encs = _requests(pipe, tiny_dir)
    extra = {"temperature": 0.9, "top_p": 0.95} if sampled else {}
    params = [SamplingParams(max_new_tokens=k, seed=10 + k, **extra) for k in (9, 4, 12, 6)]
    want = _alone(pipe, encs, params)
    engine = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, max_num_seqs=3,
                    prefill_chunk=7, vision_chunk_size=2)  # fmt: skip
    got, reasons = _drive(engine, list(zip(encs, params, strict=True)))
    assert got == want
    assert all(r in ("stop", "length") for r in reasons)
    assert not engine.running and not engine.prefilling and not engine.waiting


def test_abort_frees_the_slot_and_the_others_go_on(pipe, tiny_dir):
    encs = _requests(pipe, tiny_dir)
    params = SamplingParams(max_new_tokens=10)
    want = _alone(pipe, encs, [params] * 4)
    engine = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, max_num_seqs=2)
    rids = [engine.add_request(e, params) for e in encs]
    out: dict[int, list[int]] = {r: [] for r in rids}
    reasons = {}
    steps = 0
    while engine.has_unfinished:
        if steps == 4:
            assert engine.abort(rids[0]) and engine.abort(rids[3])  # one running, one still waiting
            assert not engine.abort(12345)
        for ev in engine.step():
            if ev.token_id >= 0:
                out[ev.request_id].append(ev.token_id)
            if ev.finished:
                reasons[ev.request_id] = ev.finish_reason
        steps += 1
    assert reasons[rids[0]] == reasons[rids[3]] == "abort"
    assert out[rids[0]] == want[0][: len(out[rids[0]])] and out[rids[3]] == []
    assert out[rids[1]] == want[1] and out[rids[2]] == want[2]
    assert not engine.running and not engine.abort(rids[1])  # finished: nothing to abort


def test_decode_step_shapes_do_not_change_from_step_to_step(pipe, tiny_dir):
    encs = _requests(pipe, tiny_dir)[:3]
    shapes = []

    def record(module, args):
        x, positions, mask = args[0], args[1], args[2]
        if x.shape[1] == 1:  # decode steps only
            shapes.append((tuple(x.shape), tuple(positions.shape), tuple(mask.shape)))

    engine = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id)
    for e in encs:
        engine.add_request(e, SamplingParams(max_new_tokens=20, stop_token_ids=()))
    while engine.prefilling or engine.waiting:  # all three prompts in
        engine.step()
    handle = pipe.model.language_model.model.register_forward_pre_hook(record)
    try:
        for _ in range(8):
            engine.step()
    finally:
        handle.remove()
    assert len(shapes) == 8 and len(set(shapes)) == 1 and shapes[0][0][0] == 3


def test_a_media_cache_hit_runs_neither_the_vision_tower_nor_the_projections(pipe, tiny_dir):
    calls = []
    hyper = [layer.self_attn.v_kv_proj for layer in pipe.model.hyper_layers]
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in [pipe.model.vision_model, *hyper]]
    images = [_img(tiny_dir, "m1.png"), _img(tiny_dir, "m2.png")]
    first = pipe.encode("Image 1: <|image|> Image 2: <|image|>. Compare.", images)
    second = pipe.encode(
        [{"role": "user", "content": "Image 1: <|image|> Image 2: <|image|>. Compare."},
         {"role": "assistant", "content": "They differ."},
         {"role": "user", "content": "How?"}],
        images,
    )  # fmt: skip
    params = SamplingParams(max_new_tokens=6)
    try:
        engine = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id)
        _run(engine, [first], params)
        assert calls and engine.media_cache_hits == 0
        calls.clear()
        answer = _run(engine, [second], params)[0]
        assert calls == [] and engine.media_cache_hits == 2  # the second turn resends both pictures
        stops, pad = pipe.processor.stop_token_ids, pipe.processor.pad_token_id
        fresh = Engine(pipe.model, stops, pad, media_cache_mb=0)
        assert _run(fresh, [second], params)[0] == answer and fresh.media_cache_hits == 0
        # the cache holds keys before MI-RoPE: the same pictures elsewhere in a prompt are rotated anew
        moved = pipe.encode("A preface first. Image 1: <|image|> then Image 2: <|image|>. Compare.", images)
        assert _run(engine, [moved], params) == _run(fresh, [moved], params) and engine.media_cache_hits == 4
    finally:
        for h in handles:
            h.remove()


def test_a_long_prefill_is_split_between_the_running_requests_decode_steps(pipe, tiny_dir):
    encs = _requests(pipe, tiny_dir)
    engine = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id,
                    prefill_chunk=4, vision_chunk_size=1)  # fmt: skip
    first = engine.add_request(encs[0], SamplingParams(max_new_tokens=200, stop_token_ids=()))
    while not engine.running:
        engine.step()
    video = engine.add_request(encs[3], SamplingParams(max_new_tokens=3))  # five frames, a long prompt
    steps = 0
    while engine.prefilling or engine.waiting:
        events = engine.step()
        steps += 1
        ours = [e.request_id for e in events if e.request_id == first]
        if any(e.request_id == video for e in events):  # its first token is handed out before decoding
            assert ours == [] and [e.request_id for e in engine.step()] == [first, video]
        else:
            assert ours == [first]  # a token every step
    n = encs[3].input_ids.shape[0]
    assert steps >= 5 + n // 4  # one frame, then four prompt tokens, per step
    assert any(r.id == video for r in engine.running) or engine.has_unfinished


def test_a_continued_conversation_reuses_the_earlier_turns_text_kv(pipe, tiny_dir):
    # turn 2 resends turn 1 (the same pictures) and the answer: only the new part is prefilled, and every
    # token is still the argmax of a full forward over everything before it
    stops, pad = pipe.processor.stop_token_ids, pipe.processor.pad_token_id
    images = [_img(tiny_dir, "m1.png"), _img(tiny_dir, "m2.png")]
    turn1 = [{"role": "user", "content": "Image 1: <|image|> Image 2: <|image|>. Compare them, please."}]
    engine = Engine(pipe.model, stops, pad, prefix_cache_mb=64)
    params = SamplingParams(max_new_tokens=6)
    enc1 = pipe.encode(turn1, images)
    first = _run(engine, [enc1], params)[0]
    answer = pipe.processor.tokenizer.decode(first)
    turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
    enc = pipe.encode(turn2, images)
    prefilled = []
    hook = pipe.model.language_model.model.embed_tokens.register_forward_hook(
        lambda m, args, out: prefilled.append(args[0].shape[1])
    )
    try:
        ids = _run(engine, [enc], params)[0]
    finally:
        hook.remove()
    assert engine.prefix_cache.hits == 1 and engine.prefix_cache.tokens_reused >= enc1.input_ids.shape[0]
    assert prefilled[0] == enc.input_ids.shape[0] - engine.prefix_cache.tokens_reused  # then 1 per step
    full = torch.cat([enc.input_ids, torch.tensor(ids)])[None]
    with torch.no_grad():
        logits = pipe.model(full, visual=pipe.engine.encode_visual([enc]))[0]
    n = enc.input_ids.shape[0]
    assert logits[n - 1 : n - 1 + len(ids)].argmax(-1).tolist() == ids


def test_the_prefix_cache_keeps_one_entry_per_conversation_within_its_bytes():
    from owl3.inference.prefix_cache import Prefix, PrefixCache

    def entry(ids):
        kv = torch.zeros(1, 1, len(ids), 4)  # 16 bytes a token, keys and values
        return Prefix(torch.tensor(ids), [], [], [(kv, kv.clone())])

    cache = PrefixCache(max_bytes=32 * 70, min_tokens=4)
    cache.put(entry(list(range(20))))
    cache.put(entry(list(range(30))))  # continues the first: replaces it
    assert len(cache) == 1 and cache.nbytes == 32 * 30
    assert cache.match(torch.tensor([*range(25), 99, 98]), [], [])[1] == 25
    assert cache.match(torch.tensor([0, 1, 2, 7, 7, 7]), [], []) is None  # 3 common tokens < min_tokens
    cache.put(entry([5] * 30))  # another conversation
    cache.put(entry([6] * 30))  # over the bytes: the least recently used goes
    assert len(cache) == 2 and cache.match(torch.tensor([5] * 10), [], []) is not None
    assert cache.match(torch.tensor(list(range(10))), [], []) is None


def test_the_prefix_cache_stops_at_the_first_picture_that_differs(pipe, tiny_dir):
    stops, pad = pipe.processor.stop_token_ids, pipe.processor.pad_token_id
    text = "A long enough preface, so that it is worth reusing. Image 1: <|image|> and Image 2: <|image|>."
    a = pipe.encode(text, [_img(tiny_dir, "m1.png"), _img(tiny_dir, "m2.png")])
    b = pipe.encode(text, [_img(tiny_dir, "m1.png"), _img(tiny_dir, "wide.png").resize((56, 56))])
    params = SamplingParams(max_new_tokens=4)
    engine = Engine(pipe.model, stops, pad, prefix_cache_mb=64)
    _run(engine, [a], params)
    assert _run(engine, [b], params) == _run(Engine(pipe.model, stops, pad), [b], params)
    assert engine.prefix_cache.tokens_reused == b.media_starts[1]  # up to the second image's token


def test_newcomers_are_prefilled_together_and_get_the_tokens_of_each_alone(pipe, tiny_dir):
    # four requests (text only, two images, a cropped image, a video) arrive at once: the first step runs
    # all their views through the tower in one batch and all four prompts in one forward (left-padded
    # rows, each with its own slot, mask and visual K/V), and each answer is the one it gets alone
    encs = _requests(pipe, tiny_dir)
    params = [SamplingParams(max_new_tokens=k, seed=k, temperature=0.8) for k in (5, 7, 3, 6)]
    want = _alone(pipe, encs, params)
    engine = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, max_num_seqs=4)
    towers, forwards = [], []
    hooks = [
        pipe.model.vision_model.register_forward_pre_hook(lambda m, a: towers.append(a[0].shape[0])),
        pipe.model.language_model.model.register_forward_pre_hook(lambda m, a: forwards.append(a[0].shape)),
    ]
    try:
        ids = {engine.add_request(e, p): i for i, (e, p) in enumerate(zip(encs, params, strict=True))}
        got: dict[int, list[int]] = {i: [] for i in range(4)}
        first = engine.step()
        assert towers == [sum(e.pixel_values.shape[0] for e in encs if e.pixel_values is not None)]
        # one prefill forward of four rows; the first tokens are handed out before the decode step
        assert [tuple(f[:2]) for f in forwards] == [(4, max(e.input_ids.shape[0] for e in encs))]
        assert sorted(ev.request_id for ev in first) == sorted(ids)
        for ev in first + [ev for _ in range(20) for ev in engine.step()]:
            got[ids[ev.request_id]].append(ev.token_id)
    finally:
        for h in hooks:
            h.remove()
    assert [got[i] for i in range(4)] == want


def test_a_stream_refills_half_the_room_at_once_and_gives_the_tokens_of_each_alone(pipe, tiny_dir):
    # generate_each over a stream with room for 4: the next requests join only once two have finished, so
    # their prompts are prefilled in one forward instead of one by one; every answer is still its own alone
    encs = (_requests(pipe, tiny_dir) * 2)[:7]
    params = [SamplingParams(max_new_tokens=k, seed=k, temperature=0.8) for k in (2, 3, 9, 11, 4, 6, 5)]
    want = _alone(pipe, encs, params)
    engine = Engine(pipe.model, pipe.processor.stop_token_ids, pipe.processor.pad_token_id, max_num_seqs=4)
    finished: list[int] = []
    joined_after: list[int] = []  # how many had finished when each pair was taken

    def stream():
        for pair in zip(encs, params, strict=True):
            joined_after.append(len(finished))
            yield pair

    got: dict[int, list[int]] = {i: [] for i in range(len(encs))}
    for ev in engine.generate_each(stream(), in_flight=4):
        got[ev.request_id].append(ev.token_id)
        if ev.finished:
            finished.append(ev.request_id)
    assert joined_after[:4] == [0, 0, 0, 0]
    assert joined_after[4] == joined_after[5] >= 2  # two joined together, once two slots were free
    assert [got[i] for i in range(len(encs))] == want
    assert not engine.has_unfinished
