"""Folding affine layers into their producers: BatchNorm into conv/linear (`batchnorm`)."""
