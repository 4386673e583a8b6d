"""``fla.models``: only ``fla.models.utils`` (the Cache) is provided."""
