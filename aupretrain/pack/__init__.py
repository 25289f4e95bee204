"""Pack stage (offline): face videos -> detected, tracked, aligned clips -> WebDataset shards + DALI indexes +
manifest (`aupretrain-pack`). Inputs and video decode, face detection (MTCNN weights are package data) and
alignment, clip cutting, the spill/shuffle stage and the worker pool. Shard format and storage live in
`aupretrain.data` (shared with the readers)."""
