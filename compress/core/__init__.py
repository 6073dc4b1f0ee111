"""The contract every layer shares: errors, artifacts on disk, model structure tables, kept structure, configs."""
