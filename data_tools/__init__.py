"""Tools that turn recorded conversations into WebDataset shards (`a2p data ...`)."""
