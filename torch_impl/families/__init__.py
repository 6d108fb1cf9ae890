"""The model families of torch_impl (shared/families/ describes each): one module per family,
composed from the shared layers (attention.py, layers.py, positions.py); registry.py maps names."""
