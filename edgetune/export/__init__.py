"""Exporters: GGUF (our converter + llama.cpp's quantiser) and ONNX."""
