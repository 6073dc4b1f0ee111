"""Training side: data, model loading, the Trainer loop with distillation, checkpoints, and the prune/finetune drivers."""
