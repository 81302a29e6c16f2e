"""What users do with a model: transcribe, subtitle, write outputs, read datasets, score, add noise,
evaluate, train."""
