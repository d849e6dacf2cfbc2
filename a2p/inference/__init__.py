"""a2p.inference."""
