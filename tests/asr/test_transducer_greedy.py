"""Batched greedy transducer decoding (``nemofn.asr.transducer_greedy``).

Two kinds of check:

* parity with real NeMo 3.0: the three transducer references (RNNT, TDT, hybrid RNNT + CTC) decoded from NeMo's own
  encoder output give NeMo's recorded ``greedy_batch`` token ids, timestamps, TDT durations and scores;
* the batched label-looping decoder equals :func:`reference_greedy`, a plain per-utterance loop written here (one
  utterance at a time, full ``joint.joint`` on raw frames, ``decoder.predict``), on random-weight modules built to
  hit the corner cases: the ``max_symbols`` rule, TDT blanks predicted with duration 0, TDT tokens with duration 0,
  tokens whose duration jumps past the end, utterances of length 0 and 1.
"""

from __future__ import annotations

import pytest
import torch

from compat.archive import load_config, load_state_dict
from nemofn.asr.modules.rnnt_decoder import RNNTDecoder
from nemofn.asr.modules.rnnt_joint import RNNTJoint
from nemofn.asr.transducer_greedy import TransducerHyps, greedy_batch
from nemofn.core.tree import flatten, unflatten

SCORE_ATOL = 1e-4


# ----------------------------------------------------------------------------------------- the reference loop
def reference_greedy(decoder, joint, dec_params, joint_params, encoded, encoded_len, *, max_symbols, durations):
    """Per-utterance greedy decoding with NeMo's ``greedy_batch`` rules, one joint evaluation at a time.

    RNNT: blank -> next frame; token -> emitted, stay. TDT: ``k = argmax(out[:V+1])``,
    ``d = durations[argmax(out[V+1:])]``; blank -> ``t += max(d, 1)``; token -> emitted with ``d``, ``t += d``.
    After ``max_symbols`` tokens on one frame without leaving it: ``t += 1``.

    Returns (tokens, timestamps, durations, scores, alignments, events) with lists per utterance; ``events`` counts
    the corner cases met, so a test can assert that it exercised them.
    """
    blank = decoder.blank_idx
    events = {"forced": 0, "blank_dur0": 0, "token_dur0": 0, "jump_past_end": 0}
    out_tokens, out_times, out_durs, out_scores, out_align = [], [], [], [], []
    with torch.no_grad():
        for b in range(encoded.shape[0]):
            frames = encoded[b].transpose(0, 1)  # [T, E]
            length = int(encoded_len[b])
            g, state = decoder.predict(dec_params, None, None, add_sos=False, batch_size=1)  # zero input and state
            t, on_frame, score = 0, 0, 0.0
            tokens, times, durs, align = [], [], [], []
            evaluations = 0
            while t < length:
                evaluations += 1
                if evaluations > 10_000:
                    raise AssertionError("reference_greedy: no progress (a model that never predicts blank)")
                out = joint.joint(joint_params, frames[t][None, None], g)[0, 0, 0]
                if durations is None:
                    k = int(out.argmax())
                    d = 1 if k == blank else 0
                else:
                    k = int(out[: blank + 1].argmax())
                    d = durations[int(out[blank + 1:].argmax())]
                if not align or align[-1][0] != t:
                    align.append((t, []))
                align[-1][1].append((out.clone(), k))
                if k == blank:
                    events["blank_dur0"] += d == 0 and durations is not None
                    t += max(d, 1)
                    on_frame = 0
                    continue
                tokens.append(k)
                times.append(t)
                durs.append(d)
                score += float(out[k])
                g, state = decoder.predict(dec_params, torch.tensor([[k]]), state, add_sos=False)
                if d > 0:
                    events["jump_past_end"] += t + d > length
                    t += d
                    on_frame = 0
                else:
                    events["token_dur0"] += durations is not None
                    on_frame += 1
                    if max_symbols is not None and on_frame >= max_symbols:
                        events["forced"] += 1
                        t += 1
                        on_frame = 0
            out_tokens.append(tokens)
            out_times.append(times)
            out_durs.append(durs if durations is not None else [])
            out_scores.append(score)
            out_align.append([steps for _, steps in align])
    return out_tokens, out_times, out_durs, out_scores, out_align, events


