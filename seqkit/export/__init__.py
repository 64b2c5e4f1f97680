"""Exports of trained seqkit models to other inference engines: `ctranslate2` (CTranslate2,
through its own converter and model specs) and `onnx` (ONNX Runtime). Each module imports its
engine only when used, so `import seqkit.export` needs neither."""
