"""Pruning core: masks and binarizers, one registered function per method, the cubic schedule, the pruner."""
