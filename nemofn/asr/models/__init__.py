"""ASR models: networks built from NeMo-layout configs, and the cohesive model units around them."""
