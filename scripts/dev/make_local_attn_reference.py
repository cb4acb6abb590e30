"""Writes ``tests/data/nemo3_local_attn.json``: NeMo 3.0's local attention (``rel_pos_local_attn``) outputs.

Run it with real NeMo (a checking tool, never a dependency of the project)::

    ~/nemo-venv/bin/python scripts/dev/make_local_attn_reference.py [--nemo3-dir DIR] [--out PATH]

Weights and inputs are not stored, only how to draw them (same torch version): a case lists its tensors as
``[key, shape, scale, offset]`` in NeMo's state-dict order, drawn one after the other from
``torch.Generator().manual_seed(seed)`` as ``(2 * rand(shape) - 1) * scale + offset`` (:func:`draw_tensors`);
its input is ``randn(shape)`` from ``manual_seed(input_seed)``. Outputs are float32, little-endian, base64
(:func:`encode_array` / :func:`decode_array`). The tests import these three helpers from this file.

Three parts go into the JSON:

``attention``
    NeMo's ``RelPositionMultiHeadAttentionLongformer`` with ``LocalAttRelPositionalEncoding`` on a padded batch of
    2 (different lengths): symmetric and unequal contexts, right context 0, contexts wider than the input, lengths
    that are not multiples of the window, global tokens (shared and separate projections).

``encoder``
    NeMo's ``ConformerEncoder`` (eval mode) with ``self_attention_model: rel_pos_local_attn``: ``dw_striding``
    and causal ``striding`` subsampling, tied and untied biases, global tokens.

``models``
    The reference ``conformer_bpe.nemo`` and ``fastconformer_bpe.nemo`` after NeMo's
    ``change_attention_model("rel_pos_local_attn", [c, c])`` with a context ``c`` smaller than the clips:
    ``transcribe(sorted audio/*.wav, batch_size=4, return_hypotheses=True)`` texts (and those before the change),
    and the log-probs of the shortest clips (two for the FastConformer, one for the Conformer).
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]

#: (name, d_model, n_head, [left, right], T, lengths, global_tokens, spacing, separate)
ATTENTION_CASES = [
    ("sym_4_4", 8, 2, [4, 4], 37, [37, 30], 0, 1, False),
    ("left_lt_right", 8, 2, [3, 7], 29, [22, 29], 0, 1, False),
    ("left_gt_right", 8, 2, [7, 2], 45, [45, 31], 0, 1, False),
    ("right_0", 8, 2, [5, 0], 23, [23, 17], 0, 1, False),
    ("left_0", 8, 2, [0, 3], 21, [15, 21], 0, 1, False),
    ("wider_than_T", 16, 4, [64, 64], 25, [25, 19], 0, 1, False),
    ("long_2_2", 8, 2, [2, 2], 70, [70, 52], 0, 1, False),
    ("global_separate", 8, 2, [4, 4], 30, [30, 23], 3, 2, True),
    ("global_shared_padded", 8, 2, [3, 5], 20, [20, 3], 4, 2, False),
]

ENCODER_CASES = [
    ("dw_striding_local", dict(feat_in=16, n_layers=2, d_model=16, subsampling="dw_striding", subsampling_factor=4,
                               subsampling_conv_channels=8, n_heads=2, self_attention_model="rel_pos_local_attn",
                               att_context_size=[3, 5], conv_kernel_size=5, dropout=0.0, dropout_pre_encoder=0.0,
                               dropout_emb=0.0, dropout_att=0.0),
     [2, 16, 83], [83, 61]),
    ("striding_causal_tied_global", dict(feat_in=12, n_layers=2, d_model=16, subsampling="striding",
                                         subsampling_factor=4, subsampling_conv_channels=4, causal_downsampling=True,
                                         n_heads=4, self_attention_model="rel_pos_local_attn",
                                         att_context_size=[6, 2], untie_biases=False, xscaling=False,
                                         global_tokens=2, global_tokens_spacing=3, global_attn_separate=True,
                                         conv_kernel_size=3, dropout=0.0, dropout_pre_encoder=0.0, dropout_emb=0.0,
                                         dropout_att=0.0),
     [2, 12, 70], [70, 45]),
]

#: model -> (local context for change_attention_model, smaller than the clips' encoded lengths; how many of the
#: shortest clips keep their log-probs)
MODEL_CONTEXTS = {"fastconformer_bpe": ([4, 4], 2), "conformer_bpe": ([8, 8], 1)}


# ----------------------------------------------------------------------------------------------- shared helpers
def draw_tensors(specs: list, seed: int) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` for ``specs = [[key, shape, scale, offset], ...]``, drawn in order from one generator."""
    g = torch.Generator().manual_seed(int(seed))
    return {key: (torch.rand(shape, generator=g) * 2 - 1) * scale + offset for key, shape, scale, offset in specs}


