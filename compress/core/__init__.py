"""The contract every layer shares: errors, artifacts on disk, model structure tables, model loading,
kept structure, sparsity accounting, and every config dataclass (compress.core.config)."""