# -------------------------------------------------------------------------------------- NeMo 3.0 references
def _load_transducer(nemo3_dir, name):
    path = nemo3_dir / f"{name}.nemo"
    cfg = load_config(path)
    weights = load_state_dict(path)
    decoder = RNNTDecoder.from_config(cfg.decoder, path="decoder")
    joint = RNNTJoint.from_config(cfg.joint, path="joint")
    trees = []
    for module, prefix in ((decoder, "decoder."), (joint, "joint.")):
        flat = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        assert set(flat) == set(flatten(module.init(0)[0])), f"{name}: {prefix}* keys differ from the module's"
        trees.append(unflatten(flat))
    return cfg, decoder, joint, trees[0], trees[1]


@pytest.mark.parametrize("name", ["fastconformer_rnnt_bpe", "fastconformer_tdt_bpe", "fastconformer_hybrid_bpe"])
def test_greedy_batch_matches_nemo(nemo3_dir, name):
    cfg, decoder, joint, dec_params, joint_params = _load_transducer(nemo3_dir, name)
    ref = torch.load(nemo3_dir / f"{name}.ref.pt", weights_only=True)
    durations = list(cfg.decoding.durations) if cfg.decoding.get("model_type") == "tdt" else None
    assert (durations is not None) == ("greedy_token_duration" in ref)

    hyps = greedy_batch(decoder, joint, dec_params, joint_params, ref["encoded"], ref["encoded_len"],
                        max_symbols=cfg.decoding.greedy.max_symbols, durations=durations)

    assert isinstance(hyps, TransducerHyps)
    assert hyps.tokens == [list(map(int, s)) for s in ref["greedy_y_sequence"]]
    assert hyps.timestamps == [list(map(int, s)) for s in ref["greedy_timestamp"]]
    if durations is not None:
        assert hyps.durations == [list(map(int, s)) for s in ref["greedy_token_duration"]]
    else:
        assert hyps.durations == [[] for _ in hyps.tokens]
    assert all(isinstance(s, float) for s in hyps.scores)
    assert max(abs(a - float(b)) for a, b in zip(hyps.scores, ref["greedy_score"])) <= SCORE_ATOL
    assert hyps.alignments is None
    # the plain per-utterance loop agrees with NeMo's tokens and timestamps, and its durations (the jumps taken)
    # with nemo_durations=False
    tokens, times, durs, _, _, _ = reference_greedy(
        decoder, joint, dec_params, joint_params, ref["encoded"], ref["encoded_len"],
        max_symbols=cfg.decoding.greedy.max_symbols, durations=durations)
    assert (tokens, times) == (hyps.tokens, hyps.timestamps)
    jumps = greedy_batch(decoder, joint, dec_params, joint_params, ref["encoded"], ref["encoded_len"],
                         max_symbols=cfg.decoding.greedy.max_symbols, durations=durations, nemo_durations=False)
    assert (jumps.tokens, jumps.timestamps, jumps.scores) == (hyps.tokens, hyps.timestamps, hyps.scores)
    assert jumps.durations == durs
    if durations is not None:
        # NeMo's recorded durations are not all the jumps taken (module docstring: a batch-dependent duration)
        assert jumps.durations != hyps.durations


# ---------------------------------------------------------------------------------------- random weights
V, E, H, J = 9, 12, 16, 20
LENGTHS = [13, 7, 1, 10, 0, 4]


def _random_modules(seed, durations, *, blank_bias=0.0, dur0_bias=0.0, layers=1):
    decoder = RNNTDecoder(vocab_size=V, pred_hidden=H, pred_rnn_layers=layers)
    joint = RNNTJoint(num_classes=V, encoder_hidden=E, pred_hidden=H, joint_hidden=J,
                      num_extra_outputs=len(durations) if durations else 0)
    dec_params, _ = decoder.init(seed)
    joint_params, _ = joint.init(seed + 1000)
    out = joint_params["joint_net"][joint.output_slot]
    out["weight"] = out["weight"] * 4.0  # sharper outputs: more tokens per frame, clear arg-maxes
    bias = out["bias"].clone()
    bias[V] += blank_bias
    if durations and 0 in durations:
        bias[V + 1 + durations.index(0)] += dur0_bias
    out["bias"] = bias
    return decoder, joint, dec_params, joint_params


def _random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    encoded = torch.randn(len(LENGTHS), E, max(LENGTHS), generator=g)
    return encoded, torch.tensor(LENGTHS)


