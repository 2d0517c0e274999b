"""Data pipeline: conversation templates, tokenizers, image preprocessing, datasets and collators.

Submodules are imported explicitly (``from mixlora.data.dataset import ...``) so that importing the
package stays cheap; see docs/data.md for formats and options.
"""
