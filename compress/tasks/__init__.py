"""Task types beyond sentence classification: data, model, loss and metrics of each, one module per type."""
