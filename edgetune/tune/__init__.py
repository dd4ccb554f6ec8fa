"""Fine-tuning: model loading (LoRA / QLoRA), batching, the Trainer wiring, callbacks, the run summary."""
