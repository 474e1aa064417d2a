"""Model parts (encoders, fusions, decoders), each kind in its own registry, and the captioner."""
