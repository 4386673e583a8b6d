"""``transformers``: only ``transformers.processing_utils.Unpack`` (a typing alias) is provided."""
