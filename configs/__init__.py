"""The Hydra config tree, shipped as the package data ``mixlora.configs`` (see mixlora/package_data.py)."""
