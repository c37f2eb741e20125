"""defs/assets."""
