"""Data stage: synthetic corpus, video I/O, packing into shards, storage, readers."""