def _assert_same(hyps, expected, durations):
    tokens, times, durs, scores, _, _ = expected
    assert hyps.tokens == tokens
    assert hyps.timestamps == times
    assert hyps.durations == durs
    assert max(abs(a - b) for a, b in zip(hyps.scores, scores)) <= SCORE_ATOL
    for b, length in enumerate(LENGTHS):
        assert all(0 <= t < length for t in hyps.timestamps[b])
        assert hyps.timestamps[b] == sorted(hyps.timestamps[b])
        assert all(0 <= k < V for k in hyps.tokens[b])
    assert hyps.tokens[LENGTHS.index(0)] == [] and hyps.scores[LENGTHS.index(0)] == 0.0


# (durations, max_symbols, blank_bias, dur0_bias, events that must occur)
CASES = {
    "rnnt_ms3": (None, 3, 0.0, 0.0, ()),
    "rnnt_ms1_blank_suppressed": (None, 1, -8.0, 0.0, ("forced",)),
    "rnnt_ms3_blank_suppressed": (None, 3, -8.0, 0.0, ("forced",)),
    "tdt5_ms3": ([0, 1, 2, 3, 4], 3, 0.0, 0.0, ("jump_past_end",)),
    "tdt5_ms1_blank_suppressed": ([0, 1, 2, 3, 4], 1, -8.0, 6.0, ("forced", "token_dur0")),
    "tdt5_ms3_blank_dur0": ([0, 1, 2, 3, 4], 3, 2.0, 6.0, ("blank_dur0", "token_dur0", "forced")),
    "tdt3_ms3_blank_suppressed": ([0, 1, 2], 3, -8.0, 4.0, ("forced", "token_dur0")),
    "tdt3_ms1_blank_dur0": ([0, 1, 2], 1, 2.0, 6.0, ("blank_dur0",)),
    "tdt3_no_limit": ([0, 1, 2], None, 3.0, -4.0, ("jump_past_end",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_equals_per_utterance_loop(case):
    durations, max_symbols, blank_bias, dur0_bias, must_occur = CASES[case]
    seen = {name: 0 for name in ("forced", "blank_dur0", "token_dur0", "jump_past_end")}
    for seed in range(3):
        decoder, joint, dp, jp = _random_modules(seed, durations, blank_bias=blank_bias, dur0_bias=dur0_bias)
        encoded, lengths = _random_batch(seed)
        expected = reference_greedy(decoder, joint, dp, jp, encoded, lengths, max_symbols=max_symbols,
                                    durations=durations)  # first: it stops with an error where a model never would
        hyps = greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=max_symbols, durations=durations,
                            nemo_durations=False)
        _assert_same(hyps, expected, durations)
        # NeMo's way of reporting durations changes nothing else
        as_nemo = greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=max_symbols,
                               durations=durations)
        assert (as_nemo.tokens, as_nemo.timestamps, as_nemo.scores) == (hyps.tokens, hyps.timestamps, hyps.scores)
        assert [len(d) for d in as_nemo.durations] == [len(d) for d in hyps.durations]
        assert all(x in (durations or []) for d in as_nemo.durations for x in d)
        for name, count in expected[5].items():
            seen[name] += count
        if max_symbols is not None:
            for times in hyps.timestamps:  # never more than max_symbols tokens on one frame
                assert all(times.count(t) <= max_symbols for t in set(times))
    for name in must_occur:
        assert seen[name] > 0, f"{case}: the random modules never hit {name!r}; retune the biases"


def test_no_symbol_limit():
    # Random transducers without max_symbols mostly never stop on some frame (hence NeMo's limit); this seed and
    # these scales were picked because the model stops after emitting up to 9 tokens on one frame.
    decoder, joint, dp, jp = _random_modules(0, None, blank_bias=4.0)
    jp["enc"]["weight"] = jp["enc"]["weight"] * 3.0
    encoded, lengths = _random_batch(0)
    expected = reference_greedy(decoder, joint, dp, jp, encoded, lengths, max_symbols=None, durations=None)
    most_on_a_frame = max(max(times.count(t) for t in times) for times in expected[1] if times)
    assert most_on_a_frame > 3
    hyps = greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=None)
    _assert_same(hyps, expected, None)
    assert greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=most_on_a_frame).tokens == hyps.tokens
    assert greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=3).tokens != hyps.tokens


