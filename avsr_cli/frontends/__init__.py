"""Front ends: media in, model-ready inputs out (decoding and demuxing, log-mel features, speech
segmentation, face landmarks and mouth crops, the mean-face asset)."""
