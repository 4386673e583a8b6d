"""``fla.layers``: only ``fla.layers.utils`` (padding helpers) is provided."""
