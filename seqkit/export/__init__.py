"""Exports of trained seqkit models to other inference engines: `ctranslate2` (CTranslate2,
through its own converter and model specs) and `onnx` (ONNX Runtime). Each module imports its
engine only when used, so `import seqkit.export` needs neither."""

CTRANSLATE2_QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                             "float16", "bfloat16")  # fmt: skip
"""CTranslate2's weight types other than float32 (`seqkit export --quantize`)."""
CTRANSLATE2_COMPUTE_TYPES = ("default", "auto", "float32", *CTRANSLATE2_QUANTIZATIONS)
"""What CTranslate2 takes as a compute type (it falls back where a device lacks one)."""
