"""Vision tower families (registered in VISION_TOWERS) and the token-length interpolation."""
