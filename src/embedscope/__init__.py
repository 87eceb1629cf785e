"""embedscope: CNN and scattering feature embeddings, layer by layer."""

__version__ = "0.1.0"
