"""Encoders, adaptors, the LLM with LoRA, and the SpeechLLM that joins them."""
