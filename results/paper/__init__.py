"""The paper's reported numbers, shipped as the package data ``mixlora.paper`` (see mixlora/package_data.py)."""
