"""Automatic speech recognition: data (manifests, audio, datasets), tokenizers, modules, CTC models."""