def draw_input(shape: list[int], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def encode_array(t: torch.Tensor) -> dict:
    arr = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    return {"shape": list(arr.shape), "f32": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(d: dict) -> torch.Tensor:
    arr = np.frombuffer(base64.b64decode(d["f32"]), dtype="<f4").reshape(d["shape"])
    return torch.from_numpy(arr.copy())


def _spec(key: str, shape: tuple[int, ...], d_model: int) -> list:
    """Scales that keep activations of order one: weights ~ 1/sqrt(fan_in), variances near 1."""
    if key.endswith("running_var"):
        return [key, list(shape), 0.2, 1.0]
    if key.endswith("num_batches_tracked"):
        raise ValueError("integer buffers are not drawn")
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else d_model
    return [key, list(shape), float(1.5 / np.sqrt(max(fan_in, 1))), 0.0]


def _fill(module: torch.nn.Module, d_model: int, seed: int) -> list:
    specs = [_spec(k, tuple(v.shape), d_model) for k, v in module.state_dict().items()
             if not k.endswith("num_batches_tracked")]
    values = draw_tensors(specs, seed)
    module.load_state_dict(values, strict=False)
    return specs


# ------------------------------------------------------------------------------------------------------- parts
def attention_cases() -> list[dict]:
    from nemo.collections.asr.parts.submodules.multi_head_attention import (
        LocalAttRelPositionalEncoding,
        RelPositionMultiHeadAttentionLongformer,
    )

    out = []
    for i, (name, d, h, ctx, t, lengths, g, spacing, separate) in enumerate(ATTENTION_CASES):
        attn = RelPositionMultiHeadAttentionLongformer(h, d, 0.0, None, None, att_context_size=ctx, global_tokens=g,
                                                       global_tokens_spacing=spacing, global_attn_separate=separate)
        attn.eval()
        seed, input_seed = 100 + i, 200 + i
        specs = _fill(attn, d, seed)
        pos_enc = LocalAttRelPositionalEncoding(ctx, d_model=d, dropout_rate=0.0, max_len=5000, xscale=None)
        pos_enc.extend_pe(t, "cpu", torch.float32)
        x = draw_input([2, t, d], input_seed)
        pad_mask = torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]
        _, pos_emb = pos_enc(x)
        y = attn(x, x, x, pad_mask, pos_emb)
        out.append({"name": name, "d_model": d, "n_head": h, "att_context_size": ctx, "T": t, "lengths": lengths,
                    "global_tokens": g, "global_tokens_spacing": spacing, "global_attn_separate": separate,
                    "seed": seed, "params": specs, "input_seed": input_seed, "output": encode_array(y)})
    return out


def encoder_cases() -> list[dict]:
    from nemo.collections.asr.modules import ConformerEncoder

    out = []
    for i, (name, kwargs, shape, lengths) in enumerate(ENCODER_CASES):
        enc = ConformerEncoder(**kwargs)
        enc.eval()
        seed, input_seed = 300 + i, 400 + i
        specs = _fill(enc, kwargs["d_model"], seed)
        x = draw_input(shape, input_seed)
        y, y_len = enc(audio_signal=x, length=torch.tensor(lengths))
        out.append({"name": name, "config": kwargs, "seed": seed, "params": specs, "input_shape": shape,
                    "input_seed": input_seed, "lengths": lengths, "output": encode_array(y),
                    "output_lengths": y_len.tolist()})
    return out


def models(nemo3: Path) -> dict:
    from nemo.collections.asr.models import ASRModel

    files = sorted(glob.glob(str(nemo3 / "audio" / "*.wav")))
    if len(files) != 8:
        raise SystemExit(f"expected 8 clips in {nemo3 / 'audio'}, found {len(files)}")
    out = {}
    for name, (ctx, n_log_probs) in MODEL_CONTEXTS.items():
        model = ASRModel.restore_from(str(nemo3 / f"{name}.nemo"), map_location="cpu")
        model.eval()
        before = [h.text for h in model.transcribe(files, batch_size=4, return_hypotheses=True, verbose=False)]
        model.change_attention_model("rel_pos_local_attn", ctx)
        hyps = model.transcribe(files, batch_size=4, return_hypotheses=True, verbose=False)
        lengths = [h.y_sequence.shape[0] for h in hyps]
        shortest = sorted(range(len(files)), key=lambda k: lengths[k])[:n_log_probs]
        out[name] = {"att_context_size": ctx, "files": [Path(f).name for f in files],
                     "texts": [h.text for h in hyps], "texts_full_attention": before,
                     "encoded_lengths": lengths,
                     "log_probs": {Path(files[k]).name: encode_array(hyps[k].y_sequence) for k in shortest}}
        changed = sum(a != b for a, b in zip(before, out[name]["texts"]))
        print(f"{name} {ctx}: {changed} of 8 transcripts differ from full attention", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nemo3-dir", type=Path, default=REPO.parent / "shared" / "reference" / "nemo3")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "nemo3_local_attn.json")
    args = parser.parse_args()
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    import nemo

    torch.set_grad_enabled(False)
    data = {"nemo_version": nemo.__version__, "torch_version": torch.__version__,
            "made_by": "scripts/dev/make_local_attn_reference.py", "attention": attention_cases(),
            "encoder": encoder_cases(), "models": models(args.nemo3_dir)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
