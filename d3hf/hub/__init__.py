"""The Hugging Face Hub side: load, push, generate, model and dataset cards, synthetic datasets."""
