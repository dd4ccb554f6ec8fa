"""Datasets: row formats, loading, splits, chat-template rendering and loss masking."""
