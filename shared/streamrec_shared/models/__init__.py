"""Model artifacts as inference reads them: NumPy only, no TensorFlow."""
