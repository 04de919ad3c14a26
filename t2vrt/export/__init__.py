"""Export stage: checkpoint -> bundle (ONNX per component + manifest + tokenizer), validated against PyTorch."""
