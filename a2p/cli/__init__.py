"""a2p.cli."""
