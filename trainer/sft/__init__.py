"""Supervised fine-tuning: chat templates, answer-only loss masks, packing (issue 21)."""
