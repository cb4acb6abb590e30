"""A small synthetic English speech corpus, spoken by eSpeak NG, for the demo, benchmarks and tests.

    python scripts/data/demo_corpus.py --out data/demo --num-train 6000 --num-val 200 --num-test 200 --seed 0

Demo data, not the library: scripts and tests import it from this folder (``sys.path``).

Sentences of 3 to 10 words drawn from a fixed vocabulary of common words (lower-case, no punctuation: only ``a``-``z``,
space and apostrophe, QuartzNet's char labels) are spoken by many voices: an accent (``en-us``, ``en-gb-scotland``,
...) combined with a variant (``m3``, ``f2``, ``adam``, ...), at a random rate and pitch. The audio is resampled from
eSpeak's 22050 Hz to 16 kHz with soxr, scaled to a random peak level, mixed with white noise at a random SNR, and
written as 16-bit mono WAV. The train, validation and test splits use disjoint voices (accent+variant pairs).

Layout of ``out_dir``::

    train_manifest.json  validation_manifest.json  test_manifest.json
                         (audio_filepath relative to out_dir, duration, text, and the voice that spoke it)
    wavs/<split>/<split>_00000.wav ...
    corpus.json          the parameters; a later call with the same parameters reuses the corpus

The corpus is a pure function of its parameters: the same seed gives byte-identical WAVs and manifests, whatever the
number of worker processes. eSpeak keeps internal state from one utterance to the next, so each utterance is
synthesised in a child process forked from a freshly initialised engine, with eSpeak's random seed set per utterance.

eSpeak NG comes from the PyPI package ``espeakng-loader`` (its ``libespeak-ng.so`` and voice data, driven through
ctypes); without it the ``espeak-ng`` program is used if installed (then breathy variants are not bit-reproducible).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import soundfile as sf
import soxr

__all__ = ["CorpusSpec", "Utterance", "VOCABULARY", "ACCENTS", "VARIANTS", "SPLITS", "split_voices", "plan_corpus",
           "make_demo_corpus", "ESpeakLibrary", "ESpeakProgram", "open_espeak", "main"]

GENERATOR_VERSION = 2  # bump when the synthesis changes, so that old corpora are not reused
SAMPLE_RATE = 16000
SPLITS = ("train", "validation", "test")

VOCABULARY: tuple[str, ...] = tuple("""
a about above across after again against air all almost along also always am an and animal another answer any
apple are arm around as ask at away baby back bad ball bank be bear because bed been before began begin behind
bell below best better between big bird black blue boat body book both box boy bread bring brother brown build
but buy by call came can can't car care carry cat change child children city clean close cold color come cook
could country cow cup cut dark day deep dinner do does dog done don't door down draw dream drink drive dry duck
during each early earth east easy eat egg eight end enough even evening ever every eye face fall family far farm
fast father feel few field find fine fire first fish five floor flower fly follow food foot for forest four free
friend from front full game garden girl give glass go gold good great green ground grow had hand happy hard has
hat have he head hear heart heavy help her here high hill him his hold home horse hot house how hundred i i'm
idea if in inside is isn't it it's just keep kind king know lake land large last late laugh learn leave left leg
let's letter light like line lion listen little live long look loud love low make man many may me milk mind
money moon more morning most mother mountain mouse move much music must my name near need never new next nice
night nine no north not nothing now number ocean of off often old on once one only onto open or orange other our
out over own paper park people pick picture place plant play please point pull push put queen quick quiet rabbit
rain read ready red remember rest rich right river road rock room round run sad said same saw say school sea
second see seven she ship short should show side sing sister sit six sleep slow small snow so some something
song soon sound south speak spring stand star start stay stone stop story street strong summer sun table take
talk tall teacher tell ten than thank that that's the their them then there these they they're thing think
three through time to today together told tomorrow too top town train tree try turn two under until up us
very voice walk wall want warm was watch water way we we're week well went were west what when where which
white who why wide will wind window winter with without woman won't wood word work world would write year yellow
yes yesterday you you're young
""".split())

ACCENTS = ("en-us", "en-us-nyc", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "adam", "Alex", "Andy", "Annie",
            "benjamin", "caleb", "david", "ed", "edward", "john", "linda", "Michael", "paul", "robert", "steph")


@attrs.frozen
class CorpusSpec:
    """Everything the corpus depends on (written to ``corpus.json``)."""

    num_train: int = 6000
    num_val: int = 200
    num_test: int = 200
    seed: int = 0
    min_words: int = 3
    max_words: int = 10
    rate_wpm: tuple[int, int] = (130, 200)
    pitch: tuple[int, int] = (25, 75)
    peak: tuple[float, float] = (0.3, 0.9)
    snr_db: tuple[float, float] = (20.0, 40.0)
    held_out_voice_fraction: float = 0.1
    generator_version: int = GENERATOR_VERSION

    def sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "validation": self.num_val, "test": self.num_test}

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}


@attrs.frozen
class Utterance:
    """One planned utterance: what to say, with which voice and settings, and where to write it."""

    split: str
    index: int
    text: str
    voice: str
    rate: int
    pitch: int
    peak: float
    snr_db: float
    seed: int

    @property
    def relative_path(self) -> str:
        return f"wavs/{self.split}/{self.split}_{self.index:05d}.wav"


def split_voices(seed: int, held_out_fraction: float = 0.1) -> dict[str, list[str]]:
    """Disjoint voice lists (``"accent+variant"``) for the three splits: a fraction each for validation and test."""
    voices = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    order = np.random.default_rng([seed, 7]).permutation(len(voices))
    held = max(1, round(len(voices) * held_out_fraction))
    shuffled = [voices[i] for i in order]
    return {"validation": shuffled[:held], "test": shuffled[held : 2 * held], "train": shuffled[2 * held :]}


def plan_corpus(spec: CorpusSpec) -> dict[str, list[Utterance]]:
    """The utterances of every split, a pure function of ``spec``."""
    voices = split_voices(spec.seed, spec.held_out_voice_fraction)
    plan = {}
    for split_id, split in enumerate(SPLITS):
        rng = np.random.default_rng([spec.seed, split_id])
        utterances = []
        for index in range(spec.sizes()[split]):
            num_words = int(rng.integers(spec.min_words, spec.max_words + 1))
            words = [VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=num_words)]
            utterances.append(Utterance(
                split=split, index=index, text=" ".join(words),
                voice=voices[split][int(rng.integers(0, len(voices[split])))],
                rate=int(rng.integers(spec.rate_wpm[0], spec.rate_wpm[1] + 1)),
                pitch=int(rng.integers(spec.pitch[0], spec.pitch[1] + 1)),
                peak=float(rng.uniform(*spec.peak)), snr_db=float(rng.uniform(*spec.snr_db)),
                seed=int(rng.integers(1, 2**31 - 1)),
            ))
        plan[split] = utterances
    return plan


# --- eSpeak NG ----------------------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class ESpeakLibrary:
    """eSpeak NG's C library from ``espeakng-loader``, one engine per process.

    Each :meth:`synthesize` call forks, synthesises in the child and reads the samples back through a pipe, so every
    utterance starts from the same engine state (eSpeak otherwise carries state from one utterance to the next).
    """

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data path {self.data_path}")
        self._chunks: list[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept alive as long as the engine
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count, events) -> int:
        if count > 0 and samples:
            self._chunks.append(ctypes.string_at(samples, count * 2))
        return 0

    def check_voice(self, voice: str) -> None:
        accent, _, variant = voice.partition("+")
        if variant and not (Path(self.data_path) / "voices" / "!v" / variant).is_file():
            raise ValueError(f"eSpeak NG has no voice variant {variant!r} (in {self.data_path}/voices/!v)")
        if self.lib.espeak_SetVoiceByName(accent.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {accent!r}")

    def _speak(self, voice: str, text: str, rate: int, pitch: int, seed: int) -> bytes:
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        encoded = text.encode("utf-8") + b"\0"
        self._chunks = []
        if self.lib.espeak_Synth(encoded, len(encoded), 0, 0, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed for {text!r} with voice {voice!r}")
        return b"".join(self._chunks)

    def synthesize(self, voice: str, text: str, rate: int, pitch: int, seed: int) -> np.ndarray:
        """int16 samples ``[T]`` at :attr:`sample_rate`."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: speak, send the samples, leave without running any Python cleanup
            status = 1
            try:
                os.close(read_end)
                data = self._speak(voice, text, rate, pitch, seed)
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(data)
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not data:
            raise RuntimeError(f"eSpeak NG produced no audio for {text!r} with voice {voice!r}")
        return np.frombuffer(data, dtype=np.int16)


