"""Synthesise the eSpeak NG demo corpus (train / validation / test NeMo manifests of 16 kHz WAVs).

Usage:
    python scripts/data/make_demo_corpus.py --out data/demo --num-train 6000 --num-val 200 --num-test 200 --seed 0
"""

from nemofn.asr.data.demo_corpus import main

if __name__ == "__main__":
    main()
