"""Knowledge distillation: data, losses, training engine and CLI."""