def test_alignments_record_every_joint_evaluation():
    durations = [0, 1, 2]
    decoder, joint, dp, jp = _random_modules(5, durations, blank_bias=1.0, dur0_bias=3.0, layers=2)
    encoded, lengths = _random_batch(5)
    hyps = greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=2, durations=durations,
                        return_alignments=True)
    tokens, times, durs, _, align, _ = reference_greedy(decoder, joint, dp, jp, encoded, lengths, max_symbols=2,
                                                        durations=durations)
    # with alignments NeMo reports the durations of the jumps taken (nemo_durations has nothing to repeat)
    assert (hyps.tokens, hyps.timestamps, hyps.durations) == (tokens, times, durs)
    assert len(hyps.alignments) == len(LENGTHS)
    for ours, theirs in zip(hyps.alignments, align):
        assert [[label for _, label in frame] for frame in ours] == [[label for _, label in frame] for frame in theirs]
        for frame_ours, frame_theirs in zip(ours, theirs):
            for (out_ours, _), (out_theirs, _) in zip(frame_ours, frame_theirs):
                assert out_ours.shape == (V + 1 + len(durations),)
                torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    # the tokens are exactly the non-blank labels of the alignment
    for b, frames in enumerate(hyps.alignments):
        assert [k for frame in frames for _, k in frame if k != V] == hyps.tokens[b]
    assert hyps.alignments[LENGTHS.index(0)] == []


def test_each_utterance_decodes_as_if_alone():
    durations = [0, 1, 2, 3, 4]
    decoder, joint, dp, jp = _random_modules(7, durations, blank_bias=-1.0, dur0_bias=2.0)
    encoded, lengths = _random_batch(7)
    batched = greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=2, durations=durations,
                           nemo_durations=False)
    for b in range(len(LENGTHS)):
        alone = greedy_batch(decoder, joint, dp, jp, encoded[b:b + 1, :, : max(LENGTHS[b], 1)], lengths[b:b + 1],
                             max_symbols=2, durations=durations, nemo_durations=False)
        assert alone.tokens[0] == batched.tokens[b]
        assert alone.timestamps[0] == batched.timestamps[b]
        assert alone.durations[0] == batched.durations[b]
        assert alone.scores[0] == pytest.approx(batched.scores[b], abs=SCORE_ATOL)


def test_scores_follow_the_joints_log_softmax_rule():
    decoder, joint, dp, jp = _random_modules(3, None)
    encoded, lengths = _random_batch(3)
    logprob = greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=3)
    raw = greedy_batch(decoder, joint.replace(log_softmax=False), dp, jp, encoded, lengths, max_symbols=3)
    assert raw.tokens == logprob.tokens and raw.timestamps == logprob.timestamps
    assert all(s <= 0.0 for s in logprob.scores)  # CPU: log-probs
    assert any(abs(a - b) > 1e-3 for a, b in zip(raw.scores, logprob.scores))


def test_errors_name_the_fix():
    durations = [0, 1, 2]
    decoder, joint, dp, jp = _random_modules(0, durations)
    encoded, lengths = _random_batch(0)
    with pytest.raises(ValueError, match="max_symbols"):
        greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=0, durations=durations)
    with pytest.raises(ValueError, match="max_symbols"):
        greedy_batch(decoder, joint, dp, jp, encoded, lengths, max_symbols=-2, durations=durations)
    with pytest.raises(ValueError, match="decoding.durations"):
        greedy_batch(decoder, joint, dp, jp, encoded, lengths)
    with pytest.raises(ValueError, match="num_extra_outputs"):
        greedy_batch(decoder, joint, dp, jp, encoded, lengths, durations=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="durations"):
        greedy_batch(decoder, joint, dp, jp, encoded, lengths, durations=[0, -1, 2])
    with pytest.raises(ValueError, match="encoded_len"):
        greedy_batch(decoder, joint, dp, jp, encoded, lengths + 1, durations=durations)
    other = RNNTDecoder(vocab_size=V + 1, pred_hidden=H)
    with pytest.raises(ValueError, match="blank"):
        greedy_batch(other, joint, other.init(0)[0], jp, encoded, lengths, durations=durations)
