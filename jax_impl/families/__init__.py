"""The model families of jax_impl (architectures: shared/families/); jax_impl/registry.py maps names to them."""
