"""Structured config schemas (one dataclass per Hydra group) and their validation."""
