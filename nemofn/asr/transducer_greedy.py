"""Batched greedy decoding of RNNT and TDT transducers: NeMo 3.0's label-looping ``greedy_batch``.

The algorithm ("label looping", NeMo's ``GreedyBatchedRNNTLabelLoopingComputer`` and
``GreedyBatchedTDTLabelLoopingComputer``, pure-PyTorch path): every utterance of the batch has a frame pointer
``t`` and the prediction-network output ``g`` after its last emitted token (at the start: the blank label, i.e. a
zero input vector, and a zero state). One outer step finds **one** token for every utterance still inside its
length: the joint is evaluated at ``(t, g)``; utterances that got a blank move their frame pointer and are
evaluated again (inner loop, all of them together, with masks) until each has a token or has run past its last
frame. The found tokens are then fed to the prediction network in one batched step (an utterance without a token
is finished, so its new output is never read).

Rules, per utterance (the same rules as a straightforward per-utterance loop):

* **RNNT**: ``k = argmax(out)`` over the ``V + 1`` classes. Blank: ``t += 1``. Token: emitted at frame ``t``,
  ``t`` stays.
* **TDT** (``durations`` given): ``k = argmax(out[:V+1])`` and ``d = durations[argmax(out[V+1:])]``. Blank:
  ``t += max(d, 1)`` (a blank with duration 0 is treated as duration 1). Token: emitted at frame ``t`` with
  duration ``d``, then ``t += d`` (``d`` may be 0: stay). A token found on the last frame is kept even if its
  duration jumps past the end.
* ``max_symbols``: once ``max_symbols`` tokens were emitted on one frame and the utterance is still on that frame,
  ``t += 1`` (a forced blank). ``None``: no limit (a model that never predicts blank then never stops, as in NeMo).
* The score of a hypothesis is the sum, over its emitted tokens, of the joint output at the token: on the CPU the
  joint log-softmaxes over its whole last dim (``log_softmax: null``, TDT durations included), on CUDA it returns
  raw logits, so scores differ between devices while tokens do not (as in NeMo).

The encoder output is projected once (``joint.project_encoder`` on all frames) and each prediction-network output
once (``joint.project_prednet``); a joint step is then ``joint.joint_after_projection`` on ``[B, J]`` rows.

TDT token durations as NeMo reports them (``nemo_durations=True``, the default): NeMo's batched decoder stores, as
a token's duration, the duration arg-max of the *last* joint evaluation of the outer step, for every utterance.
When an utterance found its token early in the step (and jumped by its duration) while others still searched,
that last evaluation happened at its new frame, so NeMo reports a duration that is not the one the utterance
jumped by, and that depends on the rest of the batch (seen in NeMo's own reference output). With
``preserve_alignments`` NeMo records every evaluation as it happens and reports the jumps instead. The default
repeats both, for parity; ``nemo_durations=False`` always reports the duration each token's jump used, which does
not depend on the batch. Tokens, timestamps and scores are the same either way.

NeMo's per-utterance ``GreedyTDTInfer`` (strategy ``greedy``) differs from its own ``greedy_batch`` when
``max_symbols`` evaluations happen on one frame (it then adds 1 even after a jump); this module implements
``greedy_batch``. For RNNT, ``greedy`` and ``greedy_batch`` agree.

Not implemented: NeMo's step and frame confidence (``preserve_frame_confidence``), frame-looping
(``loop_labels: false``; it gives the same tokens), partial hypotheses / streaming state, LM and boosting-tree
fusion, CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

if TYPE_CHECKING:  # imported for the signatures only
    from nemofn.asr.modules.rnnt_decoder import RNNTDecoder
    from nemofn.asr.modules.rnnt_joint import RNNTJoint

__all__ = ["TransducerHyps", "greedy_batch", "label_looping_greedy"]

#: ``predict(labels [B] int64, state) -> (projected prediction-net output [B, J], new state)``.
PredictFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
#: ``joint(projected encoder rows [B, J], projected prediction rows [B, J]) -> [B, V + 1 (+ D)]``.
JointFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@attrs.frozen
class TransducerHyps:
    """Batched greedy result as host lists, one entry per utterance.

    Attributes:
        tokens: the emitted token ids (never the blank).
        timestamps: the encoder frame of each token.
        durations: TDT: the predicted duration (a value of ``durations``) of each token (see ``nemo_durations``
            of :func:`greedy_batch`); RNNT: empty lists.
        scores: sum over the emitted tokens of the joint output at the token (see the module docstring).
        alignments: with ``return_alignments``: for each utterance a list of the frames the decoder evaluated, in
            order; each frame is a list of ``(joint_output [V+1(+D)] CPU tensor, label int)``, one pair per joint
            evaluation on that frame (blank or token, as NeMo's ``Hypothesis.alignments`` of ``greedy_batch``).
            Frames a TDT utterance jumped over are absent. ``None`` otherwise.
    """

    tokens: list[list[int]]
    timestamps: list[list[int]]
    durations: list[list[int]]
    scores: list[float]
    alignments: list | None = None


def _check_max_symbols(max_symbols: int | None) -> None:
    if max_symbols is not None and (isinstance(max_symbols, bool) or not isinstance(max_symbols, int)
                                    or max_symbols <= 0):
        raise ValueError(f"greedy decoding: max_symbols must be a positive int or None (no limit), got "
                         f"{max_symbols!r}; NeMo's decoding config treats `greedy.max_symbols: 0` as unset "
                         f"(falls back to `max_symbols_per_step`, else None)")


def _check_durations(durations: Sequence[int] | None) -> list[int] | None:
    if durations is None:
        return None
    values = list(durations)
    if not values or any(isinstance(d, bool) or int(d) != d or d < 0 for d in values):
        raise ValueError(f"TDT greedy decoding: durations must be a non-empty list of ints >= 0 (the config's "
                         f"decoding.durations, e.g. [0, 1, 2, 3, 4]), got {durations!r}")
    return [int(d) for d in values]


def label_looping_greedy(
    enc_proj: torch.Tensor,
    lengths: torch.Tensor,
    *,
    predict: PredictFn,
    joint: JointFn,
    state: Any,
    blank_id: int,
    durations: Sequence[int] | None = None,
    max_symbols: int | None = 10,
    return_alignments: bool = False,
    nemo_durations: bool = True,
) -> TransducerHyps:
    """The batched label-looping loop over already-projected encoder frames (call under ``no_grad``).

    Args:
        enc_proj: ``[B, T, J]`` projected encoder output.
        lengths: ``[B]`` valid frames per utterance.
        predict: one prediction-network step with the output projected, see :data:`PredictFn`; called with the
            blank label for the start (SOS), then with each step's labels (for finished rows: any label; their
            result is never read).
        joint: one joint step on projected rows, see :data:`JointFn`.
        state: the prediction network's initial state (nested tuple of ``[L, B, H]`` tensors, or ``None`` where
            ``predict`` accepts it).
        blank_id: the blank class ``V``.
        durations: TDT durations (the order of the joint's duration outputs); ``None`` for RNNT.
        max_symbols: most tokens per frame before a forced blank; ``None`` for no limit.
        return_alignments: also record every joint evaluation (see :class:`TransducerHyps`).
        nemo_durations: TDT: report token durations as NeMo's batched decoder does (see the module docstring:
            without alignments, the last joint evaluation's); False: the duration each token's jump used.

    Returns:
        :class:`TransducerHyps`.
    """
    _check_max_symbols(max_symbols)
    durations = _check_durations(durations)
    batch, max_time = enc_proj.shape[0], enc_proj.shape[1]
    device = enc_proj.device
    lengths = lengths.to(device=device, dtype=torch.long)
    if lengths.shape != (batch,):
        raise ValueError(f"greedy decoding: encoded_len has shape {tuple(lengths.shape)}, expected [{batch}]")
    if batch and (int(lengths.max()) > max_time or int(lengths.min()) < 0):
        raise ValueError(f"greedy decoding: encoded_len {lengths.tolist()} must lie in [0, T={max_time}]")

    tdt = durations is not None
    last_evaluation_durations = tdt and nemo_durations and not return_alignments
    num_durations = len(durations) if tdt else 0
    duration_values = torch.tensor(durations if tdt else [0], dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    last_frame = (lengths - 1).clamp(min=0)

    no_duration = torch.zeros(batch, dtype=torch.long, device=device)  # RNNT: never written to

    def evaluate(g: torch.Tensor, frame: torch.Tensor):
        """Joint at each row's (clamped) frame -> (output, best label, its value, its duration [B])."""
        out = joint(enc_proj[rows, torch.minimum(frame, last_frame)], g)
        token_part = out[:, : out.shape[-1] - num_durations]
        values, labels = token_part.max(dim=-1)
        is_blank = labels == blank_id
        if tdt:
            dur = duration_values[out[:, -num_durations:].argmax(dim=-1)]
            jump = torch.where(is_blank & (dur == 0), 1, dur)
        else:
            dur = no_duration
            jump = is_blank.long()
        return out, labels, values, dur, jump

    # Start of sequence: the blank label (zero input vector) and the initial (zero) state.
    g, state = predict(torch.full((batch,), blank_id, dtype=torch.long, device=device), state)

    t = torch.zeros(batch, dtype=torch.long, device=device)
    active = t < lengths
    total_score = torch.zeros(batch, dtype=enc_proj.dtype, device=device)
    run_frame = torch.full((batch,), -1, dtype=torch.long, device=device)  # frame of the last emitted token
    run_count = torch.zeros(batch, dtype=torch.long, device=device)  # tokens emitted on that frame

    found_steps: list[torch.Tensor] = []
    label_steps: list[torch.Tensor] = []
    frame_steps: list[torch.Tensor] = []
    duration_steps: list[torch.Tensor] = []
    align_steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    while bool(active.any()):
        searching = active
        out, labels, values, dur, jump = evaluate(g, t)
        token_frame = t  # t is rebound below, never written in place
        if return_alignments:
            align_steps.append((searching, token_frame, out, labels))
        t = torch.where(searching, t + jump, t)
        active = t < lengths
        advance = active & (labels == blank_id)
        while bool(advance.any()):
            out, more_labels, more_values, more_dur, more_jump = evaluate(g, t)
            token_frame = torch.where(advance, t, token_frame)
            labels = torch.where(advance, more_labels, labels)
            values = torch.where(advance, more_values, values)
            # NeMo keeps the last evaluation's duration for every row, also for rows that already have a token
            # (except when it records alignments).
            dur = more_dur if last_evaluation_durations else torch.where(advance, more_dur, dur)
            if return_alignments:
                align_steps.append((advance, t, out, more_labels))
            t = torch.where(advance, t + more_jump, t)
            active = t < lengths
            advance = active & (labels == blank_id)

        # A token found while the utterance was active is kept, even if its duration jumped past the end (TDT).
        found = searching & (labels != blank_id)
        found_steps.append(found)
        label_steps.append(labels)
        frame_steps.append(token_frame)
        duration_steps.append(dur)
        total_score = torch.where(found, total_score + values, total_score)
        same_frame = found & (run_frame == token_frame)
        run_count = torch.where(same_frame, run_count + 1, torch.where(found, 1, run_count))
        run_frame = torch.where(found, token_frame, run_frame)

        # Feed the found tokens to the prediction network. A row without a token has run past its end and is never
        # evaluated again, so its (meaningless) new output and state need no masking.
        g, state = predict(labels, state)

        if max_symbols is not None:
            forced = active & found & (run_count >= max_symbols) & (run_frame == t)
            t = t + forced.long()
            active = t < lengths

    return _to_hyps(batch, tdt, total_score, found_steps, label_steps, frame_steps, duration_steps,
                    align_steps if return_alignments else None)


def _to_hyps(batch, tdt, total_score, found_steps, label_steps, frame_steps, duration_steps, align_steps):
    """Stacks the per-step records ``[N, B]`` and splits them into per-utterance host lists (one sync)."""
    tokens: list[list[int]] = [[] for _ in range(batch)]
    timestamps: list[list[int]] = [[] for _ in range(batch)]
    token_durations: list[list[int]] = [[] for _ in range(batch)]
    if found_steps:
        found = torch.stack(found_steps, dim=1).cpu()  # [B, N]
        labels = torch.stack(label_steps, dim=1).cpu()
        frames = torch.stack(frame_steps, dim=1).cpu()
        durs = torch.stack(duration_steps, dim=1).cpu()
        for b in range(batch):
            keep = found[b]
            tokens[b] = labels[b][keep].tolist()
            timestamps[b] = frames[b][keep].tolist()
            if tdt:
                token_durations[b] = durs[b][keep].tolist()
    alignments = None
    if align_steps is not None:
        alignments = [[] for _ in range(batch)]
        if align_steps:
            masks = torch.stack([s[0] for s in align_steps], dim=1).cpu()  # [B, N]
            frames = torch.stack([s[1] for s in align_steps], dim=1).cpu()
            outs = torch.stack([s[2] for s in align_steps], dim=1).cpu()  # [B, N, C]
            labels = torch.stack([s[3] for s in align_steps], dim=1).cpu()
            for b in range(batch):
                current_frame = None
                for n in masks[b].nonzero().flatten().tolist():
                    frame = int(frames[b, n])
                    if frame != current_frame:
                        alignments[b].append([])
                        current_frame = frame
                    alignments[b][-1].append((outs[b, n].clone(), int(labels[b, n])))
    return TransducerHyps(tokens=tokens, timestamps=timestamps, durations=token_durations,
                          scores=[float(s) for s in total_score.cpu().tolist()], alignments=alignments)


def greedy_batch(
    decoder: RNNTDecoder,
    joint: RNNTJoint,
    dec_params,
    joint_params,
    encoded: torch.Tensor,
    encoded_len: torch.Tensor,
    *,
    max_symbols: int | None = 10,
    durations: Sequence[int] | None = None,
    return_alignments: bool = False,
    nemo_durations: bool = True,
) -> TransducerHyps:
    """Batched greedy decoding (NeMo's ``greedy_batch`` with label looping), eval mode, no gradients.

    Args:
        decoder: the prediction network (:class:`~nemofn.asr.modules.rnnt_decoder.RNNTDecoder`).
        joint: the joint (:class:`~nemofn.asr.modules.rnnt_joint.RNNTJoint`).
        dec_params: the decoder's parameter tree (NeMo's ``decoder.*`` keys without the prefix).
        joint_params: the joint's parameter tree (``joint.*`` keys without the prefix).
        encoded: ``[B, enc_hidden, T]`` encoder output (NeMo's layout).
        encoded_len: ``[B]`` valid frames per utterance.
        max_symbols: most tokens per frame before a forced blank (the config's ``decoding.greedy.max_symbols``);
            ``None`` for no limit.
        durations: TDT durations (the config's ``decoding.durations``); ``None`` decodes RNNT.
        return_alignments: also return every joint evaluation (see :class:`TransducerHyps`).
        nemo_durations: TDT: token durations exactly as NeMo 3.0's ``greedy_batch`` reports them (default), which
            in a corner case depend on the other utterances of the batch; False: the duration each token's jump
            used (see the module docstring).

    Returns:
        :class:`TransducerHyps` with host lists.
    """
    durations = _check_durations(durations)
    extra = getattr(joint, "num_extra_outputs", 0)
    if durations is None and extra:
        raise ValueError(f"greedy decoding: the joint has num_extra_outputs={extra} (a TDT model) but durations "
                         f"is None; pass the config's decoding.durations")
    if durations is not None and extra != len(durations):
        raise ValueError(f"TDT greedy decoding: {len(durations)} durations {durations} but the joint has "
                         f"num_extra_outputs={extra}; they must match (decoding.durations vs "
                         f"joint.num_extra_outputs)")
    if decoder.blank_idx != joint.blank_id:
        raise ValueError(f"greedy decoding: decoder.blank_idx={decoder.blank_idx} but joint.blank_id="
                         f"{joint.blank_id}; decoder.vocab_size and joint.num_classes must be equal")
    if encoded.dim() != 3:
        raise ValueError(f"greedy decoding: encoded must be [B, enc_hidden, T], got shape {tuple(encoded.shape)}")

    with torch.inference_mode():
        enc_proj = joint.project_encoder(joint_params, encoded.transpose(1, 2))

        def predict(labels: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            g, state = decoder.step(dec_params, labels, state)
            return joint.project_prednet(joint_params, g), state

        def joint_step(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            return joint.joint_after_projection(joint_params, f, g)

        state = decoder.initial_state(encoded.shape[0], device=encoded.device, dtype=enc_proj.dtype)
        return label_looping_greedy(enc_proj, encoded_len, predict=predict, joint=joint_step, state=state,
                                    blank_id=decoder.blank_idx, durations=durations, max_symbols=max_symbols,
                                    return_alignments=return_alignments, nemo_durations=nemo_durations)
