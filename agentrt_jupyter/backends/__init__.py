"""Model backends: one async streaming method each (see `base.Backend`)."""
