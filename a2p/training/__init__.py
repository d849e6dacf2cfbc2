"""a2p.training."""
