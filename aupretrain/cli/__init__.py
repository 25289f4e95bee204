"""Command-line entry points: aupretrain-synth, -pack, -eval, -compare, -export, -extract (train: aupretrain.train)."""
