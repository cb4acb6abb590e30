"""Train a SentencePiece tokenizer from ASR manifests, with NeMo's options and output layout.

Usage:
    python scripts/tokenizers/process_asr_text_tokenizer.py --manifest=train_manifest.json --data_root=tokenizers \
        --vocab_size=128 --tokenizer=spe --spe_type=bpe
"""

from nemofn.asr.tokenizers.builder import main

if __name__ == "__main__":
    main()
