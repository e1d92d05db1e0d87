"""clsgen: classify-and-explain fine-tuning of causal LLMs (CLSGen)."""

__version__ = "0.1.0"
