"""INT8 calibration data: images from a CelebA-HQ-style folder, preprocessed the one shared way."""
