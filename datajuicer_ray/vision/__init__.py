"""The vision branch: decode to the canonical view, score patches, keep the top ones, name objects."""
