"""mmfuse: multimodal (image + text) fusion models from one command line."""

__version__ = "0.1.0"