class ESpeakProgram:
    """Fallback: the ``espeak-ng`` program (e.g. Debian's ``apt install espeak-ng``), one process per utterance."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.sample_rate = 22050

    def check_voice(self, voice: str) -> None:
        self.synthesize(voice, "test", 175, 50, 1)

    def synthesize(self, voice: str, text: str, rate: int, pitch: int, seed: int) -> np.ndarray:
        out = subprocess.run([self.program, "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                             capture_output=True, check=False)
        wav = out.stdout
        # espeak-ng --stdout writes a fixed 44-byte mono 16-bit header whose sizes are never filled in (it cannot
        # seek back on a pipe), so the header is checked and the samples are taken as they follow it.
        if out.returncode != 0 or len(wav) <= 44 or wav[:4] != b"RIFF" or wav[36:40] != b"data":
            raise RuntimeError(f"{self.program} failed for voice {voice!r}: {out.stderr.decode(errors='replace')}")
        self.sample_rate = int.from_bytes(wav[24:28], "little")
        return np.frombuffer(wav[44 : 44 + (len(wav) - 44) // 2 * 2], dtype="<i2").astype(np.int16)


def open_espeak() -> ESpeakLibrary | ESpeakProgram:
    """The eSpeak NG engine: the ``espeakng-loader`` library, else the ``espeak-ng`` program.

    Raises:
        RuntimeError: when neither is available, saying how to install it.
    """
    try:
        return ESpeakLibrary()
    except ImportError:
        program = shutil.which("espeak-ng")
        if program:
            return ESpeakProgram(program)
    raise RuntimeError("eSpeak NG is not available: pip install espeakng-loader "
                       "(or install the espeak-ng program, e.g. apt install espeak-ng)")


# --- generation ---------------------------------------------------------------------------------------------------

_engine: ESpeakLibrary | ESpeakProgram | None = None


def _init_worker() -> None:
    global _engine
    _engine = open_espeak()


def render(utterance: Utterance, engine: ESpeakLibrary | ESpeakProgram) -> np.ndarray:
    """The final int16 16 kHz samples of ``utterance``: synthesis, resampling, level and noise."""
    speech = engine.synthesize(utterance.voice, utterance.text, utterance.rate, utterance.pitch, utterance.seed)
    signal = soxr.resample(speech.astype(np.float32) / 32768.0, engine.sample_rate, SAMPLE_RATE, quality="HQ")
    signal = signal.astype(np.float64) * (utterance.peak / max(float(np.abs(signal).max()), 1e-6))
    noise = np.random.default_rng(utterance.seed).standard_normal(len(signal))
    noise *= np.sqrt(np.mean(signal**2) / 10 ** (utterance.snr_db / 10))
    return np.clip(np.round((signal + noise) * 32767.0), -32768, 32767).astype(np.int16)


def _render_chunk(args: tuple[str, list[Utterance]]) -> list[tuple[int, int]]:
    out_dir, utterances = args
    done = []
    for utterance in utterances:
        samples = render(utterance, _engine)
        path = Path(out_dir) / utterance.relative_path
        sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        done.append((utterance.index, len(samples)))
    return done


def _existing_corpus(out_dir: Path, spec: CorpusSpec) -> dict[str, Path] | None:
    try:
        saved = json.loads((out_dir / "corpus.json").read_text())
    except (OSError, ValueError):
        return None
    if saved.get("spec") != spec.to_json():
        return None
    manifests = {split: out_dir / f"{split}_manifest.json" for split in SPLITS}
    for split, manifest in manifests.items():
        if not manifest.is_file():
            return None
        lines = manifest.read_text().splitlines()
        if len(lines) != spec.sizes()[split]:
            return None
        if not all((out_dir / json.loads(line)["audio_filepath"]).is_file() for line in lines):
            return None
    return manifests


def make_demo_corpus(out_dir: str | os.PathLike, spec: CorpusSpec = CorpusSpec(), *, num_workers: int = 2,
                     progress: Callable[[str], None] | None = print) -> dict[str, Path]:
    """Synthesises the corpus into ``out_dir`` (or reuses the one there if it has the same ``spec``).

    Args:
        out_dir: the corpus folder.
        spec: sizes, seed and synthesis ranges.
        num_workers: worker processes; each starts its own eSpeak engine.
        progress: called with progress lines (``None`` for silence).

    Returns:
        ``{"train": path, "validation": path, "test": path}`` of the manifests.
    """
    say = progress or (lambda _line: None)
    out_dir = Path(out_dir)
    reused = _existing_corpus(out_dir, spec)
    if reused is not None:
        say(f"Reusing the demo corpus in {out_dir} (same parameters in corpus.json)")
        return reused
    (out_dir / "corpus.json").unlink(missing_ok=True)
    plan = plan_corpus(spec)
    engine = open_espeak()  # fail early, in this process, when eSpeak is missing or a voice is unknown
    for voice in sorted({u.voice for utterances in plan.values() for u in utterances}):
        engine.check_voice(voice)
    del engine

    start = time.perf_counter()
    total = sum(spec.sizes().values())
    finished = 0
    manifests = {}
    context = multiprocessing.get_context("spawn")  # clean workers, whatever the caller has loaded (e.g. torch)
    with context.Pool(max(1, min(num_workers, total)), initializer=_init_worker) as pool:
        for split in SPLITS:
            utterances = plan[split]
            split_dir = out_dir / "wavs" / split
            if split_dir.is_dir():
                shutil.rmtree(split_dir)
            split_dir.mkdir(parents=True)
            chunks = [(os.fspath(out_dir), utterances[i : i + 16]) for i in range(0, len(utterances), 16)]
            lengths = {}
            for done in pool.imap(_render_chunk, chunks):
                lengths.update(done)
                finished += len(done)
                if finished % 250 < len(done) or len(lengths) == len(utterances):
                    elapsed = time.perf_counter() - start
                    say(f"[{split}] {finished}/{total} utterances, {elapsed:.1f} s, "
                        f"ETA {elapsed / finished * (total - finished):.0f} s")
            manifests[split] = out_dir / f"{split}_manifest.json"
            with open(manifests[split], "w", encoding="utf-8") as f:
                for u in utterances:
                    entry = {"audio_filepath": u.relative_path, "duration": round(lengths[u.index] / SAMPLE_RATE, 6),
                             "text": u.text, "voice": u.voice}
                    f.write(json.dumps(entry) + "\n")
    seconds = time.perf_counter() - start
    (out_dir / "corpus.json").write_text(json.dumps({"spec": spec.to_json(), "sample_rate": SAMPLE_RATE,
                                                     "voices": split_voices(spec.seed, spec.held_out_voice_fraction)},
                                                    indent=1) + "\n")
    say(f"Wrote {total} utterances to {out_dir} in {seconds:.1f} s")
    return manifests


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Command line: ``python scripts/data/demo_corpus.py --out DIR --num-train 6000 --num-val 200 ...``."""
    p = argparse.ArgumentParser(description="Synthesise a small English speech corpus with eSpeak NG "
                                            "(NeMo manifests, 16 kHz mono WAV)")
    p.add_argument("--out", required=True, help="corpus folder")
    p.add_argument("--num-train", type=int, default=CorpusSpec().num_train)
    p.add_argument("--num-val", type=int, default=CorpusSpec().num_val)
    p.add_argument("--num-test", type=int, default=CorpusSpec().num_test)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    spec = CorpusSpec(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test, seed=args.seed)
    manifests = make_demo_corpus(args.out, spec, num_workers=args.num_workers)
    for split, path in manifests.items():
        print(f"{split}: {path}")
    return manifests


if __name__ == "__main__":
    main()
