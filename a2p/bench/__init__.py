"""a2p.bench."""
