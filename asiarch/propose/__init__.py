"""Proposals: the offline proposer and its genome, and the LLM agents (llm/)."""
