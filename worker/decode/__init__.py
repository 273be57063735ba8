"""From raw network outputs to scored detections: the manifest's `outputs` block and decoders."""
