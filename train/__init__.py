"""Training, teacher labelling and evaluation of the PyTorch reference (MobileNet-L)."""
