"""edgetune: fine-tune a small causal LM, export it to GGUF and ONNX, and measure the result."""

__version__ = "0.1.0"
