"""TensorFlow model code: what the trainer learns. Serving reads the exported NumPy arrays."""
